"""The ED-aware teacher: a ResNet over the 4 structural images of a molecule, plus the ED predictor.

``Teacher(stimg)`` maps structure images (B, 4, 3, H, W) in [0, 1] to F_S (B, 512), the mean over views of
the backbone features, and EDP(F_S) (B, 768), which is trained with L1 to ImageED's F_U. The ED predictor
(Linear(512, 256) - Softplus - Linear(256, 768)) is what the students' distillation loss uses, frozen:
``load_ed_predictor(path)`` rebuilds it from a teacher checkpoint alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from edg.edg_core.errors import EDGError
from edg.train.configs import IMAGENET_MEAN, IMAGENET_STD, TEACHER_PRESETS, TeacherConfig  # noqa: F401 (re-exported)


class EDPredictor(nn.Sequential):
    """EDP: F_S (B, in_dim) -> predicted F_U (B, out_dim); Linear - Softplus - Linear."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 256, out_dim: int = 768):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, out_dim))
        self.dims = (in_dim, hidden_dim, out_dim)


def _backbone(cfg: TeacherConfig) -> nn.Module:
    """The timm backbone with random weights (``train.io.backbone_weights.init_backbone`` loads the starting
    weights)."""
    import timm
    return timm.create_model(cfg.arch, pretrained=False, num_classes=0)


class Teacher(nn.Module):
    def __init__(self, cfg: TeacherConfig = TeacherConfig()):
        super().__init__()
        self.cfg = cfg
        self.backbone = _backbone(cfg)
        self.ed_predictor = EDPredictor(self.backbone.num_features, cfg.hidden_dim, cfg.fu_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_backbone(self, state: dict, where: str, error: type[Exception] = EDGError,
                      message: str = "{where}: do not fit {arch} ({why})") -> Teacher:
        """Load a timm state dict of ``cfg.arch`` into the backbone and return ``self``. The classifier's keys
        are dropped (F_S is the pooled feature); any other missing, unexpected or misshapen key raises
        ``error(message)``, the message formatted with ``where`` (the weights' origin), ``arch`` and ``why``."""
        head = self.backbone.default_cfg.get("classifier", "fc")
        state = {k: v for k, v in state.items() if k != head and not k.startswith(head + ".")}
        try:
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            why = str(e).splitlines()[-1].strip()
        else:
            if not (missing or unexpected):
                return self
            why = f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        raise error(message.format(where=where, arch=self.cfg.arch, why=why))

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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).reshape(b, v, -1).mean(dim=1)

    channels_last = False

    def channels_last_(self) -> Teacher:
        """Weights and backbone inputs in channels_last layout (GPU convolutions take NHWC kernels); the
        values are unchanged. Returns ``self``."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

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
def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, taps: int = 0) -> torch.Tensor:
    """Per-image Gaussian blur: x (N, C, H, W), sigma (N,) in pixels; ``taps`` kernel taps (odd), or
    2 ceil(3 max sigma) + 1 when 0; borders reflected (as torchvision's ``GaussianBlur``)."""
    r = taps // 2 if taps else int(math.ceil(3 * float(sigma.max())))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)                         # (N, K)
    n, c, h, w = x.shape
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    kc = k.repeat_interleave(c, dim=0)                          # (N*C, K)
    y = F.conv2d(y, kc[:, None, None, :], groups=n * c)         # along width
    y = F.conv2d(y, kc[:, None, :, None], groups=n * c)         # along height
    return y.reshape(n, c, h, w)


def augment_structure_images(stimg: torch.Tensor, cfg: TeacherConfig, generator: torch.Generator | None = None):
    """Training augmentations of structure images (B, V, 3, H, W) in [0, 1] -> same shape and dtype.

    Each is applied with probability ``aug_p``, drawn for every view image on its own (``aug_per_view``, the
    authors') or once per molecule for all its views: zoom (centre crop keeping ``crop_scale`` of the side,
    resized back; none at 1.0), rotation about the centre by U(-``max_rotation_deg``, +``max_rotation_deg``)
    (uncovered corners ``rotation_fill``: black or the border pixels), Gaussian blur (``blur_kernel`` taps,
    sigma U(``blur_sigma``) px). Zoom and rotation are one batched affine ``grid_sample``; blur is a separable
    convolution. The same number of random draws is taken whatever is applied (reproducible streams); the
    work is done in float32 outside any autocast region.
    """
    b, v, c, h, w = stimg.shape
    n, dev = b * v, stimg.device

    def draw() -> torch.Tensor:  # (B*V,) uniforms, one per view or one per molecule repeated over its views
        r = torch.rand(n if cfg.aug_per_view else b, generator=generator,
                       device=generator.device if generator is not None else None).to(dev)
        return r if cfg.aug_per_view else r.repeat_interleave(v)
    zoom = (draw() < cfg.aug_p) & (cfg.crop_scale < 1.0)
    rot = (draw() < cfg.aug_p) & (cfg.max_rotation_deg > 0)
    blur = draw() < cfg.aug_p
    angle = (draw() * 2 - 1) * math.radians(cfg.max_rotation_deg)
    lo, hi = cfg.blur_sigma
    sigma = lo + (hi - lo) * draw()
    with torch.autocast(dev.type, enabled=False):
        x = stimg.reshape(n, c, h, w).float()
        moved = (zoom | rot).nonzero().squeeze(1)
        if moved.numel():
            a = angle[moved] * rot[moved]
            s = torch.where(zoom[moved], cfg.crop_scale, 1.0)
            cos, sin, zero = a.cos() * s, a.sin() * s, torch.zeros_like(a)
            theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
            grid = F.affine_grid(theta, [moved.numel(), c, h, w], align_corners=False)
            x = x.clone()
            x[moved] = F.grid_sample(x[moved], grid, mode=cfg.rotation_interpolation,
                                     padding_mode="zeros" if cfg.rotation_fill == "black" else "border",
                                     align_corners=False)
        blurred = blur.nonzero().squeeze(1)
        if blurred.numel():
            x = x.clone()
            x[blurred] = _gaussian_blur(x[blurred], sigma[blurred], cfg.blur_kernel)
    return x.reshape(stimg.shape).to(stimg.dtype)


# ---------------------------------------------------------------- checkpoints


