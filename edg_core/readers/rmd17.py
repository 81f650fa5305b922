"""rMD17 (revised MD17; Christensen & von Lilienfeld 2020), in either of its two layouts.

* pre-split: ``rmd17_<mol>_{train,test}_<01..05>.npz`` with 1000 frames each (as in ../shared/data/rmd17);
* official archive: ``npz_data/rmd17_<mol>.npz`` (100k frames) + ``splits/index_{train,test}_0X.csv``.

Either way a split id k gives 950 train / 50 validation / 1000 test frames (Geom3D convention:
train = first 950 of the train indices, validation = the last 50, test = the test indices).
Energies in kcal/mol, forces in kcal/mol/Å, positions in Å (the files' own units).

Frame ids are the same from both layouts: ``rmd17:<molecule>:<i>`` with ``i`` the frame's index in the
original MD17 trajectory (the files' ``old_indices``; the archive's split files index its 100k frames, which
are mapped through the archive's ``old_indices``). The embedded frames carry the same ids.

Where the data comes from: ``edg fetch rmd17 --out DIR`` downloads the official archive (figshare,
``OFFICIAL_URL``), checks it and unpacks it (``fetch_rmd17``); point ``$EDG_RMD17_ROOT`` or ``?root=DIR`` at
``DIR``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataSourceError
from ..molecule import Molecule

MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
             "paracetamol", "salicylic", "toluene", "uracil")
N_TRAIN, N_VALID, N_TEST = 950, 50, 1000
OFFICIAL_URL = "https://figshare.com/ndownloader/files/23950376"  # rmd17.tar.bz2, figshare article 12672038
EMBEDDED_MOLECULES = ("ethanol", "aspirin")
KEYS = ("nuclear_charges", "coords", "energies", "forces")
log = logging.getLogger(__name__)


@dataclass
class RMD17Frames:
    """Frames of one molecule: z (N,), pos (F, N, 3) Å, energy (F,) kcal/mol, forces (F, N, 3) kcal/mol/Å."""
    molecule: str
    z: np.ndarray
    pos: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    index: np.ndarray  # frame index in the original MD17 trajectory (the files' old_indices)

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    def __getitem__(self, sl) -> RMD17Frames:
        return RMD17Frames(self.molecule, self.z, self.pos[sl], self.energy[sl], self.forces[sl], self.index[sl])

    def molecules(self, split_name: str = ""):
        """Each frame as a ``Molecule`` (labels ``energy`` and ``forces``), id ``rmd17:<mol>:<frame index>``."""
        for p, e, f, i in zip(self.pos, self.energy, self.forces, self.index):
            yield Molecule(z=self.z, pos=p, id=f"rmd17:{self.molecule}:{int(i)}", charge=0, multiplicity=1,
                           labels={"energy": float(e), "forces": f, "split": split_name})  # neutral singlets


def _check_molecule(name: str) -> None:
    if name not in MOLECULES:
        import difflib
        near = difflib.get_close_matches(name, MOLECULES, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise DataSourceError(f"unknown rMD17 molecule {name!r}{hint}; known: {', '.join(MOLECULES)}")


def _load_npz(path: Path, molecule: str, index: np.ndarray | None = None) -> RMD17Frames:
    try:
        d = np.load(path)
        z = d["nuclear_charges"].astype(np.int64)
        pos, energy, forces = d["coords"], d["energies"], d["forces"]
        idx = d["old_indices"] if "old_indices" in d.files else np.arange(len(energy))
    except (OSError, ValueError, KeyError) as e:
        raise DataSourceError(f"{path}: not a readable rMD17 npz ({e})") from None
    if index is not None:
        if index.max(initial=-1) >= len(energy):
            raise DataSourceError(f"{path}: split index {int(index.max())} beyond {len(energy)} frames")
        if "old_indices" not in d.files:
            log.warning("%s has no old_indices: frame ids are archive positions, not MD17 indices "
                        "(they will not match ids read from the pre-split layout)", path)
        pos, energy, forces, idx = pos[index], energy[index], forces[index], idx[index]
    n = len(z)
    if pos.shape[1:] != (n, 3) or forces.shape != pos.shape or energy.shape != pos.shape[:1]:
        raise DataSourceError(f"{path}: inconsistent shapes z{z.shape} coords{pos.shape} "
                              f"energies{energy.shape} forces{forces.shape}")
    return RMD17Frames(molecule, z, pos.astype(np.float64), energy.astype(np.float64),
                       forces.astype(np.float64), np.asarray(idx, dtype=np.int64))


def _read_index_csv(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataSourceError(f"rMD17 split file {path} does not exist")
    return np.array([int(float(x)) for x in path.read_text().split()], dtype=np.int64)


def load_rmd17_embedded(molecule: str) -> dict[str, RMD17Frames]:
    """The rMD17 frames shipped inside the package (24 ethanol, 16 aspirin; see edg_core/data/README.md),
    split 2/3 train, 1/6 validation, 1/6 test in file order. For demos and tests only."""
    from .sources import embedded_path
    from .xyz import read_xyz
    _check_molecule(molecule)
    mols = [m for m in read_xyz(embedded_path("rmd17")) if m.id.startswith(f"rmd17:{molecule}:")]
    if not mols:
        raise DataSourceError(f"the embedded data has no rMD17 {molecule} frames (only ethanol and aspirin)")
    frames = RMD17Frames(molecule, mols[0].z, np.stack([m.pos for m in mols]),
                         np.array([m.labels["energy"] for m in mols]), np.stack([m.labels["forces"] for m in mols]),
                         np.array([int(m.id.rsplit(":", 1)[1]) for m in mols], dtype=np.int64))
    n = len(frames)
    a, b = (2 * n) // 3, (2 * n) // 3 + n // 6
    return {"train": frames[:a], "valid": frames[a:b], "test": frames[b:]}


def _layout_root(root: Path) -> Path:
    """``root`` itself, or ``root/rmd17`` when that is where the unpacked archive's folders are."""
    if not (root / "npz_data").exists() and (root / "rmd17" / "npz_data").exists():
        return root / "rmd17"
    return root


