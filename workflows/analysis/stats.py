"""Statistics shared by the tables, figures and the claims scorecard.

Every interval here is meant to keep its nominal coverage at the handful of seeds a benchmark can
afford (2–5): a percentile bootstrap over 3 seeds covers the true mean of normal data only ~75% of the
time, so none is used on its own.

- ``mean_ci``: mean with a Student-t 95% interval (n − 1 degrees of freedom) — every "mean over seeds".
- ``paired_delta``: Δ = treatment − control paired by seed, Student-t interval over the paired
  differences; Welch's t interval (Welch–Satterthwaite degrees of freedom) when no seed is shared.
- ``seed_ci``: interval of a statistic that is *not* a mean of per-seed values (LR sensitivity of
  seed-mean curves, highest stable LR, spread): the union of a jackknife Student-t interval over
  seeds (for a plain mean it *is* the t interval) and a BCa bootstrap over seeds
  (``scipy.stats.bootstrap``, fixed seed ``BOOTSTRAP_SEED``, so tables are reproducible), which adds the
  skewness a symmetric interval misses.
- ``extreme_mean_ci``: max (or min) over groups of per-group seed means, from Bonferroni-adjusted
  per-group t intervals (coverage ≥ the nominal level, under normal seed noise).
- ``median_ci``: distribution-free order-statistic interval for a median (throughput).
- ``wilson``: Wilson 95% score interval for k of n (divergence rates), from ``scipy.stats.binomtest``.
- ``lr_sensitivity``: Wortsman et al. 2023 §2.2: mean over the LR grid of min(ℓ(η), ℓ0) − ℓ*, with
  ℓ* the best loss over the grid and diverged runs counted as ℓ0.

Intervals need at least 2 finite values (else NaN bounds); a zero spread gives a zero-width interval.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats as _sp

LEVEL = 0.95
BOOTSTRAP_SEED = 20231014
N_BOOT = 2000
Z95 = 1.959963984540054

# how each interval is described in tables, figures, captions and the scorecard
T_INTERVAL = "95% Student-t interval over seeds"
PAIRED_T_INTERVAL = "95% Student-t interval over the seed-paired differences (Welch's t when no seed is shared)"
SEED_STAT_INTERVAL = "union of a jackknife Student-t interval over seeds and a BCa bootstrap over seeds"


def _finite(values) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return x


def t_quantile(df: float, level: float = LEVEL) -> float:
    """Two-sided Student-t critical value: P(|T_df| ≤ q) = level."""
    return float(_sp.t.ppf(0.5 + level / 2, df))


def mean_ci(values, level: float = LEVEL):
    """(mean, low, high): Student-t interval mean ± t_{n−1} · s/√n over the finite values.
    n < 2: (mean, nan, nan); no finite value: all nan."""
    x = _finite(values)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(x.mean())
    if len(x) < 2:
        return (m, math.nan, math.nan)
    half = t_quantile(len(x) - 1, level) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return (m, m - half, m + half)


def ratio_ci(ratios, level: float = LEVEL):
    """(geometric mean, low, high) of positive ratios: the Student-t interval of the mean log ratio,
    exponentiated (a mean over pairs, so the t interval applies on the log scale). NaN bounds below 2 values."""
    m, lo, hi = mean_ci([math.log(r) for r in ratios if r is not None and np.isfinite(r) and r > 0], level)
    return tuple(math.exp(x) if np.isfinite(x) else math.nan for x in (m, lo, hi))


def welch_ci(treatment, control, level: float = LEVEL):
    """(mean(t) − mean(c), low, high): Welch's unequal-variance t interval, Welch–Satterthwaite df.
    Needs ≥ 2 finite values on each side (else nan bounds)."""
    t, c = _finite(treatment), _finite(control)
    if len(t) == 0 or len(c) == 0:
        return (math.nan, math.nan, math.nan)
    d = float(t.mean() - c.mean())
    if len(t) < 2 or len(c) < 2:
        return (d, math.nan, math.nan)
    vt, vc = t.var(ddof=1) / len(t), c.var(ddof=1) / len(c)
    se2 = vt + vc
    if se2 == 0:
        return (d, d, d)
    df = se2 ** 2 / (vt ** 2 / (len(t) - 1) + vc ** 2 / (len(c) - 1))
    half = t_quantile(df, level) * math.sqrt(se2)
    return (d, d - half, d + half)


def paired_delta(treatment: dict, control: dict, level: float = LEVEL):
    """treatment/control: {seed: value}. Returns (mean Δ, low, high, n_pairs) over the seeds both have
    finite values for, with a Student-t interval over the paired differences; when no seed is shared,
    the unpaired difference of means with Welch's t interval and n_pairs = 0."""
    shared = sorted(s for s in set(treatment) & set(control)
                    if np.isfinite(treatment[s]) and np.isfinite(control[s]))
    if shared:
        return (*mean_ci([treatment[s] - control[s] for s in shared], level), len(shared))
    return (*welch_ci(list(treatment.values()), list(control.values()), level), 0)


