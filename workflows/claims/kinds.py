"""Evaluator kinds: each turns the evidence into effects with 95% CIs (``Measure``s) for one check.

One registry, ``KINDS``, in the shape of the ``models/`` registries: a kind's registry keys, its unit and
its function are declared together by ``@kind``; the registry loader validates checks against it, and a new
kind is one decorated function here. Intervals (``workflows.analysis.stats``): a Student-t interval over seeds for
means (over the seed-paired differences where both sides share seeds, Welch's t where none is shared; on
the log scale for ratios); Bonferroni-adjusted per-depth t intervals for a probe value reduced over depths;
the union of a jackknife t interval and a BCa bootstrap over seeds for statistics of seed-mean curves
(LR sensitivity, highest stable LR, spread); Wilson intervals for divergence fractions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from workflows.analysis import selection, stats
from workflows.analysis.scale import human, scale_of
from workflows.grid.ladder import horizon_arm
from .evidence import Evidence, NotRun
from .verdict import Measure

PAIRED = {"at", "lr_min", "lr_max", "expect", "device"}  # (+ primary and engaged: every kind, registry.COMMON_KEYS)
GPU_NAME = re.compile(r"NVIDIA|Tesla|GeForce|Quadro|RTX|Radeon|Instinct|\bH100\b|\bH200\b|\bA100\b", re.I)


@dataclass(frozen=True)
class Kind:
    name: str
    required: frozenset
    optional: frozenset
    unit: str
    fn: Callable[[Evidence, dict], list]
    log_scale: bool = False  # the CI is a t interval of a mean log ratio
    metric: str = ""  # the run metric it reads when the check names none


KINDS: dict[str, Kind] = {}


def kind(name: str, required=(), optional=(), unit: str = "", log_scale: bool = False, metric: str = "",
         defaults: dict | None = None):
    """Register ``fn`` as evaluator kind ``name``; ``defaults`` are check fields it fixes (e.g. the metric)."""
    def deco(fn):
        run = (lambda ev, c: fn(ev, {**(defaults or {}), **c})) if defaults else fn
        KINDS[name] = Kind(name, frozenset(required), frozenset(optional), unit, run, log_scale, metric)
        return fn
    return deco


def _need(m: Measure, what: str, have: int, need: int) -> None:
    if have < need:
        m.short.append(f"{have} {what}, needs ≥ {need}")


def _device_check(m: Measure, c: dict, *frames) -> None:
    if c.get("device") == "cuda":
        names = {str(x) for f in frames if "device" in f.columns for x in f.device.dropna()}
        if not names or not all(GPU_NAME.search(n) for n in names):
            m.short.append("judged on GPU measurements only (config/paper.yaml); these ran on "
                           + (sorted(names)[0] if names else "an unknown device"))


class Paired(NamedTuple):
    """A check's two arms at the LRs it compares them at (``_paired_values``)."""
    treatment: pd.DataFrame  # the treatment's runs
    control: pd.DataFrame  # the control's runs
    treatment_values: dict  # {seed key: metric value} at the compared LR
    control_values: dict
    lr_choice: str  # how the LR was chosen (assigned, shared, cross-fitted)
    degenerate: str | None  # why an arm is degenerate (not judged), or None
    lrs: tuple  # ({seed key: LR} of the treatment, of the control)


