"""Colour ramps and lighting, all elementwise and differentiable."""
from __future__ import annotations

import torch
import torch.nn.functional as F

RAMP_COLORS = ((1.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))  # red, white, blue


def esp_ramp(esp: torch.Tensor, stops=(-0.08, 0.0, 0.08)) -> torch.Tensor:
    """ESP (Hartree/e, any shape) -> RGB (shape + (3,)): piecewise linear red -> white -> blue through the three
    ``stops``, clamped outside them (PyMOL ``ramp_new``)."""
    s0, s1, s2 = stops
    u = esp.clamp(s0, s2)
    lo = ((u - s0) / (s1 - s0)).clamp(0, 1)  # 0 at red, 1 at white
    hi = ((u - s1) / (s2 - s1)).clamp(0, 1)  # 0 at white, 1 at blue
    below = u < s1
    r = torch.where(below, torch.ones_like(u), 1 - hi)
    g = torch.where(below, lo, 1 - hi)
    b = torch.where(below, lo, torch.ones_like(u))
    return torch.stack([r, g, b], dim=-1)


def shade(base: torch.Tensor, normal: torch.Tensor, cfg) -> torch.Tensor:
    """PyMOL-like lighting of colours ``base`` (..., 3) with camera-space unit normals (..., 3).

    ambient + direct (head light along the view) + reflect (the ``light`` source) diffuse terms, plus a white
    Phong highlight of the ``light`` source; normals are turned toward the viewer (two-sided lighting).
    """
    n = torch.where(normal[..., 2:3] < 0, -normal, normal)
    to_light = -F.normalize(torch.tensor(cfg.light, dtype=base.dtype, device=base.device), dim=0)
    n_dot_l = (n * to_light).sum(-1)
    diffuse = cfg.ambient + cfg.direct * n[..., 2].clamp(min=0) + cfg.reflect * n_dot_l.clamp(min=0)
    reflected_z = 2 * n_dot_l * n[..., 2] - to_light[2]  # z of the mirrored light direction = cos to viewer
    spec = cfg.specular * reflected_z.clamp(min=0) ** cfg.shininess * (n_dot_l > 0)
    return (base * diffuse[..., None] + spec[..., None]).clamp(0, 1)
