"""Effects across scale: a model ladder, and each architecture change as a compute multiplier.

A grid config may declare a ladder; every variant of the grid is then trained at every rung:

    ladder:
      tokens_exponent: 0.25   # steps at a rung = the grid's steps × (N_rung / N_grid)^exponent, N the baseline's
                              # non-embedding parameters (N_grid: the grid's own model's): 1 keeps tokens per
                              # parameter fixed (Chinchilla-style),
                              # 0 keeps the tokens per run fixed (Kaplan's L(N) at fixed D)
      fit: loglinear          # the form fitted per variant: loglinear L = α + β·ln C (≥ 3 rungs), or
                              # power L = a·C^(−b) + c (≥ 4 rungs: 3 parameters)
      rungs:                  # in order of size
        r0: {}                                      # the grid's model as it is
        r1: {model: {d_model: 96, n_layers: 6}, lr_scale: 0.667}   # every variant's LRs × 0.667 here
        r2: {model: {d_model: 128, n_layers: 6}, lrs: [0.0005, 0.0015, 0.005]}  # or a list for every variant
        r3: {model: {...}, baseline_only: true}     # an anchor: only the baseline trains here

A rung's ``model`` and ``train`` override the grid's (a rung may not set a field a variant sets: the
variant's axis and the rung's size must be separate); its ``train.steps``, when given, replaces the
tokens rule, and the schedule's step counts (warmup, evaluation, statistics, checkpoint intervals) scale
with the steps. Variants are named ``<variant>@<rung>``; each compares with ``<baseline>@<rung>``.
``workflows.grid.ladder.expand`` validates all of it before any job runs, naming the rung.

The analysis (``ladder_table``), per variant and rung, at each seed's cross-fitted LR
(``workflows.analysis.selection``: the best LR of the other seeds, so no winner's curse):

- training compute C = the PaLM FLOPs per token × steps × batch × context (the run's planned compute);
- the loss L: the mean over seeds of the cross-fitted final loss (a diverged run counts as ℓ0);
- the **compute multiplier** m = C_base(L) / C: the compute at which the baseline's fitted curve reaches the
  variant's loss, over the variant's compute. m > 1: the change is worth that much extra compute; m < 1: it
  costs compute. The baseline's own rows show its fit residual in the same units;
- its 95% interval over seeds: the seeds are resampled *paired* (the same seeds for every variant and
  rung) and the whole estimate — LR choice, baseline fit, inversion — is redone in every resample;
  the interval is ``workflows.analysis.stats.seed_ci`` (the union of a jackknife Student-t and a BCa bootstrap),
  on ln m;
- no extrapolation: where C_base(L) lies outside the baseline's rungs the multiplier is refused (NaN, with
  the rung the baseline would need); an interval bound beyond them is cut at the edge and marked
  ``censored`` (the true bound lies further out);
- R² of each variant's own fit over its rung means, and the trend: the slope of ln m against ln C over the
  rungs (``trend``; > 0: the change gains with scale), with the same resampled interval.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from workflows.analysis import selection, stats
from workflows.analysis.flags import best_lr_at_edge
from workflows.analysis.scale import scale_line
from workflows.data.corpus import train_unigram_entropy

# the expansion (config → variants) is the grid's; its names stay importable from here
from workflows.grid.ladder import FITS, MIN_RUNGS, SEP, expand, name_of  # noqa: F401
from workflows.io import atomic_path, write_text


# ------------------------------------------------------------------------------------------------
# fits
@dataclass
class Fit:
    form: str
    params: tuple
    lo: float  # the fitted compute range (ln C)
    hi: float
    r2: float = math.nan

    def loss(self, lnc):
        lnc = np.asarray(lnc, dtype=float)
        if self.form == "loglinear":
            a, b = self.params
            return a + b * lnc
        a, b, c = self.params
        return a * np.exp(-b * lnc) + c

    def inverse(self, loss: float) -> float:
        """ln C at which the curve reaches ``loss`` (NaN where it never does); may lie outside [lo, hi]."""
        if self.form == "loglinear":
            a, b = self.params
            return (loss - a) / b if b < 0 else math.nan
        a, b, c = self.params
        if a <= 0 or b <= 0 or loss <= c:
            return math.nan
        return -math.log((loss - c) / a) / b


def fit_curve(lnc, loss, form: str) -> Fit | None:
    """Least-squares fit of ``form`` to points (ln C, L); None when under-determined or failed. R² over the points."""
    x, y = np.asarray(lnc, dtype=float), np.asarray(loss, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < (2 if form == "loglinear" else 3):
        return None
    if form == "loglinear":
        b, a = np.polyfit(x, y, 1)
        params = (float(a), float(b))
    else:
        x0 = x.min()
        try:  # L = a·exp(-b·(x - x0)) + c, reparametrised for conditioning; a_C = a·exp(b·x0)
            p, _ = curve_fit(lambda t, a, b, c: a * np.exp(-b * (t - x0)) + c, x, y,
                             p0=(max(y.max() - y.min(), 1e-3), 0.3, y.min() - 0.1), maxfev=20000)
        except (RuntimeError, ValueError):
            return None
        a, b, c = (float(v) for v in p)
        params = (a * math.exp(b * x0), b, c)
    f = Fit(form, params, float(x.min()), float(x.max()))
    res = y - f.loss(x)
    tot = float(((y - y.mean()) ** 2).sum())
    if len(x) > len(params) and tot > 0:  # as many points as parameters: an exact fit, R² = 1 says nothing
        f.r2 = 1 - float((res ** 2).sum()) / tot
    return f


# ------------------------------------------------------------------------------------------------
# the analysis
@dataclass
class Cell:
    """One (arm, rung): its runs as seeds × LRs matrices and its planned compute."""
    arm: str
    rung: str
    lnc: float
    lrs: list
    values: np.ndarray  # capped final loss (a diverged run counts as ℓ0)
    scores: np.ndarray
    params: int
    tokens: int
    diverged: int
    runs: int

    def loss(self, ix) -> float:
        v = selection.crossfit_values(self.values, self.scores, ix)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else math.nan

    def seed_losses(self, seeds) -> np.ndarray:
        return selection.crossfit_values(self.values, self.scores, np.arange(len(seeds)))


def planned_compute(runs: pd.DataFrame) -> float:
    """PaLM FLOPs per token × the tokens the run config plans (steps × batch × context)."""
    r = runs.iloc[0]
    ctx = r.get("context_length", math.nan)
    return float(r.flops_per_token) * float(r.steps) * float(r.batch_size) * float(ctx)


def cells(runs: pd.DataFrame, ladder: dict, seeds) -> dict[tuple[str, str], Cell]:
    """Every (arm, rung) with runs — the arms and the baseline's horizon arms (``ladder['horizons']``)."""
    out = {}
    for arm in list(ladder["arms"]) + list(ladder.get("horizons") or {}):
        for rg in ladder["rungs"]:
            r = runs[runs.variant == name_of(arm, rg["rung"])]
            if r.empty:
                continue
            lrs, _, scores = selection.seed_lr_matrices(r, seeds, "final_val_loss")
            capped = r.assign(final_val_loss=selection.capped_score(r))
            _, values, _ = selection.seed_lr_matrices(capped, seeds, "final_val_loss")
            out[(arm, rg["rung"])] = Cell(arm, rg["rung"], math.log(planned_compute(r)), lrs, values, scores,
                                          int(r.params.iloc[0]), int(float(r.steps.iloc[0]) * float(r.batch_size.iloc[0])
                                                                     * float(r.context_length.iloc[0])),
                                          int(r.diverged.astype(bool).sum()), len(r))
    return out


