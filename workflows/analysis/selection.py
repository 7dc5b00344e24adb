"""How a run is scored and at which learning rate a variant is compared: defined once, used by the
tables (``aggregate``), the figures and the claims scorecard.

- ``capped_score``: a run's final validation loss, with a diverged or non-finite run counted as ℓ0 (its loss
  at initialisation) and every loss capped at ℓ0 — the convention of Wortsman et al. 2023 §2.2 for LR
  sensitivity, used everywhere a variant's LRs are ranked.
- ``lr_scores`` / ``best_lr``: the mean capped score per LR over a set of seeds, and the LR where it is lowest
  (ties go to the smaller LR). Picked on all seeds this is *descriptive*: the tables show it as the in-sample
  best LR, and it must not feed an effect estimate on the same seeds.
- ``crossfit_lrs``: the LR each seed is evaluated at when the LR is chosen without the winner's curse: the
  seeds are split into two folds (alternating in sorted order) and every seed gets the best LR of the *other*
  fold. The maximum of k noisy means is optimistic by about one standard error with 3-5 near-tied LRs (van
  Hasselt 2013; Cawley & Talbot 2010), so choosing and estimating on the same seeds biases an effect toward
  whichever arm has more LRs; cross-fitting removes that bias.
- ``comparison_lrs``: seed → LR for a variant under a comparison mode — ``assigned`` (an LR-pilot grid: the
  one LR its pilot seeds chose, ``workflows.analysis.pilot``; the evaluation runs have no other), ``shared`` (the grid's
  pre-registered ``compare_lr``, the same for every variant, fixed before the runs), ``best`` (cross-fitted),
  or ``each``.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

MODES = ("shared", "best", "each", "assigned")
CROSSFIT_SE_FACTOR = math.sqrt(2)  # the two folds' means at most perfectly correlated (crossfit_delta)


def capped_score(runs: pd.DataFrame) -> pd.Series:
    """Final loss with diverged or non-finite runs counted as ℓ0 (``init_loss``) and capped at ℓ0."""
    loss = pd.to_numeric(runs.final_val_loss, errors="coerce").astype(float)
    init = runs.init_loss.astype(float)
    bad = runs.diverged.astype(bool) | ~np.isfinite(loss)
    return pd.Series(np.where(bad, init, np.minimum(loss, init)), index=runs.index, dtype=float)


def lr_scores(runs: pd.DataFrame, seeds=None) -> pd.Series:
    """Mean capped score per LR (index sorted ascending) over ``seeds`` (all seeds when None)."""
    r = runs if seeds is None else runs[runs.seed.isin(list(seeds))]
    if r.empty:
        return pd.Series(dtype=float)
    return r.assign(_score=capped_score(r)).groupby("lr")._score.mean().sort_index()


def best_lr(runs: pd.DataFrame, seeds=None) -> float:
    """The LR with the lowest mean capped score over ``seeds`` (ties: the smaller LR); NaN without runs."""
    s = lr_scores(runs, seeds)
    if s.empty:
        return math.nan
    return float(s.index[int(np.argmin(s.to_numpy()))])


def folds(seeds) -> list[list[int]]:
    """The two cross-fitting folds of a set of seeds: alternating in sorted order ([0, 2, ..], [1, 3, ..])."""
    s = sorted({int(x) for x in seeds})
    return [s[0::2], s[1::2]]


def crossfit_lrs(runs: pd.DataFrame, seeds=None) -> dict[int, float]:
    """seed → the best LR of the other fold's seeds (``folds``; the choice is ``crossfit_choice``'s). With
    fewer than 2 seeds there is no other fold: the result is empty (no estimate without reusing the seed)."""
    seeds = sorted({int(x) for x in (runs.seed if seeds is None else seeds)})
    lrs, _, scores = seed_lr_matrices(runs, seeds, "final_val_loss")
    return {s: lrs[i] for s, i in zip(seeds, crossfit_choice(scores, np.arange(len(seeds)))) if i >= 0}


def comparison_lrs(runs: pd.DataFrame, mode: str, shared_lr: float | None = None) -> dict:
    """Which runs of one variant a comparison uses: {seed: lr} for ``best`` (cross-fitted) and ``shared``;
    for ``each``, {(seed, lr): lr} over every run. ``shared`` without a ``shared_lr`` is a ValueError."""
    if mode not in MODES:
        raise ValueError(f"at={mode!r}; choose one of {list(MODES)}")
    if mode == "each":
        return {(int(s), float(lr)): float(lr) for s, lr in zip(runs.seed, runs.lr)}
    if mode == "assigned":
        out = {}
        for s, lr in zip(runs.seed, runs.lr):
            if int(s) in out and out[int(s)] != float(lr):
                raise ValueError(f"at: assigned needs one LR per seed; seed {int(s)} of "
                                 f"{runs.variant.iloc[0]!r} ran {out[int(s)]:g} and {float(lr):g}")
            out[int(s)] = float(lr)
        return dict(sorted(out.items()))
    if mode == "best":
        return crossfit_lrs(runs)
    if shared_lr is None or not np.isfinite(shared_lr):
        raise ValueError("at: shared needs the grid's compare_lr")
    have = {float(x) for x in runs.lr}
    lr = next((x for x in have if math.isclose(x, float(shared_lr), rel_tol=1e-9)), None)
    return {} if lr is None else {int(s): lr for s in sorted(set(runs.seed[runs.lr == lr]))}


def values_at(runs: pd.DataFrame, lrs: dict, column: str) -> dict:
    """{key: value of ``column``} for the runs named by ``comparison_lrs``' {key: lr} (key: seed or (seed, lr))."""
    out = {}
    by = {(int(s), float(lr)): v for s, lr, v in zip(runs.seed, runs.lr, runs[column].astype(float))}
    for key, lr in lrs.items():
        seed = key[0] if isinstance(key, tuple) else key
        if (int(seed), float(lr)) in by:
            out[key] = by[(int(seed), float(lr))]
    return out


