"""Gains with their uncertainty: a w/ EDG arm against its w/o EDG arm, paired by seed.

Two runs of one student on one dataset that share a seed (and the same split) differ only in lambda, so the
per-seed difference d_s = metric(w/ EDG, seed s) - metric(w/o EDG, seed s) removes what the seed alone does
(initialisation, batch order). Over the n seeds both arms ran: the mean difference, its 95% paired
t-interval mean(d) ± t_{0.975, n-1} · sd(d) / √n (Student's t from ``scipy.stats.t``) and the paired t-test's
two-sided p-value. The verdict: "better" / "worse" when the interval excludes 0 (lower error = better),
"within noise" when it contains 0, and "1 seed: no interval" with fewer than two pairs. Differences are in the
metric's own unit (negative = EDG lowered the error).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ONE_SEED = "1 seed: no interval"
WITHIN_NOISE = "within noise"


@dataclass(frozen=True)
class PairedDiff:
    """The w/ − w/o difference over ``n`` paired seeds: ``mean``, the ``confidence`` interval ``[low, high]``
    and the paired t-test's two-sided ``p`` (``nan`` for fewer than two pairs)."""
    n: int
    mean: float
    low: float
    high: float
    p: float
    seeds: tuple = ()
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return ONE_SEED if self.n == 1 else "no paired seeds"
        if self.low <= 0.0 <= self.high:
            return WITHIN_NOISE
        return "better" if self.high < 0 else "worse"

    def text(self, digits: int = 4) -> str:
        """``-0.0120 [-0.0200, -0.0040]``, ``+0.0010 [-0.0050, +0.0070] within noise`` or ``1 seed: no
        interval`` (the difference itself with one pair: ``-0.0120 (1 seed: no interval)``)."""
        if self.n == 0:
            return "–"
        if self.n < 2:
            return f"{self.mean:+.{digits}f} ({ONE_SEED})"
        body = f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"
        return body + (f" {WITHIN_NOISE}" if self.verdict == WITHIN_NOISE else "")


def paired_difference(edg: dict, baseline: dict, confidence: float = CONFIDENCE) -> PairedDiff:
    """``edg`` and ``baseline``: {pairing key (seed, split): metric value}; the keys both hold are the pairs."""
    from scipy import stats
    keys = sorted(set(edg) & set(baseline), key=str)
    d = np.array([float(edg[k]) - float(baseline[k]) for k in keys], dtype=np.float64)
    seeds = tuple(k[0] if isinstance(k, tuple) else k for k in keys)
    n = len(d)
    if n == 0:
        return PairedDiff(0, math.nan, math.nan, math.nan, math.nan, seeds, confidence)
    mean = float(d.mean())
    if n == 1:
        return PairedDiff(1, mean, math.nan, math.nan, math.nan, seeds, confidence)
    sem = float(d.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:  # every seed moved by exactly the same amount: no spread to scale an interval by
        p = 1.0 if mean == 0.0 else 0.0
        return PairedDiff(n, mean, mean, mean, p, seeds, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
    p = float(2 * stats.t.sf(abs(mean / sem), df=n - 1))
    return PairedDiff(n, mean, mean - half, mean + half, p, seeds, confidence)