def by_multiset(stat):
    """``stat(ix)`` cached on the multiset of seed indices: a statistic of seeds depends on which seeds (with
    repeats) a resample holds, not their order, and 3-4 seeds have only 10-35 distinct resamples among the
    bootstrap's thousands."""
    memo = {}

    def cached(ix):
        key = tuple(sorted(int(i) for i in np.asarray(ix).ravel()))
        if key not in memo:
            memo[key] = stat(np.asarray(key, dtype=int))
        return memo[key]
    return cached


def _baseline_fit(cs: list[Cell], form: str, ix) -> Fit | None:
    return fit_curve([c.lnc for c in cs], [c.loss(ix) for c in cs], form)


def log_multiplier(cell: Cell, base: list[Cell], form: str, ix) -> float:
    """ln m for seeds ``ix``: the baseline refitted on those seeds, inverted at the cell's loss (extrapolating:
    the caller refuses out-of-range point estimates)."""
    f = _baseline_fit(base, form, ix)
    if f is None:
        return math.nan
    return f.inverse(cell.loss(ix)) - cell.lnc


# ------------------------------------------------------------------------------------------------
# the paired local estimator (primary): each seed's multiplier from its own baseline around the rung
def paired_local_lnm(x: np.ndarray, Lb: np.ndarray, i: int, lv: np.ndarray, xv: float) -> np.ndarray:
    """Per seed, ln m of a variant at the baseline's rung ``i`` (the estimator's arithmetic, on arrays).

    ``x``: ln C of the baseline's rungs (ascending); ``Lb``: the baseline's final losses, rungs × seeds; ``lv``: the
    variant's losses at rung ``i``, one per seed (the same seeds); ``xv``: the variant's ln C there. Around rung i
    the baseline is a parabola L_b(x_i + t) = L_b(x_i) + s·t + c·t²: its curvature c is pooled over seeds (the
    second divided difference of the seed-mean losses at rungs i−1, i, i+1), its slope s is each seed's own (the
    secant of that seed's baseline from rung i−1 to i+1, corrected by c to the tangent at x_i). Each seed's shift t
    solves s·t + c·t² = L_v − L_b(x_i) (the root nearest the linear answer), and ln m = x_i + t − ln C_v. The
    variant is compared with its own seed's baseline at its own rung, so noise at other rungs enters only through
    the slope. Needs a baseline rung on each side: NaN at the first and last rung, and where a seed's slope is not
    negative (its baseline did not improve with compute there)."""
    nan = np.full(len(lv), np.nan)
    if i <= 0 or i >= len(x) - 1:
        return nan
    m = np.nanmean(Lb, axis=1)
    x0, x1, x2 = x[i - 1], x[i], x[i + 1]
    c = ((m[i + 1] - m[i]) / (x2 - x1) - (m[i] - m[i - 1]) / (x1 - x0)) / (x2 - x0)
    sec = (Lb[i + 1] - Lb[i - 1]) / (x2 - x0)
    slope = sec + c * (2 * x1 - x0 - x2)
    d = np.asarray(lv, dtype=float) - Lb[i]
    out = nan.copy()
    for k in range(len(lv)):
        sk, dk = slope[k], d[k]
        if not (np.isfinite(sk) and np.isfinite(dk)) or sk >= 0:
            continue
        lin = dk / sk
        if abs(c) < 1e-12:
            t = lin
        else:
            disc = sk * sk + 4 * c * dk
            if disc < 0:
                continue
            roots = ((-sk + math.sqrt(disc)) / (2 * c), (-sk - math.sqrt(disc)) / (2 * c))
            t = min(roots, key=lambda r: abs(r - lin))
        out[k] = x1 + t - xv
    return out