def describe(mode: str, shared_lr: float | None = None) -> str:
    """How a comparison chose its LR, for tables, captions and the scorecard."""
    if mode == "assigned":
        return "at each variant's LR chosen by its pilot seeds (disjoint from the evaluation seeds)"
    if mode == "shared":
        return f"at the grid's pre-registered shared LR {shared_lr:g}" if shared_lr else "at a shared LR"
    if mode == "best":
        return "at each variant's cross-fitted best LR (chosen on the other half of the seeds)"
    return "paired by (seed, LR) at every shared LR"


# ------------------------------------------------------------------------------------------------
# cross-fitted comparisons
def seed_lr_matrices(runs: pd.DataFrame, seeds, column: str) -> tuple[list[float], np.ndarray, np.ndarray]:
    """(lrs, values, scores): ``column`` and the capped score of one variant's runs as seeds × LRs arrays over
    ``seeds`` (NaN where a run is missing)."""
    lrs = sorted({float(x) for x in runs.lr})
    r = runs.assign(_v=runs[column].astype(float), _s=capped_score(runs))
    v = r.pivot_table(index="seed", columns="lr", values="_v", aggfunc="mean", dropna=False)
    s = r.pivot_table(index="seed", columns="lr", values="_s", aggfunc="mean", dropna=False)
    return (lrs, v.reindex(index=list(seeds), columns=lrs).to_numpy(dtype=float),
            s.reindex(index=list(seeds), columns=lrs).to_numpy(dtype=float))


def crossfit_choice(scores: np.ndarray, ix) -> np.ndarray:
    """For each row of ``ix`` (indices into the seeds × LRs ``scores``; repeats allowed, as in a resample) the
    column of the LR whose mean score is lowest over the *other* fold of the distinct rows in ``ix`` (``folds``;
    ties: the smaller LR); -1 where there is no other fold. The one place the cross-fitted choice is made."""
    ix = np.asarray(ix, dtype=int)
    a, b = folds(np.unique(ix))
    out = np.full(len(ix), -1)
    for fold, other in ((a, b), (b, a)):
        if not other:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an LR no seed of the fold ran: NaN, skipped
            mean = np.nanmean(scores[other], axis=0)
        if np.isfinite(mean).any():
            out[np.isin(ix, fold)] = int(np.nanargmin(mean))
    return out


def crossfit_values(values: np.ndarray, scores: np.ndarray, ix) -> np.ndarray:
    """Each seed of ``ix`` evaluated at its cross-fitted LR (``crossfit_choice``), re-chosen inside ``ix`` so a
    resample re-does the selection (the spread kind's and the ladder's resampled intervals need that); NaN where
    there is no other fold."""
    ix = np.asarray(ix, dtype=int)
    col = crossfit_choice(scores, ix)
    return np.where(col >= 0, values[ix, np.maximum(col, 0)], np.nan)


def crossfit_delta(t: pd.DataFrame, k: pd.DataFrame, column: str, log: bool = False, transform=None):
    """(effect, low, high, n) of the mean seed-paired treatment − control of ``column`` (of its log with ``log``)
    with each side at its cross-fitted best LR (``crossfit_values``).

    The interval is a Student-t interval over the per-seed cross-fitted differences with its standard error
    multiplied by √2. Within a fold the differences are independent given the other fold's choice, but the two
    folds' means are positively correlated through the choices (each fold's LR is picked on the other's data), so
    the plain t interval is too narrow: 91-94% coverage at nominal 95% with tied LRs. Whatever that correlation
    is, the variance of the mean over the folds, w_A m_A + w_B m_B, is at most (w_A √V_A + w_B √V_B)² ≤
    2 (w_A² V_A + w_B² V_B) (Cauchy-Schwarz, then (a + b)² ≤ 2a² + 2b²): twice the variance the plain interval
    assumes, for any fold sizes; hence √2. Simulated with every LR tied (tests/analysis/test_selection.py, and
    6,000 draws per case beside it): coverage 94-98% and a width 1.3-1.4x that of the oracle interval (a paired t
    interval at one LR fixed in advance) over 3-12 seeds. This replaces a selection-aware jackknife whose
    leave-one-out subsets of 3-4 seeds let one seed pick the LR (intervals many times the oracle's). n: seeds with
    a finite difference."""
    from workflows.analysis import stats

    seeds = sorted({int(x) for x in t.seed} & {int(x) for x in k.seed})
    if not seeds:
        return math.nan, math.nan, math.nan, 0
    _, vt, st = seed_lr_matrices(t, seeds, column)
    _, vk, sk = seed_lr_matrices(k, seeds, column)
    if transform == "abs":
        vt, vk = np.abs(vt), np.abs(vk)
    if log:
        with np.errstate(all="ignore"):
            vt, vk = np.log(np.where(vt > 0, vt, np.nan)), np.log(np.where(vk > 0, vk, np.nan))
    allix = np.arange(len(seeds))
    d = crossfit_values(vt, st, allix) - crossfit_values(vk, sk, allix)
    d = d[np.isfinite(d)]
    effect, lo, hi = stats.mean_ci(d)
    if np.isfinite(lo):
        half = (hi - effect) * CROSSFIT_SE_FACTOR
        lo, hi = effect - half, effect + half
    return effect, lo, hi, len(d)
