"""Statistics shared by the tables, figures and the claims scorecard.

- ``bootstrap_ci``: percentile bootstrap of a statistic (fixed seed, so tables are reproducible).
- ``paired_delta``: Δ = treatment − control paired by seed, with a bootstrap CI over seeds.
- ``wilson``: Wilson 95% score interval for k of n (divergence rates).
- ``lr_sensitivity``: Wortsman et al. 2023 §2.2: mean over the LR grid of min(ℓ(η), ℓ0) − ℓ*, with
  ℓ* the best loss over the grid and diverged runs counted as ℓ0.
"""
from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_SEED = 20231014
N_BOOT = 2000
Z95 = 1.959963984540054


def bootstrap_ci(values, stat=np.mean, n_boot: int = N_BOOT, seed: int = BOOTSTRAP_SEED, level: float = 0.95):
    """(low, high) percentile-bootstrap interval of ``stat``; (nan, nan) for < 2 finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    boots = np.apply_along_axis(stat, 1, x[idx])
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def mean_ci(values):
    x = [v for v in values if v is not None and np.isfinite(v)]
    m = float(np.mean(x)) if x else math.nan
    return (m, *bootstrap_ci(x))


def paired_delta(treatment: dict, control: dict):
    """treatment/control: {seed: value}. Returns (mean Δ, low, high, n_pairs) over shared seeds;
    falls back to an unpaired difference of means (bootstrap of both) when no seed is shared."""
    shared = sorted(s for s in set(treatment) & set(control)
                    if np.isfinite(treatment[s]) and np.isfinite(control[s]))
    if shared:
        d = [treatment[s] - control[s] for s in shared]
        return (float(np.mean(d)), *bootstrap_ci(d), len(shared))
    t = np.array([v for v in treatment.values() if np.isfinite(v)])
    c = np.array([v for v in control.values() if np.isfinite(v)])
    if len(t) == 0 or len(c) == 0:
        return (math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    boots = [rng.choice(t, len(t)).mean() - rng.choice(c, len(c)).mean() for _ in range(N_BOOT)]
    lo, hi = (np.quantile(boots, [0.025, 0.975]) if len(t) > 1 or len(c) > 1 else (math.nan, math.nan))
    return (float(t.mean() - c.mean()), float(lo), float(hi), 0)


def wilson(k: int, n: int, z: float = Z95):
    """Wilson score interval for a proportion k/n (95% by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def lr_sensitivity(loss_by_lr: dict, init_loss: float) -> float:
    """Wortsman et al. 2023 LR sensitivity over the LR grid ``loss_by_lr`` ({lr: final loss or nan})."""
    losses = [init_loss if (v is None or not np.isfinite(v)) else min(v, init_loss) for v in loss_by_lr.values()]
    if not losses:
        return math.nan
    best = min(losses)
    return float(np.mean([l - best for l in losses]))
