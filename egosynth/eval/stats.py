"""Statistics for the science pipeline (numpy only): bootstrap intervals and trend tests.

Two sources of variation matter for a number like "supervised alignment at shortcut 0.5":
which test images were drawn (the twin's held-out clips) and which training seed was used.
`hierarchical_bootstrap` resamples both, in that order (seeds, then images within each drawn
seed), so an interval is honest about run-to-run variation as well as image sampling. With
one seed it is the ordinary image bootstrap.

`spearman_trend` asks whether a metric changes monotonically with a dose (shortcut strength,
network width): Spearman's rho between level and value, with a permutation p-value (exact
enumeration for small n, Monte Carlo otherwise). A rank test assumes nothing about the
shape of the curve or the distribution of the values, which suits 3-5 seeds per level.

Everything is deterministic given `seed`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

# Exact enumeration of n! permutations up to this n (8! = 40320 rank vectors, a few MB).
EXACT_MAX_N = 8
# Bootstrap replicates resampled at once per seed (memory: _BLOCK x images indices).
_BLOCK = 512


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float  # e.g. 0.95
    n_groups: int  # seeds that contributed
    n_values: int  # finite values (images) in all groups together
    n_nan: int  # non-finite values dropped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scaled(self, factor: float) -> Interval:
        """The same interval on another scale (alignment = Spearman / 0.65753)."""
        lo, hi = sorted((self.low * factor, self.high * factor))
        return Interval(
            self.estimate * factor, lo, hi, self.level, self.n_groups, self.n_values, self.n_nan
        )


def _clean_groups(groups: Sequence[ArrayLike]) -> tuple[list[NDArray[np.float64]], int]:
    """Finite values per group, empty groups dropped; returns (groups, number of NaNs)."""
    out, n_nan = [], 0
    for g in groups:
        a = np.asarray(g, dtype=np.float64).ravel()
        ok = np.isfinite(a)
        # A constant saliency map gives NaN Spearman (docs/eval.md): it carries no ranking,
        # so it is dropped and counted rather than making the whole interval NaN.
        n_nan += int((~ok).sum())
        if ok.any():
            out.append(a[ok])
    return out, n_nan


def hierarchical_bootstrap(
    groups: Sequence[ArrayLike],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of per-group means with a two-stage percentile bootstrap interval.

    `groups`: one array of per-image values per training seed (the images may differ in
    number). The estimate weighs every seed equally (mean over seeds of the mean over that
    seed's images). Each bootstrap replicate draws len(groups) seeds with replacement, then,
    for every drawn seed independently, its images with replacement.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level = {level}: expected a value in (0, 1)")
    if n_boot < 1:
        raise ValueError(f"n_boot = {n_boot}: expected at least 1")
    clean, n_nan = _clean_groups(groups)
    n_values = sum(g.size for g in clean)
    if not clean:
        nan = float("nan")
        return Interval(nan, nan, nan, level, 0, 0, n_nan)
    k = len(clean)
    estimate = float(np.mean([g.mean() for g in clean]))
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, k, size=(n_boot, k))  # stage 1: seeds
    reps = np.empty((n_boot, k))
    for gi, g in enumerate(clean):
        # stage 2: a fresh image resample for every slot (b, j) where this seed was drawn,
        # so two draws of one seed in a replicate are independent resamples of its images.
        slots = np.flatnonzero(chosen.ravel() == gi)
        flat = reps.reshape(-1)
        for start in range(0, slots.size, _BLOCK):  # blocks bound the memory of big splits
            part = slots[start : start + _BLOCK]
            idx = rng.integers(0, g.size, size=(part.size, g.size))
            flat[part] = g[idx].mean(axis=1)
    boot = reps.mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    # Clamp: with a constant metric floating-point means can stray by an ulp.
    low, high = min(float(low), estimate), max(float(high), estimate)
    return Interval(estimate, low, high, level, k, n_values, n_nan)


def bootstrap_mean(
    values: ArrayLike, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of a mean over one set of values (images of one seed)."""
    return hierarchical_bootstrap([values], n_boot=n_boot, level=level, seed=seed)


def _ranks(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Average ranks (ties share the mean rank), 1-based, along the last axis."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.shape, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    xs = x[order]
    # average the ranks within runs of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def spearman_rho(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN if either is constant."""
    rx, ry = _ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / den if den > 0 else float("nan")


@dataclass(frozen=True)
class Trend:
    """A monotonic-trend test of values against levels."""

    rho: float  # Spearman's rho of value vs level
    p_value: float
    alternative: str  # "two-sided", "increasing" or "decreasing"
    n: int
    exact: bool  # True: all permutations enumerated; False: Monte Carlo
    n_permutations: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spearman_trend(
    levels: ArrayLike,
    values: ArrayLike,
    alternative: str = "two-sided",
    n_perm: int = 20000,
    seed: int = 0,
) -> Trend:
    """Spearman's rho of `values` against `levels` with a permutation p-value.

    One observation per (level, seed): e.g. a seed's mean alignment at one shortcut strength.
    The null hypothesis is exchangeability of values across levels (no dependence). For
    n <= EXACT_MAX_N every permutation is enumerated (the exact p-value); otherwise `n_perm`
    random permutations give p = (1 + #{|rho*| >= |rho|}) / (1 + n_perm), which is never 0.
    NaN values are dropped first.
    """
    if alternative not in ("two-sided", "increasing", "decreasing"):
        raise ValueError(f"alternative = {alternative!r}: two-sided, increasing or decreasing")
    x = np.asarray(levels, np.float64).ravel()
    y = np.asarray(values, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"levels {x.shape} and values {y.shape} differ in length")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    rho = spearman_rho(x, y) if n >= 2 else float("nan")
    if not math.isfinite(rho):
        return Trend(rho, float("nan"), alternative, n, False, 0)
    # Permute the ranks of y against the fixed centred ranks of x: rho* is then a dot product.
    rx = _ranks(x)
    rx = rx - rx.mean()
    ry = _ranks(y)
    ry = ry - ry.mean()
    scale = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if n <= EXACT_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)
        exact = False
    null = (ry[perms] @ rx) / scale
    # Compare with a tolerance: ties of rho* with rho must count as "as extreme".
    tol = 1e-12
    if alternative == "increasing":
        hits = int(np.sum(null >= rho - tol))
    elif alternative == "decreasing":
        hits = int(np.sum(null <= rho + tol))
    else:
        hits = int(np.sum(np.abs(null) >= abs(rho) - tol))
    if exact:
        p = hits / len(perms)  # the observed arrangement is one of the enumerated ones
    else:
        p = (hits + 1) / (len(perms) + 1)
    return Trend(rho, float(min(p, 1.0)), alternative, n, exact, len(perms))