AXES = ("training length", "model size")  # the baseline curve a multiplier is read on (``curve_for``)


def curve_for(cell: Cell, cs: dict, ladder: dict, axis: str) -> tuple[list[Cell], int] | None:
    """The baseline's cells that ``cell``'s multiplier is read on, in ascending compute, and the index of the
    baseline cell at ``cell``'s rung: on ``axis`` "training length", the baseline at this rung trained for each
    ``ladder['horizons']`` factor of its steps (the same model, more or fewer tokens); on "model size", the
    baseline at every rung. None where the rung has no baseline, or (training length) no horizon arm on each side."""
    b = ladder["baseline"]
    anchor = cs.get((b, cell.rung))
    if anchor is None:
        return None
    if axis == "training length":
        pts = [cs[(h, cell.rung)] for h in (ladder.get("horizons") or {}) if (h, cell.rung) in cs]
        curve = sorted(pts + [anchor], key=lambda c: c.lnc)
        i = curve.index(anchor)
        return (curve, i) if 0 < i < len(curve) - 1 else None
    curve = sorted([cs[(b, rg["rung"])] for rg in ladder["rungs"] if (b, rg["rung"]) in cs], key=lambda c: c.lnc)
    return curve, curve.index(anchor)


def _lnm_on(cell: Cell, curve: list[Cell], i: int, seeds) -> np.ndarray:
    x = np.array([b.lnc for b in curve])
    Lb = np.array([b.seed_losses(seeds) for b in curve])
    return paired_local_lnm(x, Lb, i, cell.seed_losses(seeds), cell.lnc)


def local_log_multipliers(cell: Cell, base: list[Cell], seeds) -> np.ndarray:
    """Per seed, ln m of ``cell`` against the same seed's baseline at the same rung (``paired_local_lnm``) on the
    model-size curve ``base`` (the baseline's cells, one per rung); NaN where the rung has no baseline or is the
    baseline's first or last rung."""
    base = sorted(base, key=lambda c: c.lnc)
    here = [i for i, b in enumerate(base) if b.rung == cell.rung]
    if not here:
        return np.full(len(seeds), np.nan)
    return _lnm_on(cell, base, here[0], seeds)


def _summarise(lnm: np.ndarray, cell: Cell, curve: list[Cell], i: int, seeds, level: float, where: str) -> dict:
    ok = lnm[np.isfinite(lnm)]
    out = {"multiplier": math.nan, "multiplier_low": math.nan, "multiplier_high": math.nan, "multiplier_seeds": len(ok),
           "extrapolated": False, "note": ""}
    if i in (0, len(curve) - 1):
        out["note"] = ("not estimated: the paired local estimate needs a baseline rung on each side of this rung "
                       "(add a baseline_only rung)")
        return out
    if not len(ok):
        out["note"] = f"not estimated: no seed's baseline improved with compute around this {where}"
        return out
    m, lo, hi = stats.mean_ci(ok.tolist(), level)
    out.update(multiplier=math.exp(m), multiplier_low=math.exp(lo) if np.isfinite(lo) else math.nan,
               multiplier_high=math.exp(hi) if np.isfinite(hi) else math.nan)
    span = [float(np.nanmean(curve[k].seed_losses(seeds))) for k in (i - 1, i + 1)]
    lv = float(np.nanmean(cell.seed_losses(seeds)))
    out["extrapolated"] = bool(not (min(span) - 1e-12 <= lv <= max(span) + 1e-12))
    if out["extrapolated"]:
        out["note"] = f"extrapolated: the variant's loss lies beyond the baseline losses either side on its {where}"
    return out


