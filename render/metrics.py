"""Agreement between two renderings of the same scene (ours vs PyMOL's)."""
from __future__ import annotations

import numpy as np


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def silhouette_iou(mask_a, mask_b) -> float:
    """Intersection over union of two boolean coverage masks of equal shape (1.0 when both are empty)."""
    a, b = _np(mask_a).astype(bool), _np(mask_b).astype(bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def colour_error(rgb_a, rgb_b, mask) -> float:
    """Mean absolute RGB difference (0..1 scale) over the pixels in ``mask``; images are (3, H, W) or
    (V, 3, H, W) with a matching (H, W) or (V, H, W) mask."""
    a, b, m = _np(rgb_a), _np(rgb_b), _np(mask).astype(bool)
    diff = np.abs(a - b).mean(axis=-3)
    return float(diff[m].mean()) if m.any() else 0.0


def ed_agreement(ours, reference, fourth_channel: str = "depth") -> dict:
    """Compare our ED images (V, 4, H, W; channel 4 depth or alpha) with PyMOL's RGBA (V, 4, H, W).

    Coverage: ours = channel 4 below 1 in depth mode (above 0 in alpha mode); PyMOL's = alpha > 0.5.
    Returns per-view and mean silhouette IoU and the colour error over pixels both cover.
    """
    o, r = _np(ours), _np(reference)
    fourth = o[:, 3]
    ours_cov = (fourth < 1.0) if fourth_channel == "depth" else (fourth > 0.5)
    ref_cov = r[:, 3] > 0.5
    ious = [silhouette_iou(ours_cov[v], ref_cov[v]) for v in range(len(o))]
    return {"iou": ious, "mean_iou": float(np.mean(ious)),
            "colour_error": colour_error(o[:, :3], r[:, :3], ours_cov & ref_cov)}


def structure_agreement(ours, reference, background=(1.0, 1.0, 1.0)) -> dict:
    """Compare our structure images (V, 3, H, W) on ``background`` with PyMOL's RGBA (V, 4, H, W)."""
    o, r = _np(ours), _np(reference)
    bg = np.asarray(background, dtype=o.dtype)[None, :, None, None]
    ours_cov = np.abs(o - bg).max(1) > 1e-6
    ref_cov = r[:, 3] > 0.5
    r = r[:, :3]
    ious = [silhouette_iou(ours_cov[v], ref_cov[v]) for v in range(len(o))]
    return {"iou": ious, "mean_iou": float(np.mean(ious)),
            "colour_error": colour_error(o, r, ours_cov & ref_cov)}