def _paired_values(ev: Evidence, c: dict, metric: str, transform=None, diverged_only: bool = False) -> Paired:
    """The check's treatment and control runs and their per-seed values of ``metric`` at the LRs it compares."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    if metric not in t.columns:
        raise NotRun(f"runs.parquet has no column {metric!r}")
    (lt, how), (lk, _) = ev.lrs_for(t, c), ev.lrs_for(k, c)
    if diverged_only:
        div = selection.values_at(t, lt, "diverged")
        lt = {key: lr for key, lr in lt.items() if div.get(key)}

    def vals(r, lrs):
        v = selection.values_at(r, lrs, metric)
        return {key: abs(x) for key, x in v.items()} if transform == "abs" else v

    degenerate = ev.degenerate_runs(t, lt) or ev.degenerate_runs(k, lk)
    return Paired(t, k, vals(t, lt), vals(k, lk), how, degenerate, (lt, lk))


def _lr_note(c: dict, lts: tuple) -> str:
    if c.get("at", "shared") != "best":
        return ""
    lt, lk = lts

    def show(d):
        return "/".join(f"{lr:g}" for lr in dict.fromkeys(d[s] for s in sorted(d))) or "—"
    return f"LRs by fold {show(lt)} vs {show(lk)}"


CROSSFIT_NOTE = "cross-fitted LRs: t interval over seeds, standard error x sqrt(2) for the two folds' correlation"


@kind("metric_delta", required={"treatment", "control"}, optional=PAIRED | {"metric"})
def k_metric_delta(ev: Evidence, c: dict) -> list[Measure]:
    """Mean of treatment − control of a run metric, paired by seed at the compared LRs (``at``: shared or
    each (seed, LR): Student-t interval over the paired differences, Welch's t interval when no pair is
    shared (``stats.paired_delta``); best: cross-fitted, the t interval over the cross-fitted differences with its
    standard error ×√2 for the folds' correlation (``selection.crossfit_delta``)."""
    metric = c.get("metric", "final_val_loss")
    t, k, tv, kv, how, degenerate, lts = _paired_values(ev, c, metric)
    engaged, idle = ev.engagement(c, t, k, lts)
    m = Measure(lr_choice=how, not_judged=degenerate or idle, engagement=engaged)
    if "cross-fitted" in how:
        d, lo, hi, npair = selection.crossfit_delta(t, k, metric)
        m.notes.append(CROSSFIT_NOTE)
    else:
        d, lo, hi, npair = stats.paired_delta(tv, kv)
    if npair == 0 and np.isfinite(d):
        m.notes.append("no shared seeds: unpaired difference of means, Welch's t interval")
        npair = min(sum(np.isfinite(list(tv.values()))), sum(np.isfinite(list(kv.values()))))
    m.effect, m.lo, m.hi, m.n = d, lo, hi, npair
    dropped = sum(not np.isfinite(v) for v in [*tv.values(), *kv.values()])
    if dropped:
        m.notes.append(f"{dropped} run(s) without a finite {metric} (diverged) left out")
    _need(m, "seed pairs with finite values", npair, c["min_seeds"])
    _need(m, "LRs", min(t.lr.nunique(), k.lr.nunique()), c["min_lrs"])
    _device_check(m, c, t, k)
    if note := _lr_note(c, lts):
        m.notes.append(note)
    m.params, m.tokens = scale_of(t, k)
    return [m]


kind("loss_delta", required={"treatment", "control"}, optional=PAIRED, unit="nats", metric="final_val_loss",
     defaults={"metric": "final_val_loss"})(k_metric_delta)


def _ratio(tv: dict, kv: dict, c: dict, m: Measure) -> None:
    shared = sorted(set(tv) & set(kv))
    good = [s for s in shared if np.isfinite(tv[s]) and np.isfinite(kv[s]) and tv[s] > 0 and kv[s] > 0]
    logs = [math.log(tv[s] / kv[s]) for s in good]
    m.n = len({s[0] if isinstance(s, tuple) else s for s in good})
    if logs:
        if c.get("deterministic"):
            m.effect, m.lo, m.hi = math.exp(float(np.mean(logs))), math.exp(min(logs)), math.exp(max(logs))
        else:
            m.effect, m.lo, m.hi = stats.ratio_ci([tv[s] / kv[s] for s in good])
    if len(shared) > len(logs):
        m.notes.append(f"{len(shared) - len(logs)} pair(s) without a finite positive value")
    if len(logs) == 1 and not c.get("deterministic"):
        m.short.append("1 pair: no CI")


@kind("metric_ratio", required={"treatment", "control", "metric"}, optional=PAIRED | {"where", "transform"},
      unit="ratio", log_scale=True)
def k_metric_ratio(ev: Evidence, c: dict) -> list[Measure]:
    """Geometric mean of treatment / control over the pairs (by seed at the compared LRs, or by (seed, LR)
    with at: each): the exponentiated Student-t interval of the mean log ratio; deterministic checks:
    [min, max] of the ratios."""
    metric = c["metric"]
    t, k, tv, kv, how, degenerate, lts = _paired_values(ev, c, metric, c.get("transform"),
                                                        c.get("where") == "diverged")
    engaged, idle = ev.engagement(c, t, k, lts)
    m = Measure(lr_choice=how, not_judged="" if c.get("deterministic") else (degenerate or idle),
                engagement=engaged)
    _ratio(tv, kv, c, m)
    if "cross-fitted" in how and not c.get("deterministic") and c.get("where") != "diverged":
        e, lo, hi, m.n = selection.crossfit_delta(t, k, metric, log=True, transform=c.get("transform"))
        m.effect, m.lo, m.hi = (math.exp(x) if np.isfinite(x) else math.nan for x in (e, lo, hi))
        m.notes.append(CROSSFIT_NOTE)
    if c.get("where") == "diverged" and not tv:
        m.short.append(f"no diverged run of {c['treatment']!r}")
    _need(m, "seeds with finite pairs", m.n, 1 if c.get("deterministic") else c["min_seeds"])
    _need(m, "LRs", min(t.lr.nunique(), k.lr.nunique()), c["min_lrs"])
    _device_check(m, c, t, k)
    m.params, m.tokens = scale_of(t, k)
    return [m]


@kind("speed_ratio", required={"treatment", "control"}, optional={"expect", "device"}, unit="ratio",
      log_scale=True, metric="tokens_per_s")
def k_speed_ratio(ev: Evidence, c: dict) -> list[Measure]:
    """Throughput treatment / control. Judged only on measurements taken side by side in one process
    (``Evidence.speed``: the same reps alternating between the variants, paired by rep; exponentiated
    t interval of the mean log ratio), and only when nothing else computed on their GPU: a bench whose
    ``gpu_neighbours`` (other compute processes on the GPU, sampled each rep) is above 0 took turns with
    them, and is reported, never judged (NaN: the CPU, or no process listing). Grid runs' tokens/s come from
    jobs that shared the cores, or a GPU (runs.csv's ``gpu_neighbours``), with other jobs, so their ratio is
    reported and never judged."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    m = Measure(lr_choice="throughput does not depend on the LR")
    sp = ev.speed
    if sp is not None and {c["treatment"], c["control"]} <= set(sp.variant):
        a, b = sp[sp.variant == c["treatment"]], sp[sp.variant == c["control"]]
        _ratio(dict(zip(a.rep, a.tokens_per_s.astype(float))), dict(zip(b.rep, b.tokens_per_s.astype(float))), c, m)
        m.notes.append(f"side-by-side bench, {m.n} alternating reps")
        _need(m, "reps", m.n, c["min_seeds"])
        _device_check(m, c, a, b)
        if "gpu_neighbours" in sp.columns:
            seen = pd.concat([a.gpu_neighbours, b.gpu_neighbours]).astype(float)
            seen = seen[np.isfinite(seen)]
            if len(seen) and seen.max() > 0:
                m.not_judged = (f"not judged: up to {int(seen.max())} other compute process(es) shared the GPU during "
                                "the side-by-side bench (a shared GPU's throughput: reported, never judged)")
        m.params, m.tokens = scale_of(t, k)
        return [m]
    tv = {(int(s), float(lr)): v for s, lr, v in zip(t.seed, t.lr, t.tokens_per_s.astype(float))}
    kv = {(int(s), float(lr)): v for s, lr, v in zip(k.seed, k.lr, k.tokens_per_s.astype(float))}
    _ratio(tv, kv, c, m)
    m.not_judged = ("not judged: tokens/s of grid jobs that shared the cores (or a GPU) with other jobs (reported, "
                    "never judged); the side-by-side speed bench judges it")
    m.params, m.tokens = scale_of(t, k)
    return [m]


DECODE_MAX_SHARED = 0.1  # a CPU decode bench is judged only when other processes took at most 10% of the machine


@kind("decode_ratio", required={"treatment", "control", "batch_size", "context"}, optional={"device", "max_shared"},
      unit="ratio", log_scale=True, metric="tokens_per_s")
def k_decode_ratio(ev: Evidence, c: dict) -> list[Measure]:
    """Decode tokens/s of attention arm ``treatment`` / arm ``control`` (mha, gqa, mqa of workflows/bench/decode.py)
    at one batch size and context, from the side-by-side decode bench (``ev.tables["decode"]``): the arms
    ran in turn within each rep, so they pair by rep; geometric-mean ratio with the exponentiated t interval
    of the mean log ratio (``stats.ratio_ci``). As for the speed checks, only a bench that had the cores to
    itself is judged: on a CPU, one where other processes (or a VM's hypervisor) took more than
    ``max_shared`` (default 10%) of the machine's CPU time during the bench is reported and not judged, and
    so is one that could not tell (no ``other_cpu_share``)."""
    d = ev.table("decode")
    B, T = int(c["batch_size"]), int(c["context"])
    cell = d[(d.batch_size == B) & (d.context == T)]
    if cell.empty:
        cells = sorted({(int(b), int(t)) for b, t in zip(d.batch_size, d.context)})
        raise NotRun(f"the decode table has no batch_size={B}, context={T}; it has (batch, context) {cells}")
    missing = [a for a in (c["treatment"], c["control"]) if a not in set(cell.arm)]
    if missing:
        raise NotRun(f"the decode table has no arm {missing[0]!r}; it has {sorted(set(cell.arm))}")
    a, b = cell[cell.arm == c["treatment"]], cell[cell.arm == c["control"]]
    m = Measure(lr_choice="decoding speed does not depend on the LR")
    _ratio(dict(zip(a.rep, a.tokens_per_s.astype(float))), dict(zip(b.rep, b.tokens_per_s.astype(float))), c, m)
    threads = sorted({int(x) for x in cell.threads}) if "threads" in cell.columns else []
    m.notes.append(f"side-by-side decode bench, {m.n} alternating reps at batch {B}, context {T}"
                   + (f", {threads[0]} torch thread(s)" if len(threads) == 1 else ""))
    _need(m, "reps", m.n, c["min_seeds"])
    _device_check(m, c, a, b)
    devices = {str(x) for x in cell.device.dropna()} if "device" in cell.columns else set()
    if not (devices and all(GPU_NAME.search(n) for n in devices)):  # a CPU bench: did it have the cores alone?
        limit = float(c.get("max_shared", DECODE_MAX_SHARED))
        shared = cell.other_cpu_share.astype(float).max() if "other_cpu_share" in cell.columns else math.nan
        if not np.isfinite(shared):
            m.not_judged = "not judged: the decode bench did not record whether other processes shared the CPU"
        elif shared > limit:
            m.not_judged = (f"not judged: other processes took {shared:.0%} of the CPU time during the decode bench "
                            f"(> {limit:.0%}: shared cores; reported, never judged)")
    params = sorted({int(x) for x in b.params}) if "params" in b.columns else []
    m.params = human(params[0]) if params else ""
    return [m]


@kind("divergence_or_worse", required={"treatment", "control"}, optional={"worse_by", "lr_min", "lr_max", "expect"},
      unit="fraction")
def k_divergence_or_worse(ev: Evidence, c: dict) -> list[Measure]:
    """Share of (seed, LR) pairs where the treatment diverged or ended ≥ worse_by nats worse; Wilson interval."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    kk = {(int(r.seed), float(r.lr)): r for r in k.itertuples()}
    bad, n, seeds = 0, 0, set()
    for r in t.itertuples():
        key = (int(r.seed), float(r.lr))
        if key not in kk:
            continue
        ctl = kk[key]
        n += 1
        seeds.add(key[0])
        worse = (not bool(r.diverged) and not bool(ctl.diverged) and np.isfinite(r.final_val_loss)
                 and r.final_val_loss - ctl.final_val_loss >= float(c.get("worse_by", 0.0)))
        bad += bool(r.diverged) or bool(worse)
    m = Measure(n=len(seeds), lr_choice="every shared (seed, LR)")
    if n:
        m.effect = bad / n
        m.lo, m.hi = stats.wilson(bad, n)
        m.notes.append(f"{bad}/{n} (seed, LR) pairs diverged or ≥ {c.get('worse_by', 0.0):g} nats worse")
    _need(m, "seeds", len(seeds), c["min_seeds"])
    _need(m, "LRs", len({key[1] for key in kk}), c["min_lrs"])
    m.params, m.tokens = scale_of(t, k)
    return [m]


@kind("divergence_delta", required={"treatment", "control"}, optional={"lr_min", "lr_max", "expect"},
      unit="fraction")
def k_divergence_delta(ev: Evidence, c: dict) -> list[Measure]:
    """Divergence rate treatment − control over the LRs both arms ran (a matched range: an arm run at more or
    higher LRs is not compared on them), clustered by seed: per seed, the share of its runs at those LRs that
    diverged, paired by seed, with a Student-t interval over the seeds (the runs of one seed share its data
    order and init, so they are not independent trials). Not judged when no run of either arm diverged there:
    0 vs 0 cannot tell the arms apart, and its interval would "hold" any band by design."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    lrs = sorted(set(map(float, t.lr)) & set(map(float, k.lr)))
    t, k = t[t.lr.astype(float).isin(lrs)], k[k.lr.astype(float).isin(lrs)]
    m = Measure(lr_choice=f"the LRs both arms ran: {', '.join(f'{x:g}' for x in lrs) or 'none'}")
    if not lrs:
        raise NotRun(f"{c['treatment']!r} and {c['control']!r} share no LR")
    tv = {int(s): float(g.diverged.astype(float).mean()) for s, g in t.groupby("seed")}
    kv = {int(s): float(g.diverged.astype(float).mean()) for s, g in k.groupby("seed")}
    m.effect, m.lo, m.hi, m.n = stats.paired_delta(tv, kv)
    k1, n1, k2, n2 = int(t.diverged.sum()), len(t), int(k.diverged.sum()), len(k)
    m.notes.append(f"{k1}/{n1} vs {k2}/{n2} runs diverged; seed-clustered")
    if k1 + k2 == 0:
        m.not_judged = (f"not judged: no run of either arm diverged at the matched LRs ({k1}/{n1} vs {k2}/{n2}): "
                        "the check cannot tell the arms apart")
    _need(m, "seeds", m.n, c["min_seeds"])
    m.params, m.tokens = scale_of(t, k)
    return [m]


def _seed_lr_matrix(t: pd.DataFrame, k: pd.DataFrame, col_fn):
    """(seeds, lrs, T, K): col_fn(runs) values on the seeds × LRs both variants ran."""
    lrs = sorted(set(t.lr) & set(k.lr))
    seeds = sorted(s for s in set(t.seed) & set(k.seed)
                   if all(((t.seed == s) & (t.lr == lr)).any() and ((k.seed == s) & (k.lr == lr)).any() for lr in lrs))

    def mat(r):
        r = r.assign(_v=col_fn(r))
        p = r.pivot_table(index="seed", columns="lr", values="_v", aggfunc="mean")
        return p.reindex(index=seeds, columns=lrs).to_numpy(dtype=float)

    return seeds, lrs, mat(t), mat(k)


@kind("lr_sensitivity", required={"treatment", "control"}, optional={"lr_min", "lr_max", "expect"},
      unit="nats (LRS)")
def k_lr_sensitivity(ev: Evidence, c: dict) -> list[Measure]:
    """LRS(treatment) − LRS(control) over the shared LR grid, LRS computed on the seed-mean capped-score
    curves (Wortsman et al. 2023). Not a mean of per-seed values: interval = union of the jackknife
    Student-t interval and the BCa bootstrap over the shared seeds (``stats.seed_ci``)."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    seeds, lrs, T, K = _seed_lr_matrix(t, k, selection.capped_score)
    l0t, l0k = float(t.init_loss.iloc[0]), float(k.init_loss.iloc[0])

    def lrs_of(M, l0, ix):
        return stats.lr_sensitivity(dict(zip(lrs, M[ix].mean(axis=0))), l0)

    def effect(ix):
        return lrs_of(T, l0t, ix) - lrs_of(K, l0k, ix)

    m = Measure(n=len(seeds), lr_choice="over the whole shared LR grid")
    if seeds and lrs:
        allix = np.arange(len(seeds))
        m.effect = effect(allix)
        m.lo, m.hi = stats.seed_ci(len(seeds), effect)
        m.notes.append(f"LRS {lrs_of(T, l0t, allix):.3f} vs {lrs_of(K, l0k, allix):.3f} over {len(lrs)} LRs")
    _need(m, "shared seeds", len(seeds), c["min_seeds"])
    _need(m, "shared LRs", len(lrs), c["min_lrs"])
    m.params, m.tokens = scale_of(t, k)
    return [m]


@kind("max_stable_lr", required={"treatment", "control"}, optional={"lr_min", "lr_max", "expect"},
      unit="grid steps")
def k_max_stable_lr(ev: Evidence, c: dict) -> list[Measure]:
    """Grid steps between the largest LRs at which no seed diverged: a property of the set of seeds, so the
    interval is the union of the jackknife t interval and the BCa bootstrap over the shared seeds."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    seeds, lrs, T, K = _seed_lr_matrix(t, k, lambda r: r.diverged.astype(float))

    def top(D, ix):
        ok = np.where(D[ix].sum(axis=0) == 0)[0]
        return int(ok.max()) if len(ok) else -1

    def effect(ix):
        return float(top(T, ix) - top(K, ix))

    m = Measure(n=len(seeds), lr_choice="over the whole shared LR grid")
    if seeds and lrs:
        allix = np.arange(len(seeds))
        m.effect = effect(allix)
        m.lo, m.hi = stats.seed_ci(len(seeds), effect)
        name = lambda i: f"{lrs[i]:g}" if i >= 0 else "none"  # noqa: E731
        m.notes.append(f"highest stable LR {name(top(T, allix))} vs {name(top(K, allix))}")
        if top(K, allix) == len(lrs) - 1:
            m.short.append(f"{c['control']!r} never diverged up to the grid's largest LR {lrs[-1]:g} "
                           "(censored: extend the LR grid)")
    _need(m, "shared seeds", len(seeds), c["min_seeds"])
    _need(m, "shared LRs", len(lrs), c["min_lrs"])
    m.params, m.tokens = scale_of(t, k)
    return [m]


@kind("spread", required={"variants"}, optional={"at", "lr_min", "lr_max", "expect"}, unit="relative")
def k_spread(ev: Evidence, c: dict) -> list[Measure]:
    """max/min − 1 of the variants' seed-mean capped scores at their compared LRs (``at``; a cross-fitted
    best LR gives each seed the LR chosen on the other fold): a ratio of extremes of seed means, so the
    interval is the union of the jackknife t interval and the BCa bootstrap over the shared seeds."""
    frames = [ev.variant(v, c) for v in c["variants"]]
    chosen = [ev.lrs_for(f, c) for f in frames]
    how = chosen[0][1]
    if "cross-fitted" in how:  # the LR choice is re-done inside every resample (selection-aware interval)
        seeds = sorted(set.intersection(*(set(int(x) for x in f.seed) for f in frames)))
        mats = [selection.seed_lr_matrices(f, seeds, "final_val_loss")[2] for f in frames]

        def effect(ix):
            cols = [selection.crossfit_values(sc, sc, ix) for sc in mats]
            mean = np.array([x[np.isfinite(x)].mean() if np.isfinite(x).any() else math.nan for x in cols])
            return float(mean.max() / mean.min() - 1) if np.isfinite(mean).all() else math.nan
    else:
        scores = [selection.values_at(f.assign(_score=selection.capped_score(f)), lrs, "_score")
                  for f, (lrs, _) in zip(frames, chosen)]
        seeds = sorted(set.intersection(*(set(s) for s in scores)))
        M = np.array([[scores[j][s] for j in range(len(frames))] for s in seeds])

        def effect(ix):
            mean = M[ix].mean(axis=0)
            return float(mean.max() / mean.min() - 1)

    m = Measure(n=len(seeds), lr_choice=how)
    if seeds:
        m.effect = effect(np.arange(len(seeds)))
        m.lo, m.hi = stats.seed_ci(len(seeds), effect)
        if {"d_model", "n_layers"} <= set(frames[0].columns):
            m.notes.append("d_model/n_layers " + ", ".join(f"{int(f.d_model.iloc[0]) / int(f.n_layers.iloc[0]):.0f}"
                                                          for f in frames))
    _need(m, "shared seeds", len(seeds), c["min_seeds"])
    m.params, m.tokens = scale_of(*frames)
    return [m]


@kind("probe", required={"probe", "arm", "metric"}, optional={"by", "reduce", "stat", "required_depths"})
def k_probe(ev: Evidence, c: dict) -> list[Measure]:
    """A probe metric of one arm: per depth (by: depth) the mean over seeds with a Student-t interval;
    stat: loglog_slope, the mean of the per-seed slopes against depth with a t interval; reduce: max|min
    over depths of the seed means, Bonferroni-adjusted per-depth t intervals reduced the same way
    (``stats.extreme_mean_ci``). Deterministic checks: [min, max] of the values. An arm whose gradients or
    activations fell below the floors (``Evidence.degenerate_probe``) is not judged."""
    tab = ev.probe(c["probe"])
    tab = tab[tab.arm == c["arm"]]
    if tab.empty:
        raise NotRun(f"probe {c['probe']!r} has no arm {c['arm']!r}")
    rows = tab[tab.metric == c["metric"]]
    if rows.empty:
        raise NotRun(f"probe {c['probe']!r} wrote no metric {c['metric']!r}")
    depths = sorted(rows.depth.unique())
    params = f"{human(tab.params.min())}–{human(tab.params.max())}" if tab.params.nunique() > 1 \
        else human(tab.params.iloc[0])
    tokens = f"{human(tab.tokens.max())}/model"
    missing = sorted(set(c.get("required_depths") or []) - set(depths))

    def new(at_depths, **kw):
        m = Measure(params=params, tokens=tokens, lr_choice=_probe_phase(c["metric"]), **kw)
        if missing:
            m.short.append(f"probe ran L={depths}, the claim needs L={sorted(c['required_depths'])}")
        if not c.get("deterministic"):
            m.not_judged = ev.degenerate_probe(tab, at_depths)
        return m

    def summarise(values, m):
        v = [x for x in values if np.isfinite(x)]
        m.n = len(v)
        if len(v) < len(values):
            m.notes.append(f"{len(values) - len(v)} non-finite value(s)")
        if v:
            m.effect = float(np.mean(v))
            m.lo, m.hi = (min(v), max(v)) if c.get("deterministic") else stats.mean_ci(v)[1:]
        _need(m, "seeds with finite values", m.n, 1 if c.get("deterministic") else c["min_seeds"])
        return m

    if "by" in c:
        return [summarise(rows[rows.depth == d].value.tolist(), new([d], group=f"L={d}")) for d in depths]
    P = rows.pivot_table(index="seed", columns="depth", values="value", aggfunc="mean")
    if "stat" in c:  # log-log slope against depth, one per seed
        slopes = []
        for _, r in P.iterrows():
            ok = r[np.isfinite(r) & (r > 0)]
            slopes.append(float(np.polyfit(np.log(ok.index.astype(float)), np.log(ok.values), 1)[0])
                          if len(ok) >= 2 else math.nan)
        m = summarise(slopes, new(depths, group=f"L={depths[0]}–{depths[-1]}"))
        _need(m, "depths", len(depths), 2)
        return [m]
    if "reduce" in c:
        A = P.to_numpy(dtype=float)
        m = new(depths, group=f"{c['reduce']} over L={depths[0]}–{depths[-1]}", n=int(np.isfinite(A).all(axis=1).sum()))
        m.effect, lo, hi = stats.extreme_mean_ci(A, c["reduce"])
        m.lo, m.hi = (m.effect, m.effect) if c.get("deterministic") else (lo, hi)
        _need(m, "seeds", m.n, 1 if c.get("deterministic") else c["min_seeds"])
        return [m]
    return [summarise(rows.value.tolist(), new(depths))]


@kind("scale_trend", required={"treatment", "control"}, optional={"fit"}, unit="Δln m / Δln C")
def k_scale_trend(ev: Evidence, c: dict) -> list[Measure]:
    """Does an effect grow or shrink with scale: the slope of the compute multiplier's log against log compute
    over a ladder's rungs (``workflows.analysis.ladder.local_trend``: variants ``<arm>@<rung>``; per seed, its paired local
    multipliers against its own baseline, regressed on ln C; Student-t interval of the mean slope over seeds).
    > 0: the treatment gains on the control as compute grows; 0: a constant multiplier."""
    from workflows.analysis import ladder as lad

    if ev.runs is None or "rung" not in ev.runs.columns:
        raise NotRun("the grid has no ladder (config/ladder.yaml trains every variant at every rung)")
    runs = ev.runs[ev.runs.rung.notna()]
    arms = {a: runs[runs.variant.str.rsplit(lad.SEP, n=1).str[0] == a] for a in (c["control"], c["treatment"])}
    for a, r in arms.items():
        if r.empty:
            raise NotRun(f"the ladder has no variant {a!r}")
    rungs = (arms[c["control"]].groupby("rung").apply(lad.planned_compute, include_groups=False)
             .sort_values().index.tolist())
    # the control's training-length curve, where the ladder has one (grid.json's ladder.horizons)
    arm_of = runs.variant.str.rsplit(lad.SEP, n=1).str[0]
    horizons = {a: h for a, h in ev.horizons.items() if a == horizon_arm(c["control"], h) and (arm_of == a).any()}
    arms.update({a: runs[arm_of == a] for a in horizons})
    spec = {"baseline": c["control"], "arms": [c["control"], c["treatment"]], "fit": c.get("fit", "loglinear"),
            "rungs": [{"rung": r} for r in rungs], "horizons": horizons}
    both = pd.concat(arms.values())
    seeds = sorted(set(arms[c["control"]].seed) & set(arms[c["treatment"]].seed))
    both = both[both.seed.isin(seeds)]
    cs = lad.cells(both, spec, seeds)
    base = [cs[(c["control"], r)] for r in rungs if (c["control"], r) in cs]
    own = [cs[(c["treatment"], r)] for r in rungs if (c["treatment"], r) in cs]
    tr = lad.local_trend(own, base, seeds, lnm_of=lambda cell: lad.primary_log_multipliers(cell, cs, spec, seeds))
    pilot = ev.lr_protocol == "pilot"
    m = Measure(lr_choice="each (variant, rung) at the LR its pilot seeds chose" if pilot else
                "each seed at its cross-fitted LR per rung (the best LR of the other seeds)")
    m.effect, m.lo, m.hi, m.n = tr["slope"], tr["slope_low"], tr["slope_high"], tr["seeds"]
    curve = (f"its local slope on the baseline's training-length curve at the rung ({', '.join(horizons)})"
             if horizons else f"its local slope between {len(base)} baseline rungs")
    m.notes.append(f"paired local multipliers (each seed against its own baseline at the rung, over {curve}); "
                   f"per-seed slope over rungs {tr['rungs_used'] or '—'}")
    if tr.get("note"):
        m.notes.append(tr["note"])
    _need(m, "seeds", len(seeds), c["min_seeds"])
    _need(m, "rungs with a multiplier", tr["rungs"], 2)
    m.params, m.tokens = scale_of(*arms.values())
    return [m]


def _probe_phase(metric: str) -> str:
    return ("after the probe's AdamW steps (claims.probes.train_steps)" if metric.endswith("_trained")
            else "at init (no training)")


@kind("probe_delta", required={"probe", "arm", "control_arm", "metric"}, optional={"depth"})
def k_probe_delta(ev: Evidence, c: dict) -> list[Measure]:
    """A probe metric of one arm minus another's, paired by probe seed (every arm of a probe builds its models from
    the same seeds), over the rows of one depth (``depth``, default: the only one, or the mean per seed over
    depths); Student-t interval over the paired differences (``stats.paired_delta``)."""
    tab = ev.probe(c["probe"])

    def per_seed(arm):
        rows = tab[(tab.arm == arm) & (tab.metric == c["metric"])]
        if "depth" in c:
            rows = rows[rows.depth == int(c["depth"])]
        if rows.empty:
            raise NotRun(f"probe {c['probe']!r} has no metric {c['metric']!r} for arm {arm!r}"
                         + (f" at depth {c['depth']}" if "depth" in c else ""))
        return rows.groupby("seed").value.mean().astype(float).to_dict(), rows

    tv, tr = per_seed(c["arm"])
    kv, kr = per_seed(c["control_arm"])
    m = Measure(lr_choice=_probe_phase(c["metric"]))
    m.effect, m.lo, m.hi, m.n = stats.paired_delta(tv, kv)
    if m.n == 0:
        m.notes.append("no shared probe seeds: Welch's t interval")
    m.not_judged = ev.degenerate_probe(pd.concat([tr, kr]), sorted(set(tr.depth) | set(kr.depth)))
    _need(m, "seeds", min(len(tv), len(kv)), c["min_seeds"])
    both = pd.concat([tr, kr])
    m.params, m.tokens = human(both.params.max()), f"{human(both.tokens.max())}/model"
    return [m]


@kind("profile_share", required={"variant", "op_class", "stat"}, optional={"control"}, unit="ratio")
def k_profile_share(ev: Evidence, c: dict) -> list[Measure]:
    """An operator class's share of one training step (``Evidence.table('op_profile')``, workflows.bench.opprofile):
    stat ``time_over_flops`` — its time share over its FLOP share in ``variant``; ``time_share_ratio`` — its time
    share in ``variant`` over that in ``control``. One profiled pass per variant has no interval over seeds, so the
    value is reported and never judged."""
    tab = ev.table("op_profile")
    if c["stat"] not in ("time_over_flops", "time_share_ratio"):
        raise NotRun(f"stat={c['stat']!r}; choose time_over_flops or time_share_ratio")

    def row(v):
        r = tab[(tab.variant == v) & (tab["class"] == c["op_class"])]
        if r.empty:
            raise NotRun(f"the operator profile has no class {c['op_class']!r} for variant {v!r}")
        return r.iloc[0]

    r = row(c["variant"])
    m = Measure(lr_choice="one profiled training step (no LR dependence)", n=1)
    if c["stat"] == "time_over_flops":
        m.effect = float(r.time_share) / float(r.flop_share) if float(r.flop_share) > 0 else math.inf
        m.notes.append(f"time {100 * r.time_share:.1f}% vs FLOPs {100 * r.flop_share:.2f}% of the step")
    else:
        if "control" not in c:
            raise NotRun("stat time_share_ratio needs a control variant")
        k = row(c["control"])
        m.effect = float(r.time_share) / float(k.time_share) if float(k.time_share) > 0 else math.nan
        m.notes.append(f"time share {100 * r.time_share:.1f}% vs {100 * k.time_share:.1f}%")
    m.notes.append(f"device {r.device}, {int(r.threads)} thread(s), {int(r.steps)} profiled steps")
    m.not_judged = ("not judged: one profiled pass per variant, no interval over seeds or repetitions; the shares "
                    "are reported (results/op_profile.md)")
    m.params, m.tokens = human(float(r.params)), f"{human(float(r.tokens_per_step))}/step"
    return [m]
