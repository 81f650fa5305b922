"""The ED-aware teacher: a ResNet over the 4 structural images of a molecule, plus the ED predictor.

``Teacher(stimg)`` maps structure images (B, 4, 3, H, W) in [0, 1] to F_S (B, 512), the mean over views of
the backbone features, and EDP(F_S) (B, 768), which is trained with L1 to ImageED's F_U. The ED predictor
(Linear(512, 256) - Softplus - Linear(256, 768)) is what the students' distillation loss uses, frozen:
``load_ed_predictor(path)`` rebuilds it from a teacher checkpoint alone.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edg_core.config import from_dict
from edg_core.errors import EDGError

from .configs import IMAGENET_MEAN, IMAGENET_STD, TEACHER_PRESETS, TeacherConfig  # noqa: F401 (re-exported)


class EDPredictor(nn.Sequential):
    """EDP: F_S (B, in_dim) -> predicted F_U (B, out_dim); Linear - Softplus - Linear."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 256, out_dim: int = 768):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, out_dim))
        self.dims = (in_dim, hidden_dim, out_dim)


def _backbone(cfg: TeacherConfig) -> nn.Module:
    import timm
    net = timm.create_model(cfg.arch, pretrained=False, num_classes=0)
    if cfg.backbone_checkpoint:
        path = Path(cfg.backbone_checkpoint)
        if not path.exists():
            raise EDGError(f"teacher backbone checkpoint {path} does not exist")
        from .checkpoint import load_checkpoint
        state = load_checkpoint(path, "cpu", "teacher backbone checkpoint")
        state = state.get("state_dict", state.get("model", state))
        head = net.default_cfg.get("classifier", "fc")
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise EDGError(f"{path}: does not fit {cfg.arch} (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return net


class Teacher(nn.Module):
    def __init__(self, cfg: TeacherConfig = TeacherConfig()):
        super().__init__()
        self.cfg = cfg
        self.backbone = _backbone(cfg)
        self.ed_predictor = EDPredictor(self.backbone.num_features, cfg.hidden_dim, cfg.fu_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def fs_dim(self) -> int:
        return self.backbone.num_features

    def structure_features(self, stimg: torch.Tensor) -> torch.Tensor:
        """F_S: (B, V, 3, H, W) in [0, 1] -> (B, fs_dim), backbone features averaged over the views."""
        b, v = stimg.shape[:2]
        if v != self.cfg.n_views or stimg.shape[2] != 3:
            raise ValueError(f"teacher expects structure images (B, {self.cfg.n_views}, 3, H, W), "
                             f"got {tuple(stimg.shape)}")
        x = (stimg.flatten(0, 1) - self.mean) / self.std
        return self.backbone(x).reshape(b, v, -1).mean(dim=1)

    def forward(self, stimg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (F_S (B, fs_dim), EDP(F_S) (B, fu_dim))."""
        fs = self.structure_features(stimg)
        return fs, self.ed_predictor(fs)


def teacher_loss(edp: torch.Tensor, fu: torch.Tensor, has_fu: torch.Tensor) -> torch.Tensor:
    """L1(EDP(F_S), F_U) averaged over the molecules that have F_U (``has_fu`` (B,) bool); 0 if none."""
    w = has_fu.to(edp.dtype)
    per_mol = (edp.float() - fu.float()).abs().mean(dim=-1)
    return (per_mol * w).sum() / w.sum().clamp(min=1)


# ---------------------------------------------------------------- augmentations
def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur: x (N, C, H, W), sigma (N,) in pixels; kernel 2*ceil(3*max sigma)+1."""
    r = int(math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)                         # (N, K)
    n, c, h, w = x.shape
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    kc = k.repeat_interleave(c, dim=0)                          # (N*C, K)
    y = F.conv2d(y, kc[:, None, None, :], groups=n * c)         # along width
    y = F.conv2d(y, kc[:, None, :, None], groups=n * c)         # along height
    return y.reshape(n, c, h, w)


def augment_structure_images(stimg: torch.Tensor, cfg: TeacherConfig, generator: torch.Generator | None = None):
    """Training augmentations, each applied to a molecule (all its views alike) with probability ``aug_p``:
    centre crop (zoom to ``crop_scale``), in-plane rotation (+-``max_rotation_deg``; corners filled from the
    border, i.e. background), Gaussian blur. stimg (B, V, 3, H, W) in [0, 1] -> same shape."""
    b, v, c, h, w = stimg.shape
    dev = stimg.device

    def draw(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device if generator else None).to(dev)
    crop, rot, blur = (draw(b) < cfg.aug_p for _ in range(3))
    angle = (draw(b) * 2 - 1) * math.radians(cfg.max_rotation_deg) * rot
    scale = torch.where(crop, torch.full_like(angle, cfg.crop_scale), torch.ones_like(angle))
    out = stimg
    if bool((crop | rot).any()):
        cos, sin = angle.cos() * scale, angle.sin() * scale
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], -1),
                             torch.stack([sin, cos, torch.zeros_like(cos)], -1)], 1)  # (B, 2, 3)
        theta = theta.repeat_interleave(v, dim=0).to(stimg.dtype)
        x = stimg.reshape(b * v, c, h, w)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).reshape(stimg.shape)
    if bool(blur.any()):
        lo, hi = cfg.blur_sigma
        sigma = (lo + (hi - lo) * draw(b))[blur]
        idx = blur.nonzero().squeeze(1)
        blurred = _gaussian_blur(out[idx].reshape(-1, c, h, w), sigma.repeat_interleave(v))
        out = out.clone()
        out[idx] = blurred.reshape(-1, v, c, h, w)
    return out


