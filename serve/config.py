"""``ServeConfig``: every setting of ``edg serve`` in one dataclass (no Ray, no torch).

The same fields are the ``args`` of the Serve application (``configs/serve.yaml``, ``serve deploy``), checked
by ``edg_core.config.from_dict`` (unknown keys and wrong types are one line naming the key), and what
``edg serve``'s flags set. The nested ``dft`` and ``render`` sections are the project's ``DFTConfig`` and
``RenderConfig``: a render job computes exactly what ``edg dft`` + ``edg render`` compute with them.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from edg.dft.config import DFTConfig
from edg.edg_core.config import ConfigError
from edg.render.config import RenderConfig

APP_NAME = "edg"
DEFAULT_PORT = 8000


def serve_dft_config() -> DFTConfig:
    """The paper's DFT (B3LYP/6-31G**, ED and exact ESP on the 0.4-bohr grid) with an SCF progress line every
    2 s (the page shows it) and a 15-minute limit per molecule, so one hard molecule cannot hold a worker."""
    return DFTConfig(progress_s=2.0, time_limit_s=900.0)


@dataclass
class ServeConfig:
    model: str | None = field(default=None, metadata={
        "help": "exported student (edg export RUN --out MODEL) answering /v1/predict; none: predict answers 503"})
    teacher: str | None = field(default=None, metadata={
        "help": "teacher checkpoint or run folder: render jobs also return its targets F_S and EDP(F_S)"})
    cache: str | None = field(default=None, metadata={
        "help": "folder or fsspec URL of the render result cache (default: $EDG_CACHE/serve, ~/.cache/edg/serve)"})
    token_sha256: str | None = field(default=None, metadata={
        "help": "SHA-256 (hex) of the bearer token /v1/ requests must carry; none: no token asked"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body, bytes"})
    max_structures: int = field(default=256, metadata={"help": "structures in one /v1/predict request"})
    max_atoms: int = field(default=500, metadata={"help": "atoms in one structure to predict"})
    render_max_atoms: int = field(default=40, metadata={
        "help": "atoms in one molecule to render (its DFT runs on a worker; B3LYP/6-31G** grows as N^3-N^4)"})
    max_smiles_chars: int = field(default=300, metadata={"help": "longest SMILES string accepted"})
    basis_choices: tuple[str, ...] = field(default=("6-31g**", "6-31g", "sto-3g"), metadata={
        "help": "basis sets a render request may ask for (the first is the default unless dft.basis is set)"})
    image_size_range: tuple[int, int] = field(default=(32, 512), metadata={
        "help": "smallest and largest image size a render request may ask for, pixels"})
    max_batch_size: int = field(default=32, metadata={
        "help": "structures the predictor runs in one forward pass (@serve.batch; 1 = no batching)"})
    batch_wait_timeout_s: float = field(default=0.01, metadata={
        "help": "how long the predictor waits to fill a batch, s"})
    predictor_replicas: int = field(default=1, metadata={"help": "predictor replicas"})
    predictor_cpus: float = field(default=1.0, metadata={"help": "CPUs each predictor replica holds"})
    predictor_gpus: float = field(default=0.0, metadata={
        "help": "GPUs each predictor replica holds (fractional: 0.25 = four replicas share one GPU)"})
    render_workers: int = field(default=1, metadata={"help": "render job workers (Ray actors running DFT)"})
    render_cpus: float = field(default=1.0, metadata={"help": "CPUs each render worker holds"})
    render_gpus: float = field(default=0.0, metadata={
        "help": "GPUs each render worker holds (GPU4PySCF and the renderer use it when > 0)"})
    max_jobs: int = field(default=1000, metadata={"help": "finished jobs kept in memory (all stay in the cache)"})
    dft: DFTConfig = field(default_factory=serve_dft_config)
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self):
        for name in ("max_body_bytes", "max_structures", "max_atoms", "render_max_atoms", "max_smiles_chars",
                     "max_batch_size", "predictor_replicas", "render_workers", "max_jobs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve.{name} {getattr(self, name)}: must be >= 1")
        for name in ("batch_wait_timeout_s", "predictor_cpus", "predictor_gpus", "render_cpus", "render_gpus"):
            if getattr(self, name) < 0:
                raise ConfigError(f"serve.{name} {getattr(self, name)}: must be >= 0")
        if not self.basis_choices:
            raise ConfigError("serve.basis_choices: give at least one basis set")
        self.basis_choices = tuple(b.lower() for b in self.basis_choices)
        lo, hi = self.image_size_range
        if not 1 <= lo <= hi:
            raise ConfigError(f"serve.image_size_range {self.image_size_range}: need 1 <= smallest <= largest")
        if self.token_sha256 is not None and (len(self.token_sha256) != 64
                                              or any(c not in "0123456789abcdef" for c in self.token_sha256)):
            raise ConfigError("serve.token_sha256: 64 lower-case hex digits (the SHA-256 of the token)")

    def with_token(self, token: str | None) -> ServeConfig:
        """A copy asking for ``token`` (stored as its SHA-256 only: the app's args are shown on the dashboard)."""
        if not token:
            return self
        return dataclasses.replace(self, token_sha256=hashlib.sha256(token.encode()).hexdigest())

    def to_args(self) -> dict:
        """The plain-data ``args`` of the Serve application (``build_app``)."""
        return dataclasses.asdict(self)


def from_args(args: dict | None, where: str = "serve application args") -> ServeConfig:
    """A ``ServeConfig`` from the application's ``args`` (YAML or ``to_args()``), checked field by field."""
    from edg.edg_core.config import from_dict
    return from_dict(ServeConfig, args, where=where)
