"""Figures written during training: ImageED's reconstructions (paper Figure 5)."""
from __future__ import annotations

import numpy as np
import torch
from edg.train.models.imageed import ImageED


def save_reconstruction_png(model: ImageED, imgs: torch.Tensor, path, seed: int = 0, max_molecules: int = 2
                            ) -> np.ndarray:
    """Paper Figure 5: for each molecule and view, a row of [input | masked | reconstruction] (RGB, and the D
    channel as grey) written to ``path`` as one PNG, and returned (H, W, 3) uint8. imgs (B, V, C, H, W) float in
    [0, 1] or uint8 as a loader batch carries them."""
    from edg.edg_core.io import atomic_path
    from edg.edg_core.shards import to_uint8
    from edg.train.data.shards import images_to_float
    from PIL import Image
    imgs = images_to_float(imgs[:max_molecules]).float()
    was_training = model.training
    model.eval()
    g = torch.Generator(device=imgs.device).manual_seed(seed)
    masked, recon = model.reconstruct(imgs, generator=g)
    model.train(was_training)
    panels = torch.stack([imgs, masked, recon], dim=2)            # (B, V, 3, C, H, W)
    rgb = panels[:, :, :, :3]
    depth = panels[:, :, :, 3:4].expand_as(rgb) if panels.shape[3] > 3 else None
    cols = torch.cat([rgb, depth], dim=2) if depth is not None else rgb  # (B, V, 3 or 6, 3, H, W)
    b, v, k, _, h, w = cols.shape
    pad = torch.ones(b, v, k, 3, h + 2, w + 2, device=cols.device)
    pad[..., 1:-1, 1:-1] = cols
    grid = pad.permute(0, 1, 4, 2, 5, 3).reshape(b * v * (h + 2), k * (w + 2), 3)
    image = to_uint8(grid)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return image