def jackknife_t_ci(n: int, stat: Callable[[np.ndarray], float], level: float = LEVEL):
    """(low, high) = θ̂ ± t_{n−1} · se_jack, θ̂ = stat(all n indices), se_jack the leave-one-out
    (jackknife) standard error. For stat = mean of per-seed values this is exactly the Student-t interval."""
    if n < 2:
        return (math.nan, math.nan)
    idx = np.arange(n)
    theta = float(stat(idx))
    loo = np.array([stat(np.delete(idx, i)) for i in range(n)], dtype=float)
    if not (np.isfinite(theta) and np.isfinite(loo).all()):
        return (math.nan, math.nan)
    se = math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))
    half = t_quantile(n - 1, level) * se
    return (theta - half, theta + half)


def bca_ci(n: int, stat: Callable[[np.ndarray], float], level: float = LEVEL, n_boot: int = N_BOOT,
           seed: int = BOOTSTRAP_SEED):
    """(low, high) bias-corrected and accelerated bootstrap (Efron 1987) of ``stat(indices)``, resampling
    the n indices (seeds) with replacement — ``scipy.stats.bootstrap(method="BCa")`` over the seed indices;
    (nan, nan) when it is undefined (n < 2, a non-finite replicate, all replicates equal)."""
    import warnings

    if n < 2:
        return (math.nan, math.nan)
    idx = np.arange(n)
    if not np.isfinite(stat(idx)):
        return (math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning: reported as NaN bounds below
        try:
            res = _sp.bootstrap((idx,), lambda ix: stat(np.asarray(ix, dtype=int)), vectorized=False,
                                paired=False, confidence_level=level, n_resamples=n_boot, method="BCa",
                                rng=np.random.default_rng(seed))
        except (ValueError, FloatingPointError, ZeroDivisionError):
            return (math.nan, math.nan)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)) or np.ptp(res.bootstrap_distribution) == 0:
        return (math.nan, math.nan)
    return (lo, hi)


def seed_ci(n: int, stat: Callable[[np.ndarray], float], level: float = LEVEL):
    """(low, high) for a statistic of n seeds that is not a plain mean of per-seed values: ``stat`` maps an
    array of seed indices (a resample or a leave-one-out subset) to the statistic. The union of the
    jackknife Student-t interval (which restores small-sample coverage: for a mean it is the t interval)
    and the BCa bootstrap interval (which follows skewness); either alone where the other is undefined."""
    parts = [ci for ci in (jackknife_t_ci(n, stat, level), bca_ci(n, stat, level))
             if all(np.isfinite(ci))]
    if not parts:
        return (math.nan, math.nan)
    return (min(p[0] for p in parts), max(p[1] for p in parts))


def extreme_mean_ci(matrix, reduce: str = "max", level: float = LEVEL):
    """(effect, low, high) for max (or min) over columns (groups, e.g. depths) of the column means of
    ``matrix`` (rows: seeds; NaN entries dropped per column). Each column gets a Student-t interval at
    level 1 − (1 − level)/k (Bonferroni over its k columns); the bounds are the max (min) of the column
    bounds, which covers the true extreme with probability ≥ ``level`` when every column's interval is
    valid. Needs ≥ 2 finite values in every column for bounds."""
    A = np.asarray(matrix, dtype=float)
    if A.ndim != 2 or A.shape[1] == 0:
        return (math.nan, math.nan, math.nan)
    red = {"max": max, "min": min}[reduce]
    k = A.shape[1]
    cols = [mean_ci(A[:, j], 1 - (1 - level) / k) for j in range(k)]
    means = [c[0] for c in cols]
    if not all(np.isfinite(means)):
        return (math.nan, math.nan, math.nan)
    effect = float(red(means))
    if not all(np.isfinite(c[1]) for c in cols):
        return (effect, math.nan, math.nan)
    return (effect, float(red(c[1] for c in cols)), float(red(c[2] for c in cols)))


def median_ci(values, level: float = LEVEL):
    """(median, low, high): distribution-free interval [x_(j), x_(n+1−j)] between order statistics, with j
    the largest rank whose binomial(n, ½) coverage 1 − 2·P(B < j) is still ≥ ``level``; it holds for any
    continuous distribution. (median, nan, nan) when even [min, max] covers less (n < 6 at 95%)."""
    x = np.sort(_finite(values))
    n = len(x)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    med = float(np.median(x))
    j = 0
    for r in range(1, n // 2 + 1):  # coverage of [x_(r), x_(n+1−r)] is 1 − 2·P(B ≤ r − 1)
        if 1 - 2 * _sp.binom.cdf(r - 1, n, 0.5) >= level:
            j = r
    if j == 0:
        return (med, math.nan, math.nan)
    return (med, float(x[j - 1]), float(x[n - j]))


def wilson(k: int, n: int, level: float = LEVEL):
    """Wilson score interval for a proportion k/n (95% by default):
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``."""
    if n == 0:
        return (math.nan, math.nan)
    ci = _sp.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return (max(0.0, float(ci.low)), min(1.0, float(ci.high)))


def lr_sensitivity(loss_by_lr: dict, init_loss: float) -> float:
    """Wortsman et al. 2023 LR sensitivity over the LR grid ``loss_by_lr`` ({lr: final loss or nan})."""
    losses = [init_loss if (v is None or not np.isfinite(v)) else min(v, init_loss) for v in loss_by_lr.values()]
    if not losses:
        return math.nan
    best = min(losses)
    return float(np.mean([l - best for l in losses]))