def _split_files(root: Path, molecule: str, split_id: int) -> tuple[str, tuple[Path, ...]]:
    """Which layout ``load_rmd17`` reads for ``molecule`` split ``split_id`` under ``root`` (an existing folder)
    and its files: ``("presplit", (train.npz, test.npz))`` as soon as the pre-split train file exists, else
    ``("archive", (npz_data/rmd17_<mol>.npz, splits/index_train_0k.csv, splits/index_test_0k.csv))``. Raises
    ``DataSourceError`` saying what is missing and where; reads no array."""
    base, sid = _layout_root(root), f"{int(split_id):02d}"
    train, test = (base / f"rmd17_{molecule}_{s}_{sid}.npz" for s in ("train", "test"))
    if train.exists():
        if not test.exists():
            raise DataSourceError(f"{base}: found {train.name} but not {test.name}")
        return "presplit", (train, test)
    archive = base / "npz_data" / f"rmd17_{molecule}.npz"
    if archive.exists():
        csvs = tuple(base / "splits" / f"index_{s}_{sid}.csv" for s in ("train", "test"))
        for f in csvs:
            if not f.exists():
                raise DataSourceError(f"rMD17 split file {f} does not exist")
        return "archive", (archive, *csvs)
    raise DataSourceError(f"no rMD17 data for {molecule!r} split {sid} under {root}: expected "
                          f"{train.name} + {test.name} (pre-split layout) or "
                          f"npz_data/rmd17_{molecule}.npz + splits/index_{{train,test}}_{sid}.csv "
                          "(official archive layout; edg fetch rmd17 --out DIR)")


def check_available(root: str | Path, molecule: str, split_id: int = 1) -> None:
    """Raise ``DataSourceError`` (saying what is missing and where) unless ``load_rmd17`` can find the files
    of ``molecule`` split ``split_id`` under ``root``; cheap (no array is read)."""
    _check_molecule(molecule)
    if str(root) == "embedded":
        if molecule not in EMBEDDED_MOLECULES:
            raise DataSourceError(f"the embedded data has no rMD17 {molecule} frames (only ethanol and aspirin)")
        return
    root = Path(root)
    if not root.exists():
        raise DataSourceError(f"rMD17 path {root} does not exist")
    _split_files(root, molecule, split_id)


def load_rmd17(root: str | Path, molecule: str, split_id: int = 1) -> dict[str, RMD17Frames]:
    """``{"train": 950, "valid": 50, "test": 1000}`` frames of ``molecule`` from either layout under ``root``
    (``root="embedded"``: the small embedded set, see ``load_rmd17_embedded``)."""
    _check_molecule(molecule)
    if str(root) == "embedded":
        return load_rmd17_embedded(molecule)
    root = Path(root)
    if not root.exists():
        raise DataSourceError(f"rMD17 path {root} does not exist")
    layout, files = _split_files(root, molecule, split_id)
    if layout == "presplit":
        train, test = (_load_npz(f, molecule) for f in files)
    else:
        archive, tr_csv, te_csv = files
        train = _load_npz(archive, molecule, _read_index_csv(tr_csv))
        test = _load_npz(archive, molecule, _read_index_csv(te_csv))
    root, sid = _layout_root(root), f"{int(split_id):02d}"
    if len(train) < N_TRAIN + N_VALID:
        raise DataSourceError(f"{root}: {molecule} split {sid} has {len(train)} training frames, "
                              f"need {N_TRAIN + N_VALID}")
    return {"train": train[:N_TRAIN], "valid": train[N_TRAIN:N_TRAIN + N_VALID], "test": test[:N_TEST]}