# ---------------------------------------------------------------- checkpoints
def teacher_state(model: Teacher) -> dict:
    """What a teacher checkpoint holds besides training state: the config, the whole model and the ED
    predictor on its own (so the students can load it without timm or the backbone)."""
    return {"teacher_config": asdict(model.cfg), "model": model.state_dict(),
            "ed_predictor": model.ed_predictor.state_dict(), "ed_predictor_dims": list(model.ed_predictor.dims)}


def load_teacher(path: str | Path, map_location="cpu", unsafe_pickle: bool | None = None) -> Teacher:
    """The teacher (eval mode) from ``teacher.pt``, a training checkpoint or a run folder (plain data only,
    unless ``unsafe_pickle``: see ``train.checkpoint.load_checkpoint``)."""
    path, ck = _load(path, map_location, unsafe_pickle)
    if "teacher_config" not in ck:
        raise EDGError(f"{path}: not a teacher checkpoint (keys {sorted(ck)[:8]}); expected 'teacher_config'")
    cfg = from_dict(TeacherConfig, _tuples(ck["teacher_config"]), where=f"{path}:teacher_config")
    cfg.backbone_checkpoint = None  # the weights come from the checkpoint itself
    model = Teacher(cfg)
    model.load_state_dict(ck["model"])
    return model.eval()


def load_ed_predictor(path: str | Path, map_location="cpu", unsafe_pickle: bool | None = None) -> EDPredictor:
    """The frozen ED predictor (eval mode, requires_grad False) from a teacher checkpoint file."""
    path, ck = _load(path, map_location, unsafe_pickle)
    if "ed_predictor" not in ck:
        raise EDGError(f"{path}: not a teacher checkpoint (keys {sorted(ck)[:8]}); expected 'ed_predictor'")
    edp = EDPredictor(*ck["ed_predictor_dims"])
    edp.load_state_dict(ck["ed_predictor"])
    for p in edp.parameters():
        p.requires_grad_(False)
    return edp.eval()


def _load(path, map_location, unsafe_pickle: bool | None = None) -> tuple[Path, dict]:
    """(file, content) of a teacher checkpoint; a run folder means its ``teacher.pt``, else its newest checkpoint."""
    from .checkpoint import Checkpoints, load_checkpoint
    path = Path(path)
    if path.is_dir():
        latest = Checkpoints(path / "checkpoint").latest()
        path = path / "teacher.pt" if (path / "teacher.pt").is_file() or latest is None else latest
    return path, load_checkpoint(path, map_location, "teacher checkpoint", unsafe_pickle)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def export_targets(model: Teacher, shards, out, batch_size: int = 128, device=None, bf16: bool = False,
                   drop_images: bool = False) -> dict:
    """Run the teacher once per conformation with structure images and store F_S (``fs.npy``) and
    EDP(F_S) (``edp.npy``): into a copy of the shards (folder ``out``) or a ``.npz`` (``ids``, ``fs``, ``edp``).
    Eval mode, no augmentation, float32 unless ``bf16``; student training reads these instead of running
    the teacher. Resumable for shard output; returns counts."""
    import contextlib

    from .data import annotate_shards
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" \
        else contextlib.nullcontext()

    @torch.no_grad()
    def compute(imgs):
        with autocast:
            fs, edp = model(imgs.to(device))
        return {"fs": fs, "edp": edp}
    return annotate_shards(shards, out, "stimg", compute, batch_size=batch_size, drop_images=drop_images,
                           desc="teacher targets")
