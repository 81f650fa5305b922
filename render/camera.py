"""Views, framing and orthographic pixel rays.

Camera space follows PyMOL: x to the right, y up, the viewer on +z looking toward -z. A view ``(axis, angle)``
is PyMOL's ``turn axis, angle`` applied to the starting view (identity rotation), so a model point ``p`` (Å)
lands at ``R @ (p - center)`` with ``R`` the right-handed rotation by ``angle`` degrees about ``axis``.
Image row 0 is the top (+y), column 0 the left (-x).

Each ray starts on the near plane ``z = +depth_radius`` and runs toward -z; its parameter ``t`` (Å) is the
distance from that plane, so ``t`` lies in [0, 2 * depth_radius] inside the framing sphere.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def parse_view(view: str | tuple) -> tuple[str, float]:
    """``"x,90"`` or ``("x", 90)`` -> ``("x", 90.0)``."""
    if isinstance(view, str):
        axis, _, angle = view.partition(",")
    else:
        axis, angle = view
    axis = str(axis).strip().lower()
    if axis not in ("x", "y", "z"):
        raise ValueError(f"view {view!r}: axis must be x, y or z")
    try:
        return axis, float(angle)
    except ValueError:
        raise ValueError(f"view {view!r}: angle must be a number of degrees") from None


def view_rotation(view, dtype=torch.float64, device=None) -> torch.Tensor:
    """(3, 3) rotation taking model directions to camera directions for one view."""
    axis, angle = parse_view(view)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    c, s = round(c, 15), round(s, 15)
    m = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]],
         "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
         "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    return torch.tensor(m, dtype=dtype, device=device)


def view_rotations(views, dtype=torch.float64, device=None) -> torch.Tensor:
    """(V, 3, 3) rotations for a list of views."""
    return torch.stack([view_rotation(v, dtype, device) for v in views])


@dataclass
class Framing:
    """One camera framing per molecule, shared by all its views (lengths in Å).

    ``center`` (B, 3): point on the rotation axis (image centre); ``half_width`` (B,): half the image side;
    ``depth_radius`` (B,): half the depth range (depth 0 at ``+depth_radius``, 1 at ``-depth_radius``).
    """
    center: torch.Tensor
    half_width: torch.Tensor
    depth_radius: torch.Tensor

    def select(self, sl: slice) -> Framing:
        return Framing(self.center[sl], self.half_width[sl], self.depth_radius[sl])

    def angstrom_per_pixel(self, image_size: int) -> torch.Tensor:
        return 2.0 * self.half_width / image_size

    def to_dict(self, i: int, image_size: int) -> dict:
        """JSON-friendly record of molecule ``i``'s framing."""
        return {"center_angstrom": [float(v) for v in self.center[i]],
                "half_width_angstrom": float(self.half_width[i]),
                "depth_radius_angstrom": float(self.depth_radius[i]),
                "angstrom_per_pixel": float(self.angstrom_per_pixel(image_size)[i])}


def fit_framing(pos: torch.Tensor, mask: torch.Tensor, margin: float, image_size: int,
                angstrom_per_pixel: float | None = None) -> Framing:
    """Frame padded molecules ``pos`` (B, N, 3) Å, ``mask`` (B, N) bool: centre = bounding-box centre,
    radius = farthest atom + ``margin``. The framing is treated as a constant (no gradient)."""
    pos = pos.detach()
    big = torch.finfo(pos.dtype).max
    lo = torch.where(mask[..., None], pos, torch.full_like(pos, big)).amin(1)
    hi = torch.where(mask[..., None], pos, torch.full_like(pos, -big)).amax(1)
    center = 0.5 * (lo + hi)
    dist = torch.where(mask, (pos - center[:, None]).norm(dim=-1), torch.zeros_like(pos[..., 0]))
    radius = dist.amax(1) + margin
    if angstrom_per_pixel is None:
        half_width = radius
    else:
        half_width = torch.full_like(radius, 0.5 * angstrom_per_pixel * image_size)
    return Framing(center, half_width, torch.maximum(radius, half_width))


def pixel_coords(framing: Framing, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-space x and y (Å) of the pixel centres, each (B, H*W) in row-major pixel order."""
    n = image_size
    steps = (torch.arange(n, dtype=framing.half_width.dtype, device=framing.half_width.device) + 0.5) / n
    hw = framing.half_width[:, None]
    xs = -hw + 2 * hw * steps  # (B, n) left -> right
    ys = hw - 2 * hw * steps  # (B, n) top -> bottom
    x = xs[:, None, :].expand(-1, n, -1).reshape(len(hw), -1)
    y = ys[:, :, None].expand(-1, -1, n).reshape(len(hw), -1)
    return x, y


def to_camera(points: torch.Tensor, rot: torch.Tensor, framing: Framing) -> torch.Tensor:
    """Model points (B, ..., 3) Å -> camera points (B, V, ..., 3) Å for rotations ``rot`` (V, 3, 3)."""
    b = points.shape[0]
    p = points - framing.center.view(b, *([1] * (points.dim() - 2)), 3)
    return torch.einsum("vij,b...j->bv...i", rot.to(p.dtype), p)