def verify_archive_layout(root: str | Path, molecules=MOLECULES) -> dict[str, int]:
    """Check an unpacked official archive: every ``npz_data/rmd17_<mol>.npz`` of ``molecules`` has the rMD17
    keys with consistent shapes, and every ``splits/index_{train,test}_0k.csv`` indexes existing frames.
    Returns frames per molecule; raises ``DataSourceError`` naming the first bad file."""
    root = _layout_root(Path(root))
    counts: dict[str, int] = {}
    for mol in molecules:
        path = root / "npz_data" / f"rmd17_{mol}.npz"
        if not path.exists():
            raise DataSourceError(f"{root}: the archive has no npz_data/rmd17_{mol}.npz")
        try:
            with np.load(path) as d:
                missing = [k for k in (*KEYS, "old_indices") if k not in d.files]
                if missing:
                    raise DataSourceError(f"{path}: missing keys {missing}")
                n_atoms, shape = len(d["nuclear_charges"]), d["coords"].shape
                if shape[1:] != (n_atoms, 3) or d["forces"].shape != shape or d["energies"].shape != shape[:1] \
                        or d["old_indices"].shape != shape[:1]:
                    raise DataSourceError(f"{path}: inconsistent array shapes")
        except (OSError, ValueError) as e:
            raise DataSourceError(f"{path}: not a readable rMD17 npz ({e})") from None
        counts[mol] = int(shape[0])
    splits = sorted((root / "splits").glob("index_*_0*.csv")) if (root / "splits").exists() else []
    if not splits:
        raise DataSourceError(f"{root}: the archive has no splits/index_{{train,test}}_0k.csv files")
    n_min = min(counts.values(), default=0)
    for f in splits:
        idx = _read_index_csv(f)
        if len(idx) and (idx.min() < 0 or idx.max() >= n_min):
            raise DataSourceError(f"{f}: index {int(idx.max())} outside the {n_min} frames of the npz files")
    return counts


def fetch_rmd17(out: str | Path, url: str = OFFICIAL_URL, sha256: str | None = None, md5: str | None = None,
                molecules=MOLECULES, keep_archive: bool = False, max_bytes: int = 8 * 1024 ** 3):
    """Download the official rMD17 archive from ``url`` into ``out``, verify it, unpack it safely and check
    its contents; returns ``(root, digests)`` where ``root`` is the folder to pass as ``?root=`` /
    ``$EDG_RMD17_ROOT`` and ``digests`` the archive's sha256/md5/size.

    ``sha256`` / ``md5``: expected checksums of the archive (a mismatch raises ``ChecksumError`` and removes
    the file); without them the digests are only reported. ``molecules``: the npz files that must be in it.
    A rerun with a complete ``out`` returns at once."""
    from ..download import fetch_archive
    info = fetch_archive(url, out, "rmd17.tar.bz2", sha256=sha256, md5=md5, max_bytes=max_bytes,
                         keep_archive=keep_archive, check=lambda o: {"frames": verify_archive_layout(o, molecules)})
    return _layout_root(Path(out)), info["digests"]


def rmd17_root(root: str | None = None) -> Path | str:
    """The rMD17 folder to read: ``root`` if given (``"embedded"`` selects the embedded frames), else the first
    of ``$EDG_RMD17_ROOT``, ./data/rmd17, ../shared/data/rmd17 that exists."""
    if root == "embedded":
        return root
    cands = [root] if root else [os.environ.get("EDG_RMD17_ROOT"), "data/rmd17", "../shared/data/rmd17"]
    for c in cands:
        if c and Path(c).exists():
            return Path(c)
    raise DataSourceError(f"rMD17 data not found (looked in {[str(c) for c in cands if c]}): add ?root=DIR to the "
                          "spec (rmd17:aspirin?split=train&root=DIR, --dataset rmd17:aspirin?root=DIR; "
                          "?root=embedded for the frames shipped in the package), or set EDG_RMD17_ROOT=DIR; "
                          "download the data with: edg fetch rmd17 --out DIR")


def _splits_of(spec) -> dict[str, RMD17Frames]:
    return load_rmd17(rmd17_root(spec.root), spec.subset, int(spec.option("split_id", "1")))


def open_rmd17(spec):
    """``rmd17:<molecule>?split=...``: the frames of one split (default train) as molecules."""
    from .sources import Source
    split = spec.split
    frames = _splits_of(spec)[split]
    return Source(str(spec), lambda: frames.molecules(split), length=len(frames), limit=spec.limit)


def split_members(spec) -> tuple[dict[str, np.ndarray], str]:
    """Frame ids (indices into the original MD17 trajectory) of each split, and what they are."""
    sid = int(spec.option("split_id", "1"))
    parts = {k: v.index for k, v in _splits_of(spec).items()}
    return parts, (f"rMD17 {spec.subset} split {sid:02d}; frame ids = indices into the original MD17 "
                   "trajectory (old_indices), as in molecule ids")
