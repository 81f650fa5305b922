"""The three models of the ED representation study (paper Table 4), each regressing E1..E6 from one form of
the electron density: ``PointNet`` (an ED point cloud), ``VoxelResNet`` (ED voxels), ``ImageRegressor`` (the
6 rendered RGB-D ED images). ``build_model(rep, cfg)`` picks one."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from edg.edg_core.errors import EDGError
from edg.train.configs import IMAGENET_MEAN, IMAGENET_STD, REPRESENTATIONS, TARGETS, RepresentationConfig


class PointNet(nn.Module):
    """PointNet: points (B, N, 4) = (x, y, z bohr, log rho) -> (B, 6); shared MLP then max over points.

    Inputs are scaled by fixed constants (coordinates / 5 bohr, log rho / 5) so no data statistics are needed.
    """

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256), out_dim: int = len(TARGETS)):
        super().__init__()
        layers, c = [], 4
        for w in widths:
            layers += [nn.Linear(c, w), nn.LayerNorm(w), nn.ReLU()]
            c = w
        self.point_mlp = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, 128), nn.ReLU(), nn.Linear(128, out_dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x = points / 5.0
        return self.head(self.point_mlp(x).amax(dim=1))


class _Block3d(nn.Module):
    """3-D basic residual block (two 3^3 convolutions, GroupNorm), optional stride-2 downsampling."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv3d(cin, cout, 1, stride, bias=False), nn.GroupNorm(min(8, cout), cout))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.skip(x))


class VoxelResNet(nn.Module):
    """A small 3-D ResNet: ED voxels (B, 1, S, S, S) e/bohr^3 -> (B, 6).

    The density is compressed with log(1 + rho / 0.01) (rho spans ~1e-4 near the box edge to >100 at nuclei);
    three stages of width w, 2w, 4w (the last two stride 2), global average pooling, linear head.
    """

    def __init__(self, width: int = 16, out_dim: int = len(TARGETS)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, width, 3, 1, 1, bias=False), nn.GroupNorm(min(8, width), width),
                                  nn.ReLU())
        self.stages = nn.Sequential(_Block3d(width, width), _Block3d(width, 2 * width, 2),
                                    _Block3d(2 * width, 4 * width, 2))
        self.head = nn.Linear(4 * width, out_dim)

    def forward(self, vox: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(vox.clamp(min=0) / 0.01)
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3, 4)))


class ImageRegressor(nn.Module):
    """ED images (B, V, 4, H, W) in [0, 1] -> (B, 6): a timm backbone (random init, 4 input channels) per view,
    features averaged over the views, linear head. RGB normalised with ImageNet mean/std, depth as (d - 0.5)/0.5."""

    def __init__(self, arch: str = "resnet18", out_dim: int = len(TARGETS)):
        super().__init__()
        import timm
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=4)
        self.head = nn.Linear(self.backbone.num_features, out_dim)
        self.register_buffer("mean", torch.tensor([*IMAGENET_MEAN, 0.5]).view(1, 4, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([*IMAGENET_STD, 0.5]).view(1, 4, 1, 1), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b, v = img.shape[:2]
        if img.shape[2] != 4:
            raise ValueError(f"ED images must be (B, V, 4, H, W), got {tuple(img.shape)}")
        x = (img.flatten(0, 1) - self.mean) / self.std
        return self.head(self.backbone(x).reshape(b, v, -1).mean(dim=1))


def build_model(rep: str, cfg: RepresentationConfig) -> nn.Module:
    if rep == "pointnet":
        return PointNet()
    if rep == "voxel":
        return VoxelResNet(cfg.voxel_width)
    if rep == "image":
        return ImageRegressor(cfg.image_arch)
    raise EDGError(f"unknown representation {rep!r}; choose from {REPRESENTATIONS}")