def local_multiplier(cell: Cell, base: list[Cell], seeds, level: float = stats.LEVEL) -> dict:
    """The cell's compute multiplier on the model-size curve (``local_log_multipliers``): the geometric mean over
    seeds with the exponentiated 95% Student-t interval of the mean ln m (seeds paired: the variant and the
    baseline share each seed's data order and initialisation seed); ``extrapolated`` when the variant's loss lies
    beyond the baseline losses of the rungs either side (the linear step reaches past them)."""
    bs = sorted(base, key=lambda c: c.lnc)
    at = [k for k, b in enumerate(bs) if b.rung == cell.rung]
    if not at:
        return _summarise(np.full(len(seeds), np.nan), cell, bs, 0, seeds, level, "rung")
    return _summarise(_lnm_on(cell, bs, at[0], seeds), cell, bs, at[0], seeds, level, "rung")


WHERE = {"training length": "training-length curve", "model size": "rung"}  # how the notes name each axis's points


def primary_curve(cell: Cell, cs: dict, ladder: dict) -> tuple[str, list[Cell], int] | None:
    """(axis, curve, i) of ``cell``'s primary multiplier: the baseline's training-length curve at its rung where
    the ladder has horizon arms there, else its model-size curve (``curve_for``); None where the rung has no
    baseline."""
    for axis in AXES:
        got = curve_for(cell, cs, ladder, axis)
        if got is not None:
            return (axis, *got)
    return None


def primary_log_multipliers(cell: Cell, cs: dict, ladder: dict, seeds) -> np.ndarray:
    """Per seed, ln m of ``cell`` on its primary curve (``primary_curve``)."""
    got = primary_curve(cell, cs, ladder)
    return _lnm_on(cell, got[1], got[2], seeds) if got else np.full(len(seeds), np.nan)


def primary_multiplier(cell: Cell, cs: dict, ladder: dict, seeds, level: float = stats.LEVEL) -> dict:
    """The cell's compute multiplier on its primary curve, with the ``axis`` it was read on. On the training-length
    curve: per seed, the variant against the same seed's baseline trained for the rung's steps, over that seed's
    local slope between the horizon arms either side, so m is the training compute the baseline of this size needs
    to reach the variant's loss, over the variant's; on the model-size curve: ``local_multiplier``."""
    got = primary_curve(cell, cs, ladder)
    if got is None:
        return {**_summarise(np.full(len(seeds), np.nan), cell, [], 0, seeds, level, "rung"), "axis": "model size"}
    axis, curve, i = got
    return {**_summarise(_lnm_on(cell, curve, i, seeds), cell, curve, i, seeds, level, WHERE[axis]), "axis": axis}


def local_trend(own: list[Cell], base: list[Cell], seeds, level: float = stats.LEVEL, lnm_of=None) -> dict:
    """Slope of ln m against ln C over the arm's rungs, per seed (OLS over that seed's local ln m: ``lnm_of(cell)``,
    by default on the model-size curve ``base``), with the Student-t interval of the mean slope over seeds: > 0,
    the change gains with scale; 0, a constant multiplier."""
    own = sorted(own, key=lambda c: c.lnc)
    lnm_of = lnm_of or (lambda c: local_log_multipliers(c, base, seeds))
    M = np.array([lnm_of(c) for c in own])  # rungs × seeds
    x = np.array([c.lnc for c in own])
    keep = [j for j in range(M.shape[1]) if np.isfinite(M[:, j]).sum() >= 2] if len(own) else []
    out = {"rungs": len(own), "slope": math.nan, "slope_low": math.nan, "slope_high": math.nan,
           "rungs_used": " ".join(c.rung for c in own), "seeds": len(keep), "note": ""}
    if len(own) < 2 or not keep:
        out["note"] = f"{len(own)} rung(s) with a local multiplier; a slope needs ≥ 2"
        return out
    slopes = []
    for j in keep:
        ok = np.isfinite(M[:, j])
        slopes.append(float(np.polyfit(x[ok], M[ok, j], 1)[0]))
    out["slope"], out["slope_low"], out["slope_high"] = stats.mean_ci(slopes, level)
    return out


