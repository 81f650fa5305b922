"""Metrics shared by tasks and reports: mean absolute error and relative improvement."""
from __future__ import annotations

import numpy as np


def mae(pred, target) -> float:
    """Mean absolute error over all elements (same units as the inputs)."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"mae: prediction shape {p.shape} != target shape {t.shape}")
    return float(np.abs(p - t).mean())


def relative_improvement(baseline: float, improved: float) -> float:
    """(baseline - improved) / baseline in percent; positive when the error went down."""
    if baseline == 0:
        return float("nan")
    return 100.0 * (baseline - improved) / baseline


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