def decision_accuracy(cs: dict, ladder: dict, seeds, n_boot: int = stats.N_BOOT, level: float = stats.LEVEL) -> pd.DataFrame:
    """For each rung below the top one: the share of arm pairs (every two arms trained at both rungs, the baseline
    included) whose order by mean final loss there matches their order at the top rung (DataDecide's decision
    accuracy), with a percentile interval over seeds resampled jointly (the same seeds for every arm and rung;
    with 3 seeds there are only 10 distinct resamples, so the interval is coarse)."""
    rungs = [rg["rung"] for rg in ladder["rungs"]]
    arms = list(ladder["arms"])
    top = next((r for r in reversed(rungs) if sum((a, r) in cs for a in arms) >= 2), None)
    rows = []
    if top is None:
        return pd.DataFrame(rows)
    vals = {k: c.seed_losses(seeds) for k, c in cs.items()}

    def share(r, ix):
        common = [a for a in arms if (a, r) in cs and (a, top) in cs]
        pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1:]]
        if not pairs:
            return math.nan, 0
        agree = 0
        for a, b in pairs:
            d_here = np.nanmean(vals[(a, r)][ix]) - np.nanmean(vals[(b, r)][ix])
            d_top = np.nanmean(vals[(a, top)][ix]) - np.nanmean(vals[(b, top)][ix])
            agree += int(np.sign(d_here) == np.sign(d_top))
        return agree / len(pairs), len(pairs)

    rng = np.random.default_rng(stats.BOOTSTRAP_SEED)
    n = len(seeds)
    for r in rungs:
        if r == top:
            continue
        point, npairs = share(r, np.arange(n))
        if not npairs:
            continue
        boot = [share(r, rng.integers(0, n, n))[0] for _ in range(n_boot)]
        boot = np.array([b for b in boot if np.isfinite(b)])
        a = (1 - level) / 2
        rows.append({"rung": r, "top_rung": top, "pairs": npairs, "accuracy": point,
                     "accuracy_low": float(np.quantile(boot, a)) if len(boot) else math.nan,
                     "accuracy_high": float(np.quantile(boot, 1 - a)) if len(boot) else math.nan, "seeds": n})
    return pd.DataFrame(rows)


def ladder_table(runs: pd.DataFrame, ladder: dict, level: float = stats.LEVEL) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per arm × rung table, per arm trend table). Primary: the paired local multiplier (``local_multiplier``)
    and its per-seed trend (``local_trend``); secondary, labelled ``global_*``: the multiplier from one fit of the
    baseline over all rungs (``_multiplier``), with its lack of fit (R², and the baseline's own rungs against it)."""
    seeds = sorted({int(s) for s in runs.seed})
    cs = cells(runs, ladder, seeds)
    form, b = ladder["fit"], ladder["baseline"]
    base = [cs[(b, rg["rung"])] for rg in ladder["rungs"] if (b, rg["rung"]) in cs]
    allix = np.arange(len(seeds))
    bfit = _baseline_fit(base, form, allix)
    rows, trends = [], []
    horizons = ladder.get("horizons") or {}
    arms = list(ladder["arms"])
    arms[arms.index(b) + 1:arms.index(b) + 1] = list(horizons)  # the baseline's horizon arms beside it
    for arm in arms:
        own = [cs[(arm, rg["rung"])] for rg in ladder["rungs"] if (arm, rg["rung"]) in cs]
        if not own:
            continue
        ofit = fit_curve([c.lnc for c in own], [c.loss(allix) for c in own], form)
        for c in own:
            row = {"variant": arm, "rung": c.rung, "params": c.params, "tokens": c.tokens,
                   "compute": math.exp(c.lnc), "runs": c.runs, "diverged": c.diverged, "seeds": len(seeds)}
            sl = c.seed_losses(seeds)
            m, lo, hi = stats.mean_ci(sl[np.isfinite(sl)].tolist(), level)
            row.update(loss=m, loss_low=lo, loss_high=hi)
            row.update(selection_lrs=" ".join(f"{c.lrs[i]:g}" if i >= 0 else "-"
                                              for i in selection.crossfit_choice(c.scores, allix)))
            best = selection.best_lr(runs[runs.variant == name_of(arm, c.rung)])
            row["best_lr_at_edge"] = bool(len(c.lrs) > 2 and np.isfinite(best) and best_lr_at_edge(best, c.lrs))
            if arm == b:
                row.update(multiplier=1.0, multiplier_low=1.0, multiplier_high=1.0, multiplier_seeds=len(seeds),
                           extrapolated=False, note="the baseline itself", axis="")
            elif arm in horizons:
                row.update(multiplier=math.nan, multiplier_low=math.nan, multiplier_high=math.nan,
                           multiplier_seeds=0, extrapolated=False, axis="",
                           note=f"the baseline trained for {horizons[arm]:g} x the rung's steps: a point of its "
                                "training-length curve")
            else:
                size = local_multiplier(c, base, seeds, level)
                row.update(primary_multiplier(c, cs, ladder, seeds, level))
                row.update({f"size_{k}": v for k, v in size.items() if k != "note"}, size_note=size["note"])
            g = _multiplier(c, base, bfit, form, len(seeds), level) if arm not in horizons else _no_multiplier()
            row.update({f"global_{k}" if k != "note" else "global_note": v for k, v in g.items()})
            row.update(r2=ofit.r2 if ofit else math.nan, fit=form, fit_params=" ".join(f"{p:.6g}" for p in ofit.params)
                       if ofit else "")
            rows.append(row)
        if arm != b and arm not in horizons:
            lnm_of = (lambda cell: primary_log_multipliers(cell, cs, ladder, seeds))
            trends.append({"variant": arm, **local_trend(own, base, seeds, level, lnm_of),
                           **{f"global_{k}": v for k, v in trend(own, base, form, len(seeds), level).items()}})
    return pd.DataFrame(rows), pd.DataFrame(trends)


def _no_multiplier() -> dict:
    return {"multiplier": math.nan, "multiplier_low": math.nan, "multiplier_high": math.nan, "censored": "", "note": ""}


def _multiplier(c: Cell, base, bfit: Fit | None, form: str, n: int, level: float) -> dict:
    out = _no_multiplier()
    if bfit is None:
        out["note"] = f"the baseline's {form} fit is undefined (needs ≥ {MIN_RUNGS[form]} rungs with a loss)"
        return out
    lnm = log_multiplier(c, base, form, np.arange(n))
    if not np.isfinite(lnm):
        out["note"] = "the baseline's fitted curve never reaches this loss"
        return out
    target = lnm + c.lnc
    eps = 1e-9
    own = c.arm == base[0].arm if base else False  # the baseline against its own curve: the fit's residual
    if own:
        out["note"] = "the baseline against its own fit: the fit's residual in compute terms"
    elif target < bfit.lo - eps or target > bfit.hi + eps:
        side = "below its smallest" if target < bfit.lo else "above its largest"
        out["note"] = (f"refused: the baseline would need {math.exp(target):.3g} FLOPs, {side} rung "
                       f"({math.exp(bfit.lo if target < bfit.lo else bfit.hi):.3g}); add a baseline rung there "
                       "(baseline_only) to measure it")
        return out
    lo, hi = stats.seed_ci(n, by_multiset(lambda ix: log_multiplier(c, base, form, ix)), level)
    cens = []
    if not own and np.isfinite(lo) and lo + c.lnc < bfit.lo:
        lo, cens = bfit.lo - c.lnc, cens + ["low"]
    if not own and np.isfinite(hi) and hi + c.lnc > bfit.hi:
        hi, cens = bfit.hi - c.lnc, cens + ["high"]
    out.update(multiplier=math.exp(lnm), multiplier_low=math.exp(lo) if np.isfinite(lo) else math.nan,
               multiplier_high=math.exp(hi) if np.isfinite(hi) else math.nan, censored="+".join(cens))
    if cens:
        out["note"] = ("interval cut at the baseline's rungs (" + ", ".join(cens) + "): the true bound lies further "
                       "out")
    return out


def trend(own: list[Cell], base: list[Cell], form: str, n: int, level: float = stats.LEVEL) -> dict:
    """Slope of ln m against ln C over the rungs where the multiplier is defined (point estimate inside the
    baseline's rungs), with its resampled 95% interval: > 0, the change gains with scale; < 0, it fades."""
    bfit = _baseline_fit(base, form, np.arange(n))
    keep = []
    for c in own:
        lnm = log_multiplier(c, base, form, np.arange(n)) if bfit else math.nan
        if np.isfinite(lnm) and bfit.lo - 1e-9 <= lnm + c.lnc <= bfit.hi + 1e-9:
            keep.append(c)
    out = {"rungs": len(keep), "slope": math.nan, "slope_low": math.nan, "slope_high": math.nan,
           "rungs_used": " ".join(c.rung for c in keep)}
    if len(keep) < 2:
        out["note"] = f"{len(keep)} rung(s) with a multiplier inside the baseline's rungs; a slope needs ≥ 2"
        return out

    def slope(ix):
        y = np.array([log_multiplier(c, base, form, ix) for c in keep])
        x = np.array([c.lnc for c in keep])
        if not np.isfinite(y).all():
            return math.nan
        return float(np.polyfit(x, y, 1)[0])

    slope = by_multiset(slope)
    out["slope"] = slope(np.arange(n))
    out["slope_low"], out["slope_high"] = stats.seed_ci(n, slope, level)
    out["note"] = ""
    return out


def markdown(table: pd.DataFrame, trends: pd.DataFrame, ladder: dict, scale: str = "",
             decisions: pd.DataFrame | None = None) -> str:
    """results/ladder.md: the rungs, the multipliers and the trends, with what three rungs can and cannot say."""
    def f(x, fmt="{:.3g}"):
        return fmt.format(x) if isinstance(x, (int, float)) and np.isfinite(x) else "—"

    horizons = ladder.get("horizons") or {}
    on_length = ("On the **training-length curve** (where a rung has the baseline's horizon arms, "
                 + ", ".join(f"{h:g}×" for h in horizons.values()) + " its steps): the slope is that of the "
                 "baseline of the same size trained for fewer or more tokens, so m is the training compute the "
                 "baseline of this size needs to reach the variant's loss, over the variant's; elsewhere on the "
                 "model-size curve (the baseline's rungs either side; `size_*` columns: that reading everywhere). "
                 if horizons else "")
    lines = ["# Effects across scale: compute multipliers", "",
             "m = compute the baseline needs to reach the variant's loss ÷ the variant's compute: m > 1, the change is "
             "worth m× compute; m < 1, it costs compute. **Primary (paired, local):** per seed, the variant's loss "
             "against the same seed's baseline at the same rung, over that seed's local baseline slope dL/d ln C "
             "(the secant between the points either side); the geometric mean over seeds with a 95% Student-t "
             "interval of the mean ln m. Noise at one rung does not leak into the others. " + on_length +
             "*Extrapolated*: the variant's loss lies beyond the baseline losses either side. **Secondary (global):** one "
             f"{ladder['fit']} fit ({'L = α + β·ln C' if ladder['fit'] == 'loglinear' else 'L = a·C^(−b) + c'}) of "
             "the baseline over all rungs, inverted, seeds resampled through the fit; its lack of fit is the "
             f"baseline's own rows (global m ≠ 1) and R². Tokens per run ∝ N^{ladder['tokens_exponent']:g} "
             "(N: the baseline's non-embedding parameters). LRs: each (variant, rung) at the LR its pilot seeds chose "
             "when the grid has an lr_pilot, else each seed at its cross-fitted LR.", ""]
    if scale:
        lines += [scale, ""]
    lines += ["| rung | params (baseline) | steps | compute range |", "|---|---|---|---|"]
    for rg in ladder["rungs"]:
        t = table[(table.rung == rg["rung"])]
        comp = f"{t.compute.min():.3g}–{t.compute.max():.3g}" if len(t) else "—"
        p = t[t.variant == ladder["baseline"]].params
        lines.append(f"| {rg['rung']}{' (baseline only)' if rg['baseline_only'] else ''} | "
                     f"{int(p.iloc[0]) if len(p) else '—'} | {rg['steps']} | {comp} FLOPs |")
    if horizons:
        lines += ["", "The baseline's training-length curve: " + "; ".join(
            f"{arm} = {h:g} × the rung's steps" for arm, h in horizons.items()) + "."]
    lines += ["", "| variant | rung | loss [95% CI] | multiplier [95% CI] (paired, local) | high/low | axis | "
              "global fit: multiplier [95% CI] | R² (own fit) | LRs (per seed) | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        mult = f"{f(r.multiplier)} [{f(r.multiplier_low)}, {f(r.multiplier_high)}]"
        if r.get("extrapolated"):
            mult += " (extrapolated)"
        ratio = r.multiplier_high / r.multiplier_low if np.isfinite(r.multiplier_low) and r.multiplier_low > 0 else math.nan
        gm = f"{f(r.global_multiplier)} [{f(r.global_multiplier_low)}, {f(r.global_multiplier_high)}]"
        if r.get("global_censored"):
            gm += f" (cut: {r.global_censored})"
        edge = " ↔" if r.best_lr_at_edge else ""
        lines.append(f"| {r.variant} | {r.rung} | {f(r.loss, '{:.3f}')} [{f(r.loss_low, '{:.3f}')}, "
                     f"{f(r.loss_high, '{:.3f}')}] | {mult} | {f(ratio, '{:.2f}')} | {r.get('axis') or ''} | {gm} | "
                     f"{f(r.r2, '{:.3f}')} | "
                     f"{r.selection_lrs}{edge} | {'; '.join(x for x in (r.get('note'), r.get('global_note')) if isinstance(x, str) and x)} |")
    lines += ["", "Trend (slope of ln m against ln C over the rungs, per seed, mean with a 95% t interval; > 0: the "
              "change gains with scale; the global fit's resampled slope beside it):", "",
              "| variant | slope [95% CI] (paired, local) | global fit: slope [95% CI] | rungs used | note |",
              "|---|---|---|---|---|"]
    for _, r in trends.iterrows():
        lines.append(f"| {r.variant} | {f(r.slope)} [{f(r.slope_low)}, {f(r.slope_high)}] | "
                     f"{f(r.get('global_slope'))} [{f(r.get('global_slope_low'))}, {f(r.get('global_slope_high'))}] | "
                     f"{r.rungs_used} | {r.get('note', '')} |")
    if decisions is not None and len(decisions):
        lines += ["", "Decision accuracy (DataDecide): the share of arm pairs whose order by mean loss at a rung "
                  "matches their order at the top rung, with a percentile interval over seeds resampled jointly:", "",
                  "| rung | top rung | pairs | accuracy [95% CI] |", "|---|---|---|---|"]
        for _, r in decisions.iterrows():
            lines.append(f"| {r.rung} | {r.top_rung} | {int(r.pairs)} | {f(r.accuracy, '{:.2f}')} "
                         f"[{f(r.accuracy_low, '{:.2f}')}, {f(r.accuracy_high, '{:.2f}')}] |")
    lines += ["", "↔: the in-sample best LR is at the edge of the rung's grid. What this cannot say: three or four "
              "rungs a factor of a few apart fit any smooth curve; a trend inside its interval's width is not a "
              "trend, and nothing here says what happens beyond the largest rung.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# what the figures draw beside the table (drawn by workflows.plots.ladder)
def points(runs: pd.DataFrame, ladder: dict) -> pd.DataFrame:
    """Every seed's loss per (arm, rung) at the LR the analysis uses (the cross-fitted one; on a pilot grid the
    arm's one LR, its pilot's choice): the dots of ladder_curves."""
    seeds = sorted({int(s) for s in runs.seed})
    rows = []
    for (arm, rung), c in cells(runs, ladder, seeds).items():
        for s, v in zip(seeds, c.seed_losses(seeds)):
            rows.append({"variant": arm, "rung": rung, "seed": s, "compute": math.exp(c.lnc), "loss": v})
    return pd.DataFrame(rows)


def fit_lines(table: pd.DataFrame, ladder: dict, n: int = 50) -> pd.DataFrame:
    """Each arm's fitted curve (``table.fit_params``) at ``n`` points over its own rungs only (no extrapolation):
    the lines of ladder_curves."""
    rows = []
    for arm in dict.fromkeys(table.variant):
        t = table[table.variant == arm].sort_values("compute")
        params = [float(x) for x in str(t.fit_params.iloc[0]).split()] if t.fit_params.iloc[0] else []
        if params:
            f = Fit(ladder["fit"], tuple(params), math.log(t.compute.min()), math.log(t.compute.max()))
            xs = np.linspace(f.lo, f.hi, n)
            rows.append(pd.DataFrame({"variant": arm, "compute": np.exp(xs), "loss": f.loss(xs)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["variant", "compute", "loss"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The ladder's curves and compute multipliers: runs.parquet → "
                                             "ladder.csv/.md and the ladder_curves / compute_multiplier figures.")
    ap.add_argument("--runs", required=True)
    ap.add_argument("--grid", required=True, help="grid.json with a 'ladder' entry")
    ap.add_argument("--out", required=True, help="results folder (ladder.csv, ladder.md, ladder_trend.csv)")
    ap.add_argument("--figures", help="figures folder (ladder_curves, compute_multiplier)")
    ap.add_argument("--data-meta", help="token files' meta.json: the unigram-entropy line")
    args = ap.parse_args(argv)
    grid = json.loads(Path(args.grid).read_text())
    ladder = grid.get("ladder")
    if not ladder:
        print(f"error: {args.grid} has no ladder", file=sys.stderr)
        return 2
    runs = pd.read_parquet(args.runs)
    table, trends = ladder_table(runs, ladder)
    seeds = sorted({int(s) for s in runs.seed})
    decisions = decision_accuracy(cells(runs, ladder, seeds), ladder, seeds)
    out = Path(args.out)
    for name, df in (("ladder.csv", table), ("ladder_trend.csv", trends), ("ladder_decisions.csv", decisions)):
        with atomic_path(out / name) as tmp:
            df.to_csv(tmp, index=False)
    write_text(out / "ladder.md", markdown(table, trends, ladder, scale_line(runs, grid.get("baseline")), decisions))
    if args.figures:
        h = math.nan
        if args.data_meta:
            h = train_unigram_entropy(args.data_meta)["nats_per_token"]
        from workflows.plots.ladder import figures  # ladder_curves, compute_multiplier

        figures(table, points(runs, ladder), fit_lines(table, ladder), ladder, Path(args.figures), runs, h,
                grid.get("baseline"), grid.get("lr_protocol"))
    print(table[["variant", "rung", "loss", "multiplier", "multiplier_low", "multiplier_high", "r2"]].to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
