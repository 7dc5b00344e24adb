"""The replication scorecard: published claims (config/claims.yaml) → measured effects and verdicts.

    python -m workflows.claims --registry config/claims.yaml --runs results/runs.parquet \\
        --grid results/grid.json --probes results/probes/*.parquet [--grids config/*.yaml] \\
        --csv results/claims.csv --md results/claims.md --figure figures/claims.png

For every check of every claim an evaluator *kind* (``KINDS``) turns the run table and the probe
tables into an effect size with a 95% CI (``Measure``), and one generic rule, ``judge``, turns the
effect, its CI, the check's threshold or interval and its minimum evidence into a verdict:

- ``holds``: the whole CI lies on the claimed side of the threshold (or inside the interval);
- ``contradicted``: the whole CI lies on the other side (or outside the interval);
- ``inconclusive``: the CI straddles a bound, or there is too little evidence (fewer seeds / LRs /
  depths than the check requires, no finite values, a GPU-only claim on CPU runs, a censored
  comparison);
- ``not run``: the grid lacks a variant the check compares (or a probe/arm), or a variant means
  something else in this grid (``expect``).

A claim holds when all its checks hold, is contradicted when any check is, is ``not run`` when all
its checks are, and is inconclusive otherwise.

Intervals (``workflows.stats``; each kind's docstring says which it uses), all 95%:

- a mean over seeds or over (seed, LR) pairs — metric/loss deltas, the mean log ratio of metric/speed
  ratios, probe values per depth, per-seed log-log slopes: Student-t interval over seeds, over the
  seed-paired differences where both sides share seeds (Welch's t interval where they share none);
- a probe value reduced over depths (max/min of the seed means): Bonferroni-adjusted per-depth
  Student-t intervals, reduced the same way;
- a statistic of seed-mean curves that does not split into per-seed values — LR-sensitivity
  difference, highest-stable-LR difference, spread: the union of a jackknife Student-t interval
  over seeds and a BCa bootstrap over seeds (fixed seed ``stats.BOOTSTRAP_SEED``);
- divergence fractions: Wilson score intervals (Newcombe's for a difference of two).

Nothing here is written by hand: the registry holds claims and thresholds, this module holds the
arithmetic.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats
from .io import atomic_path, write_csv, write_text
from .scale import add_subtitle, scale_line, scale_of
from .scale import human as _human

VERDICTS = ("holds", "contradicted", "inconclusive", "not run")
DIRECTIONS = ("above", "below", "at_least", "at_most")
GPU_NAME = re.compile(r"NVIDIA|Tesla|GeForce|Quadro|RTX|Radeon|Instinct|\bH100\b|\bH200\b|\bA100\b", re.I)


class RegistryError(ValueError):
    """The claims registry is malformed; the message names the claim, the check and the field."""


class NotRun(Exception):
    """The grid (or the probes) lacks what a check compares."""


# ------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------
COMMON_KEYS = {"id", "what", "kind", "interval", "direction", "threshold", "margin", "min_seeds", "min_lrs",
               "unit", "deterministic", "note"}
KIND_KEYS = {
    "metric_delta": ({"treatment", "control"}, {"metric", "at", "lr_min", "lr_max", "expect", "device"}),
    "loss_delta": ({"treatment", "control"}, {"at", "lr_min", "lr_max", "expect", "device"}),
    "divergence_or_worse": ({"treatment", "control"}, {"worse_by", "lr_min", "lr_max", "expect"}),
    "divergence_delta": ({"treatment", "control"}, {"lr_min", "lr_max", "expect"}),
    "lr_sensitivity": ({"treatment", "control"}, {"lr_min", "lr_max", "expect"}),
    "max_stable_lr": ({"treatment", "control"}, {"lr_min", "lr_max", "expect"}),
    "metric_ratio": ({"treatment", "control", "metric"},
                     {"at", "where", "transform", "lr_min", "lr_max", "expect", "device"}),
    "speed_ratio": ({"treatment", "control"}, {"at", "lr_min", "lr_max", "expect", "device"}),
    "spread": ({"variants"}, {"lr_min", "lr_max", "expect"}),
    "probe": ({"probe", "arm", "metric"}, {"by", "reduce", "stat", "required_depths"}),
}
DEFAULT_UNITS = {"metric_delta": "", "loss_delta": "nats", "divergence_or_worse": "fraction",
                 "divergence_delta": "fraction", "lr_sensitivity": "nats (LRS)", "max_stable_lr": "grid steps",
                 "metric_ratio": "ratio", "speed_ratio": "ratio", "spread": "relative", "probe": ""}


def _bound(x, where: str):
    if isinstance(x, str) and x.strip() in ("margin", "+margin", "-margin"):
        return x.strip()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RegistryError(f"{where}: {x!r} must be a number, 'margin' or '-margin'")
    return float(x)


def validate_check(c: dict, where: str, defaults: dict) -> dict:
    if not isinstance(c, dict):
        raise RegistryError(f"{where}: a check must be a mapping")
    kind = c.get("kind")
    if kind not in KIND_KEYS:
        raise RegistryError(f"{where}: kind={kind!r}; choose one of {sorted(KIND_KEYS)}")
    required, optional = KIND_KEYS[kind]
    missing = sorted(required - set(c))
    if missing:
        raise RegistryError(f"{where}: kind {kind!r} needs {missing}")
    unknown = sorted(set(c) - COMMON_KEYS - required - optional)
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {unknown} for kind {kind!r}; allowed: "
                            f"{sorted(COMMON_KEYS | required | optional)}")
    if not c.get("id") or not c.get("what"):
        raise RegistryError(f"{where}: a check needs an id and a 'what'")
    has_interval = "interval" in c
    has_direction = "direction" in c or "threshold" in c
    if has_interval == has_direction:
        raise RegistryError(f"{where}: give either interval: [lo, hi] or direction + threshold")
    out = {**defaults, **c, "unit": c.get("unit", DEFAULT_UNITS[kind])}
    if kind == "probe":
        out.pop("at", None)
    if has_interval:
        iv = c["interval"]
        if not isinstance(iv, list) or len(iv) != 2:
            raise RegistryError(f"{where}: interval must be [lo, hi]")
        out["interval"] = [_bound(iv[0], where), _bound(iv[1], where)]
        if all(isinstance(v, float) for v in out["interval"]) and out["interval"][0] > out["interval"][1]:
            raise RegistryError(f"{where}: interval {iv} has lo > hi")
    else:
        if c.get("direction") not in DIRECTIONS or "threshold" not in c:
            raise RegistryError(f"{where}: direction must be one of {list(DIRECTIONS)} with a threshold")
        out["threshold"] = _bound(c["threshold"], where)
    uses_margin = any(isinstance(v, str) for v in out.get("interval", [out.get("threshold")]))
    if uses_margin != ("margin" in c):
        raise RegistryError(f"{where}: 'margin' in a bound needs a margin: {{nats, sigmas}} (and vice versa)")
    if "margin" in c and (not isinstance(c["margin"], dict) or not set(c["margin"]) <= {"nats", "sigmas"}
                          or not c["margin"]):
        raise RegistryError(f"{where}: margin must be a mapping with nats and/or sigmas")
    if out.get("at", "best") not in ("best", "each"):
        raise RegistryError(f"{where}: at={out.get('at')!r}; choose 'best' or 'each'")
    if kind == "probe":
        modes = [k for k in ("by", "reduce", "stat") if k in c]
        if len(modes) > 1:
            raise RegistryError(f"{where}: give at most one of by / reduce / stat")
        if c.get("by", "depth") != "depth" or c.get("reduce", "max") not in ("max", "min") \
                or c.get("stat", "loglog_slope") != "loglog_slope":
            raise RegistryError(f"{where}: by: depth, reduce: max|min, stat: loglog_slope")
    if c.get("where") not in (None, "diverged"):
        raise RegistryError(f"{where}: where={c['where']!r}; only 'diverged' is supported")
    if c.get("transform") not in (None, "abs"):
        raise RegistryError(f"{where}: transform={c['transform']!r}; only 'abs' is supported")
    if c.get("device") not in (None, "cuda"):
        raise RegistryError(f"{where}: device={c['device']!r}; only 'cuda' is supported")
    for k in ("min_seeds", "min_lrs"):
        if not isinstance(out.get(k), int) or out[k] < 1:
            raise RegistryError(f"{where}: {k}={out.get(k)!r} must be a positive integer")
    return out


def load_registry(path_or_dict) -> dict:
    """Read and validate the registry; every check gets the defaults and a full id ('C1.a')."""
    if isinstance(path_or_dict, dict):
        reg = path_or_dict
    else:
        import yaml

        with open(path_or_dict) as f:
            reg = yaml.safe_load(f) or {}
    if not isinstance(reg.get("claims"), list) or not reg["claims"]:
        raise RegistryError("the registry needs a non-empty 'claims' list")
    defaults = {"min_seeds": 3, "min_lrs": 1, "at": "best", **(reg.get("defaults") or {})}
    probes = reg.get("probes") or {}
    seen, claims = set(), []
    for i, cl in enumerate(reg["claims"]):
        cid = cl.get("id") if isinstance(cl, dict) else None
        where = f"claim {cid or i}"
        if not cid or cid in seen:
            raise RegistryError(f"{where}: missing or duplicate id")
        seen.add(cid)
        for k in ("title", "source", "published", "checks"):
            if not cl.get(k):
                raise RegistryError(f"{where}: missing {k!r}")
        if not isinstance(cl["source"], dict) or not cl["source"].get("paper"):
            raise RegistryError(f"{where}: source must be a mapping with paper (and arxiv, where)")
        checks, ids = [], set()
        for c in cl["checks"]:
            w = f"{where} check {c.get('id') if isinstance(c, dict) else '?'}"
            c = validate_check(c, w, defaults)
            if c["id"] in ids:
                raise RegistryError(f"{w}: duplicate check id")
            ids.add(c["id"])
            if c["kind"] == "probe":
                arms = (probes.get(c["probe"]) or {}).get("arms") or {}
                if c["arm"] not in arms:
                    raise RegistryError(f"{w}: probe {c['probe']!r} has no arm {c['arm']!r} in the probes: section")
            c["full_id"] = f"{cid}.{c['id']}"
            checks.append(c)
        claims.append({**cl, "checks": checks})
    return {**reg, "claims": claims, "defaults": defaults, "probes": probes}


def check_variants(c: dict) -> list[str]:
    if c["kind"] == "probe":
        return []
    return list(c["variants"]) if c["kind"] == "spread" else [c["treatment"], c["control"]]


# ------------------------------------------------------------------------------------------------
# measures and the verdict rule
# ------------------------------------------------------------------------------------------------
@dataclass
class Measure:
    effect: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0
    group: str = ""
    sigma: float = math.nan  # seed-to-seed sd of the metric, for margin bounds
    short: list = field(default_factory=list)  # evidence shortfalls -> inconclusive
    notes: list = field(default_factory=list)
    params: str = ""
    tokens: str = ""


def resolve_bounds(c: dict, sigma: float) -> tuple[float, float, str]:
    """The 'holds' region (lo, hi) of a check with margins resolved, and the rule as text."""
    margin, mtext = math.nan, ""
    if "margin" in c:  # max(nats, sigmas × σ_seed); undefined (NaN) when σ is needed but unknown
        mg = c["margin"]
        parts = [float(mg["nats"])] if "nats" in mg else []
        texts = [_fmt(float(mg["nats"]))] if "nats" in mg else []
        if "sigmas" in mg:
            parts.append(float(mg["sigmas"]) * sigma)
            texts.append(f"{mg['sigmas']:g}σ")
        margin = max(parts) if all(np.isfinite(parts)) else math.nan
        mtext = f"max({', '.join(texts)})" if len(texts) > 1 else texts[0]
        if np.isfinite(margin):
            mtext += f" = {_fmt(margin)}"

    def val(b):
        if isinstance(b, str):
            return -margin if b.startswith("-") else margin
        return b

    def txt(b):
        if isinstance(b, str):
            return ("−" if b.startswith("-") else "") + (f"({mtext})" if "=" in mtext and b.startswith("-") else mtext)
        return _fmt(b)

    if "interval" in c:
        a, b = (val(x) for x in c["interval"])
        return a, b, f"in [{txt(c['interval'][0])}, {txt(c['interval'][1])}]"
    t = val(c["threshold"])
    sym = {"above": ">", "below": "<", "at_least": "≥", "at_most": "≤"}[c["direction"]]
    lo, hi = (t, math.inf) if c["direction"] in ("above", "at_least") else (-math.inf, t)
    return lo, hi, f"{sym} {txt(c['threshold'])}"


def judge(effect: float, lo: float, hi: float, c: dict, sigma: float = math.nan, short=()) -> tuple[str, str]:
    """THE verdict rule (every kind goes through here): (verdict, reason)."""
    if short:
        return "inconclusive", "too little evidence: " + "; ".join(short)
    if not all(np.isfinite(v) for v in (effect, lo, hi)):
        return "inconclusive", "no finite effect/CI"
    a, b, text = resolve_bounds(c, sigma)
    if math.isnan(a) or math.isnan(b):
        return "inconclusive", "threshold undefined (needs the seed-to-seed σ: ≥ 2 seeds per arm)"
    if "interval" in c:
        iv = f"[{_fmt(a)}, {_fmt(b)}]"
        if a <= lo and hi <= b:
            return "holds", f"CI inside {iv}"
        if hi < a or lo > b:
            return "contradicted", f"CI outside {iv}"
        return "inconclusive", f"CI straddles {iv}"
    t = a if c["direction"] in ("above", "at_least") else b
    d = c["direction"]
    ok = {"above": lo > t, "at_least": lo >= t, "below": hi < t, "at_most": hi <= t}[d]
    bad = {"above": hi <= t, "at_least": hi < t, "below": lo >= t, "at_most": lo > t}[d]
    sym = text.split(" ", 1)[0]
    if ok:
        return "holds", f"whole CI {sym} {_fmt(t)}"
    if bad:
        return "contradicted", f"whole CI on the other side of {_fmt(t)}"
    return "inconclusive", f"CI straddles {_fmt(t)}"


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its checks'."""
    if not verdicts:
        return "not run"
    if "contradicted" in verdicts:
        return "contradicted"
    if all(v == "holds" for v in verdicts):
        return "holds"
    if all(v == "not run" for v in verdicts):
        return "not run"
    return "inconclusive"


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    a = abs(x)
    if a < 1e-12:
        return "0"
    if a < 1e-3 or a >= 1e5:
        return f"{x:.2e}"
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.3f}"


# ------------------------------------------------------------------------------------------------
# evidence
# ------------------------------------------------------------------------------------------------
@dataclass
class Evidence:
    runs: pd.DataFrame | None
    probes: dict
    elsewhere: dict = field(default_factory=dict)  # variant -> grid files that define it

    def variant(self, v: str, c: dict) -> pd.DataFrame:
        """Runs of variant ``v`` within the check's LR range; NotRun if the grid lacks it."""
        if self.runs is None or v not in set(self.runs.variant):
            where = self.elsewhere.get(v)
            raise NotRun(f"the grid has no variant {v!r}" + (f" (defined in {', '.join(where)})" if where else ""))
        r = self.runs[self.runs.variant == v]
        for col, want in ((c.get("expect") or {}).get(v) or {}).items():
            if col not in r.columns:
                raise NotRun(f"runs.parquet has no column {col!r} to confirm {v!r}")
            have = r[col].tolist()
            if any(not _same(h, want) for h in have):
                raise NotRun(f"variant {v!r} has {col}={have[0]!r} in this grid, the check needs {want!r}")
        if "lr_min" in c:
            r = r[r.lr >= float(c["lr_min"]) * (1 - 1e-9)]
        if "lr_max" in c:
            r = r[r.lr <= float(c["lr_max"]) * (1 + 1e-9)]
        if r.empty:
            raise NotRun(f"variant {v!r} has no run with LR in the check's range")
        return r

    def probe(self, name: str) -> pd.DataFrame:
        if name not in self.probes:
            raise NotRun(f"no output of probe {name!r}")
        return self.probes[name]


def _same(have, want) -> bool:
    if want is None:  # null in the registry (e.g. grad_clip: off); tables hold it as NaN or None
        return have is None or (isinstance(have, float) and math.isnan(have))
    if isinstance(want, bool) or isinstance(have, (bool, np.bool_)):
        return isinstance(want, bool) and isinstance(have, (bool, np.bool_)) and bool(have) == want
    if isinstance(want, (int, float)):
        try:
            return math.isclose(float(have), float(want))
        except (TypeError, ValueError):
            return False
    return have == want


def score(r: pd.DataFrame) -> pd.Series:
    """Final loss with diverged runs counted as ℓ0 and capped at ℓ0 (Wortsman's LRS convention)."""
    bad = r.diverged.astype(bool) | r.final_val_loss.isna()
    return pd.Series(np.where(bad, r.init_loss, np.minimum(r.final_val_loss, r.init_loss)), index=r.index)


def best_lr(r: pd.DataFrame) -> float:
    s = r.assign(score=score(r)).groupby("lr").score.mean()
    return float(s.idxmin())


def _seed_sigma(*value_lists) -> float:
    v = [np.var([x for x in vals if np.isfinite(x)], ddof=1) for vals in value_lists
         if sum(np.isfinite(x) for x in vals) >= 2]
    return float(np.sqrt(np.mean(v))) if v else math.nan


def _need(m: Measure, what: str, have: int, need: int) -> None:
    if have < need:
        m.short.append(f"{have} {what}, needs ≥ {need}")


def _device_check(m: Measure, c: dict, *frames) -> None:
    if c.get("device") == "cuda":
        names = {str(x) for f in frames if "device" in f.columns for x in f.device.dropna()}
        if not names or not all(GPU_NAME.search(n) for n in names):
            m.short.append("speed judged on GPU runs only (config/paper.yaml); these ran on "
                           + (sorted(names)[0] if names else "an unknown device"))


def _seed_stat_ci(n: int, stat) -> tuple[float, float]:
    """95% interval of ``stat(seed_indices)``, a statistic of n seeds that is not a mean of per-seed values:
    the union of the jackknife Student-t interval and the BCa bootstrap over seeds (``stats.seed_ci``)."""
    return stats.seed_ci(n, stat)


# ------------------------------------------------------------------------------------------------
# evaluator kinds: each returns a list of Measures (one per group) or raises NotRun
# ------------------------------------------------------------------------------------------------
def _paired_values(ev: Evidence, c: dict, metric: str, transform=None):
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)

    if metric not in t.columns:
        raise NotRun(f"runs.parquet has no column {metric!r}")

    def values(r, diverged_only=False):
        if c.get("at", "best") == "best":
            r = r[r.lr == best_lr(r)]
        if diverged_only:
            r = r[r.diverged.astype(bool)]
        vals = r[metric].astype(float)
        if transform == "abs":
            vals = vals.abs()
        key = (lambda row: int(row.seed)) if c.get("at", "best") == "best" else (lambda row: (int(row.seed), float(row.lr)))
        return {key(row): v for row, v in zip(r.itertuples(), vals)}

    return t, k, values(t, c.get("where") == "diverged"), values(k)


def k_metric_delta(ev: Evidence, c: dict) -> list[Measure]:
    """Mean of treatment − control of a run metric, paired by seed (at: best, each side at its own best LR)
    or by (seed, LR) (at: each); Student-t interval over the paired differences, Welch's t interval over
    the two sides when no pair is shared (``stats.paired_delta``)."""
    metric = c.get("metric", "final_val_loss")
    t, k, tv, kv = _paired_values(ev, c, metric)
    m = Measure()
    d, lo, hi, npair = stats.paired_delta(tv, kv)
    if npair == 0 and np.isfinite(d):
        m.notes.append("no shared seeds: unpaired difference of means, Welch's t interval")
        npair = min(sum(np.isfinite(list(tv.values()))), sum(np.isfinite(list(kv.values()))))
    m.effect, m.lo, m.hi, m.n = d, lo, hi, npair
    m.sigma = _seed_sigma(list(tv.values()), list(kv.values()))
    dropped = sum(not np.isfinite(v) for v in [*tv.values(), *kv.values()])
    if dropped:
        m.notes.append(f"{dropped} run(s) without a finite {metric} (diverged) left out")
    _need(m, "seed pairs with finite values", npair, c["min_seeds"])
    _need(m, "LRs", min(t.lr.nunique(), k.lr.nunique()), c["min_lrs"])
    _device_check(m, c, t, k)
    if c.get("at", "best") == "best":
        m.notes.append(f"best LR {best_lr(t):g} vs {best_lr(k):g}")
    m.params, m.tokens = scale_of(t, k)
    return [m]


def k_metric_ratio(ev: Evidence, c: dict) -> list[Measure]:
    """Geometric mean of treatment / control over the pairs (by seed, or by (seed, LR) with at: each): the
    exponentiated Student-t interval of the mean log ratio (a mean over pairs, so the t interval applies
    on the log scale); deterministic checks: [min, max] of the ratios."""
    metric = c.get("metric", "tokens_per_s")
    t, k, tv, kv = _paired_values(ev, c, metric, c.get("transform"))
    shared = sorted(set(tv) & set(kv))
    good = [s for s in shared if np.isfinite(tv[s]) and np.isfinite(kv[s]) and tv[s] > 0 and kv[s] > 0]
    logs = [math.log(tv[s] / kv[s]) for s in good]
    m = Measure(n=len({s[0] if isinstance(s, tuple) else s for s in good}))
    if logs:
        m.effect = math.exp(float(np.mean(logs)))
        if c.get("deterministic"):
            m.lo, m.hi = math.exp(min(logs)), math.exp(max(logs))
        else:
            _, lo, hi = stats.mean_ci(logs)
            m.lo, m.hi = math.exp(lo), math.exp(hi)
    if c.get("where") == "diverged" and not tv:
        m.short.append(f"no diverged run of {c['treatment']!r}")
    if len(shared) > len(logs):
        m.notes.append(f"{len(shared) - len(logs)} pair(s) without a finite positive value")
    _need(m, "seeds with finite pairs", m.n, 1 if c.get("deterministic") else c["min_seeds"])
    _need(m, "LRs", min(t.lr.nunique(), k.lr.nunique()), c["min_lrs"])
    if len(logs) == 1 and not c.get("deterministic"):
        m.short.append("1 pair: no CI")
    _device_check(m, c, t, k)
    m.params, m.tokens = scale_of(t, k)
    return [m]


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
    m = Measure(n=len(seeds))
    if n:
        m.effect = bad / n
        m.lo, m.hi = stats.wilson(bad, n)
        m.notes.append(f"{bad}/{n} (seed, LR) pairs diverged or ≥ {c.get('worse_by', 0.0):g} nats worse")
    _need(m, "seeds", len(seeds), c["min_seeds"])
    _need(m, "LRs", len({key[1] for key in kk}), c["min_lrs"])
    m.params, m.tokens = scale_of(t, k)
    return [m]


def k_divergence_delta(ev: Evidence, c: dict) -> list[Measure]:
    """Divergence rate treatment − control over all runs; Newcombe's interval from the two Wilson intervals."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    k1, n1, k2, n2 = int(t.diverged.sum()), len(t), int(k.diverged.sum()), len(k)
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = stats.wilson(k1, n1), stats.wilson(k2, n2)
    d = p1 - p2  # Newcombe's hybrid score interval from the two Wilson intervals
    m = Measure(effect=d, lo=d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
                hi=d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2), n=min(t.seed.nunique(), k.seed.nunique()))
    m.notes.append(f"{k1}/{n1} vs {k2}/{n2} runs diverged")
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


def k_lr_sensitivity(ev: Evidence, c: dict) -> list[Measure]:
    """LRS(treatment) − LRS(control) over the shared LR grid, LRS computed on the seed-mean loss curves
    (Wortsman et al. 2023). The min over LRs and the cap at ℓ0 act on seed means, so the statistic does not
    split into per-seed values: interval = union of the jackknife Student-t interval and the BCa bootstrap
    over the shared seeds (``stats.seed_ci``)."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    seeds, lrs, T, K = _seed_lr_matrix(t, k, score)
    l0t, l0k = float(t.init_loss.iloc[0]), float(k.init_loss.iloc[0])

    def lrs_of(M, l0, ix):
        return stats.lr_sensitivity(dict(zip(lrs, M[ix].mean(axis=0))), l0)

    def effect(ix):
        return lrs_of(T, l0t, ix) - lrs_of(K, l0k, ix)

    m = Measure(n=len(seeds))
    if seeds and lrs:
        allix = np.arange(len(seeds))
        m.effect = effect(allix)
        m.lo, m.hi = _seed_stat_ci(len(seeds), effect)
        m.notes.append(f"LRS {lrs_of(T, l0t, allix):.3f} vs {lrs_of(K, l0k, allix):.3f} over {len(lrs)} LRs")
    _need(m, "shared seeds", len(seeds), c["min_seeds"])
    _need(m, "shared LRs", len(lrs), c["min_lrs"])
    m.params, m.tokens = scale_of(t, k)
    return [m]


def k_max_stable_lr(ev: Evidence, c: dict) -> list[Measure]:
    """Grid steps between the largest LRs at which no seed diverged. "No seed diverged" is a property of
    the set of seeds, not a per-seed value: interval = union of the jackknife Student-t interval and the
    BCa bootstrap over the shared seeds (``stats.seed_ci``); zero-width when every subset agrees."""
    t, k = ev.variant(c["treatment"], c), ev.variant(c["control"], c)
    seeds, lrs, T, K = _seed_lr_matrix(t, k, lambda r: r.diverged.astype(float))

    def top(D, ix):
        ok = np.where(D[ix].sum(axis=0) == 0)[0]
        return int(ok.max()) if len(ok) else -1

    def effect(ix):
        return float(top(T, ix) - top(K, ix))

    m = Measure(n=len(seeds))
    if seeds and lrs:
        allix = np.arange(len(seeds))
        m.effect = effect(allix)
        m.lo, m.hi = _seed_stat_ci(len(seeds), effect)
        name = lambda i: f"{lrs[i]:g}" if i >= 0 else "none"  # noqa: E731
        m.notes.append(f"highest stable LR {name(top(T, allix))} vs {name(top(K, allix))}")
        if top(K, allix) == len(lrs) - 1:
            m.short.append(f"{c['control']!r} never diverged up to the grid's largest LR {lrs[-1]:g} "
                           "(censored: extend the LR grid)")
    _need(m, "shared seeds", len(seeds), c["min_seeds"])
    _need(m, "shared LRs", len(lrs), c["min_lrs"])
    m.params, m.tokens = scale_of(t, k)
    return [m]


def k_spread(ev: Evidence, c: dict) -> list[Measure]:
    """max/min − 1 of the variants' seed-mean losses at their best LRs: a ratio of extremes of seed means,
    not a mean of per-seed values; interval = union of the jackknife Student-t interval and the BCa
    bootstrap over the shared seeds (``stats.seed_ci``)."""
    frames = [ev.variant(v, c) for v in c["variants"]]
    at = [f[f.lr == best_lr(f)] for f in frames]
    seeds = sorted(set.intersection(*(set(a.seed) for a in at)))
    M = np.array([[float(score(a)[a.seed == s].mean()) for a in at] for s in seeds])

    def effect(ix):
        mean = M[ix].mean(axis=0)
        return float(mean.max() / mean.min() - 1)

    m = Measure(n=len(seeds))
    if seeds:
        m.effect = effect(np.arange(len(seeds)))
        m.lo, m.hi = _seed_stat_ci(len(seeds), effect)
        if {"d_model", "n_layers"} <= set(frames[0].columns):
            m.notes.append("d_model/n_layers " + ", ".join(f"{int(f.d_model.iloc[0]) / int(f.n_layers.iloc[0]):.0f}"
                                                          for f in frames))
    _need(m, "shared seeds", len(seeds), c["min_seeds"])
    m.params, m.tokens = scale_of(*at)
    return [m]


def k_probe(ev: Evidence, c: dict) -> list[Measure]:
    """A probe metric of one arm: per depth (by: depth) or pooled, the mean over seeds with a Student-t
    interval; stat: loglog_slope, the mean of the per-seed slopes with a Student-t interval; reduce:
    max|min over depths of the seed means, with Bonferroni-adjusted per-depth t intervals reduced the
    same way (``stats.extreme_mean_ci``). Deterministic checks: [min, max] of the values."""
    tab = ev.probe(c["probe"])
    tab = tab[tab.arm == c["arm"]]
    if tab.empty:
        raise NotRun(f"probe {c['probe']!r} has no arm {c['arm']!r}")
    rows = tab[tab.metric == c["metric"]]
    if rows.empty:
        raise NotRun(f"probe {c['probe']!r} wrote no metric {c['metric']!r}")
    depths = sorted(rows.depth.unique())
    params = f"{_human(tab.params.min())}–{_human(tab.params.max())}" if tab.params.nunique() > 1 \
        else _human(tab.params.iloc[0])
    tokens = f"{_human(tab.tokens.max())}/model"
    missing = sorted(set(c.get("required_depths") or []) - set(depths))

    def new(**kw):
        m = Measure(params=params, tokens=tokens, **kw)
        if missing:
            m.short.append(f"probe ran L={depths}, the claim needs L={sorted(c['required_depths'])}")
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
        return [summarise(rows[rows.depth == d].value.tolist(), new(group=f"L={d}")) for d in depths]
    P = rows.pivot_table(index="seed", columns="depth", values="value", aggfunc="mean")
    if "stat" in c:  # log-log slope against depth, one per seed
        slopes = []
        for _, r in P.iterrows():
            ok = r[np.isfinite(r) & (r > 0)]
            slopes.append(float(np.polyfit(np.log(ok.index.astype(float)), np.log(ok.values), 1)[0])
                          if len(ok) >= 2 else math.nan)
        m = summarise(slopes, new(group=f"L={depths[0]}–{depths[-1]}"))
        _need(m, "depths", len(depths), 2)
        return [m]
    if "reduce" in c:
        A = P.to_numpy(dtype=float)
        m = new(group=f"{c['reduce']} over L={depths[0]}–{depths[-1]}", n=int(np.isfinite(A).all(axis=1).sum()))
        m.effect, lo, hi = stats.extreme_mean_ci(A, c["reduce"])
        m.lo, m.hi = (m.effect, m.effect) if c.get("deterministic") else (lo, hi)
        _need(m, "seeds", m.n, 1 if c.get("deterministic") else c["min_seeds"])
        return [m]
    return [summarise(rows.value.tolist(), new())]


KINDS = {
    "metric_delta": k_metric_delta,
    "loss_delta": lambda ev, c: k_metric_delta(ev, {**c, "metric": "final_val_loss"}),
    "divergence_or_worse": k_divergence_or_worse,
    "divergence_delta": k_divergence_delta,
    "lr_sensitivity": k_lr_sensitivity,
    "max_stable_lr": k_max_stable_lr,
    "metric_ratio": k_metric_ratio,
    "speed_ratio": lambda ev, c: k_metric_ratio(ev, {"at": "each", **c, "metric": "tokens_per_s"}),
    "spread": k_spread,
    "probe": k_probe,
}


# ------------------------------------------------------------------------------------------------
# the scorecard
# ------------------------------------------------------------------------------------------------
def _published(p) -> str:
    return "; ".join(map(str, p)) if isinstance(p, list) else str(p)


def _source(s: dict) -> str:
    out = s.get("paper", "")
    if s.get("arxiv"):
        out += f", arXiv:{s['arxiv']}"
    if s.get("where"):
        out += f", {s['where']}"
    return out


def evaluate(registry, ev: Evidence) -> pd.DataFrame:
    """One row per (check, group) with effect, CI, bounds, verdict and reason; claim verdicts joined."""
    reg = load_registry(registry)
    rows = []
    for cl in reg["claims"]:
        for c in cl["checks"]:
            base = {"claim": cl["id"], "check": c["full_id"], "title": cl["title"], "what": c["what"],
                    "kind": c["kind"], "source": _source(cl["source"]), "published": _published(cl["published"]),
                    "confidence": cl.get("confidence", ""), "claim_note": cl.get("note", ""),
                    "compares": (f"{c['probe']}:{c['arm']}" if c["kind"] == "probe"
                                 else " vs ".join(check_variants(c)) if c["kind"] == "spread"
                                 else f"{c['treatment']} vs {c['control']}"),
                    "metric": c.get("metric", {"loss_delta": "final_val_loss", "speed_ratio": "tokens_per_s"}
                                    .get(c["kind"], "")),
                    "unit": c["unit"]}
            try:
                measures = KINDS[c["kind"]](ev, c)
            except NotRun as e:
                a, b, text = resolve_bounds(c, math.nan)
                rows.append({**base, "group": "", "effect": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                             "n": 0, "rule": text, "holds_low": a, "holds_high": b, "verdict": "not run",
                             "reason": str(e), "notes": "", "params": "", "tokens": ""})
                continue
            for m in measures:
                verdict, why = judge(m.effect, m.lo, m.hi, c, m.sigma, m.short)
                a, b, text = resolve_bounds(c, m.sigma)
                rows.append({**base, "group": m.group, "effect": m.effect, "ci_low": m.lo, "ci_high": m.hi,
                             "n": m.n, "rule": text, "holds_low": a, "holds_high": b, "verdict": verdict,
                             "reason": why, "notes": "; ".join(m.notes), "params": m.params, "tokens": m.tokens})
    df = pd.DataFrame(rows)
    claim_verdict = {cid: combine(g.verdict.tolist()) for cid, g in df.groupby("claim", sort=False)}
    df.insert(1, "claim_verdict", df.claim.map(claim_verdict))
    return df


def _ci(r) -> str:
    if not np.isfinite(r.effect):
        return "—"
    s = _fmt(r.effect)
    if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
        s += f" [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
    return s + (f" {r.unit}" if r.unit and r.unit not in ("ratio",) else "×" if r.unit == "ratio" else "")


def markdown(df: pd.DataFrame, grid: dict | None, runs: pd.DataFrame | None) -> str:
    name = (grid or {}).get("name", "")
    lines = [f"# Replication scorecard{' — grid ' + repr(name) if name else ''}", ""]
    if runs is not None and len(runs):
        lines.append(f"{len(runs)} runs of {runs.variant.nunique()} variants, {runs.seed.nunique()} seed(s), "
                     f"LRs {sorted(runs.lr.unique().tolist())}; device: {', '.join(sorted(set(runs.device.astype(str))))}.")
    lines += [
        "Computed by `workflows/claims.py` from `runs.parquet` and `probes/*.parquet` against the registry "
        "`config/claims.yaml`; do not edit by hand. Effects are treatment − control (or treatment / control "
        "for ratios, geometric mean) with 95% CIs: a 95% Student-t interval over seeds for means (over the "
        "seed-paired differences where both sides share seeds, Welch's t interval where they share none; on "
        "the log scale for ratios); for a probe value reduced over depths, Bonferroni-adjusted per-depth t "
        "intervals; for LR sensitivity, highest stable LR and spread (statistics of seed-mean curves), the "
        "union of a jackknife Student-t interval and a BCa bootstrap over seeds "
        f"(seed {stats.BOOTSTRAP_SEED}); Wilson intervals for divergence fractions. A check "
        "**holds** when its whole CI is on the claimed side of the threshold, is **contradicted** when its whole "
        "CI is on the other side, and is **inconclusive** when the CI straddles it or the evidence is below the "
        "check's minimum (seeds, LRs, depths, GPU runs for speed); **not run**: the grid lacks a variant it "
        "compares. σ is the seed-to-seed standard deviation. Scale: parameters and training tokens per run "
        "(probes: per model); small-scale results need not transfer to the published scale.", "",
        "## Claims", ""]
    counts = df.groupby("claim", sort=False).verdict.apply(
        lambda v: ", ".join(f"{int((v == x).sum())} {x}" for x in VERDICTS if (v == x).any()))
    claims = df.drop_duplicates("claim")
    t = pd.DataFrame({"claim": claims.claim, "title": claims.title,
                      "verdict": claims.claim_verdict.map(lambda v: f"**{v}**"),
                      "checks": claims.claim.map(counts), "prior confidence at small scale": claims.confidence,
                      "note": claims.claim_note})
    lines += [t.to_markdown(index=False), "", "## Checks", ""]
    first = ~df.claim.duplicated()
    t = pd.DataFrame({
        "claim": np.where(first, df.claim, ""),
        "source": np.where(first, df.source, ""),
        "published": np.where(first, df.published, ""),
        "check": [c.split(".", 1)[1] + (f" ({g})" if g else "") for c, g in zip(df.check, df.group)],
        "what": df.what, "compares": df.compares,
        "measured effect [95% CI]": [_ci(r) for r in df.itertuples()],
        "threshold": df.rule, "verdict": df.verdict.map(lambda v: f"**{v}**"),
        "why": [r.reason + (f" ({r.notes})" if r.notes else "") for r in df.itertuples()],
        "scale (params · tokens)": [f"{p} · {t}" if p else "—" for p, t in zip(df.params, df.tokens)],
    })
    t = t.apply(lambda col: col.map(lambda x: x.replace("|", "\\|") if isinstance(x, str) else x))
    lines += [t.to_markdown(index=False), ""]
    left = df[(df.kind != "probe") & ((df.verdict == "not run")
                                      | df.reason.str.contains("too little evidence", regex=False))]
    if len(left):
        lines += ["## Not decided on this grid: left to config/paper.yaml", "",
                  "These checks need variants, seeds, LRs or GPU runs this grid does not have. "
                  "`config/paper.yaml` (3 seeds, Wortsman's 7-point LR grid, every claim arm, GPU) has them: "
                  "`snakemake --configfile config/paper.yaml`.", ""]
        for r in left.itertuples():
            lines.append(f"- {r.check}{' (' + r.group + ')' if r.group else ''} — {r.what}: {r.reason}")
        lines.append("")
    return "\n".join(lines)


def figure(df: pd.DataFrame, out_png: Path, out_pdf: Path | None = None, runs: pd.DataFrame | None = None,
           baseline: str | None = None) -> None:
    """Write ``forest_figure`` as PNG (and PDF)."""
    import matplotlib.pyplot as plt

    fig = forest_figure(df, runs, baseline)
    for path, fmt in ((out_png, "png"), (out_pdf, "pdf")):
        if path is None:
            continue
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
    plt.close(fig)


def forest_figure(df: pd.DataFrame, runs: pd.DataFrame | None = None, baseline: str | None = None):
    """Forest plot: each check's effect and 95% CI against its 'holds' region, one panel per unit; the
    subtitle states the scale of ``runs`` (``scale.scale_line``: params, tokens per run, seeds, device)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    colors = {"holds": "#1a9850", "contradicted": "#d73027", "inconclusive": "#7f7f7f"}
    shown = df[df.verdict != "not run"].copy()
    shown["label"] = [f"{c} {g}".strip() + f"  {w[:48]}" for c, g, w in zip(shown.check, shown.group, shown.what)]
    units = list(dict.fromkeys(shown.unit.replace("", "value")))
    shown["unit"] = shown.unit.replace("", "value")
    heights = [max(1.2, 0.32 * (shown.unit == u).sum() + 0.6) for u in units] or [1.0]
    fig, axes = plt.subplots(len(units) or 1, 1, figsize=(10, sum(heights) + 1.2),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, unit in zip(axes[:, 0], units):
        sub = shown[shown.unit == unit].reset_index(drop=True)
        vals = np.concatenate([sub[c].to_numpy(dtype=float) for c in ("effect", "ci_low", "ci_high", "holds_low",
                                                                          "holds_high")] + [[1.0 if unit == "ratio" else 0.0]])
        vals = vals[np.isfinite(vals)]
        log = unit == "ratio" and (vals > 0).all() and vals.max() / vals.min() > 20
        lo, hi = vals.min(), vals.max()
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 0.1
        xmin, xmax = (lo / 1.5, hi * 1.5) if log else (lo - pad, hi + pad)
        for i, r in sub.iterrows():
            a = xmin if r.holds_low == -math.inf else r.holds_low  # NaN: bound undefined, no region
            b = xmax if r.holds_high == math.inf else r.holds_high
            if np.isfinite(a) and np.isfinite(b):
                ax.fill_betweenx([i - 0.4, i + 0.4], max(a, xmin), min(b, xmax), color="#1a9850", alpha=0.12, lw=0)
                for x in (r.holds_low, r.holds_high):
                    if np.isfinite(x):
                        ax.plot([x, x], [i - 0.4, i + 0.4], color="#1a9850", lw=1.2)
            col = colors.get(r.verdict, "black")
            if np.isfinite(r.effect):
                if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
                    ax.plot([r.ci_low, r.ci_high], [i, i], color=col, lw=2)
                short = r.reason.startswith("too little evidence")  # hollow: below the minimum evidence
                ax.plot([r.effect], [i], "o", color=col, ms=5, mfc="white" if short else col)
            else:
                ax.text(xmin, i, "  no finite effect", va="center", fontsize=7, color=col)
        ax.set_yticks(range(len(sub)))
        ax.set_yticklabels(sub.label, fontsize=7)
        ax.set_ylim(len(sub) - 0.5, -0.5)
        if log:
            ax.set_xscale("log")
        ax.set_xlim(xmin, xmax)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", lw=2, label=v) for v, c in colors.items()]
    handles.append(Line2D([], [], color="#7f7f7f", marker="o", mfc="white", lw=0, label="too little evidence"))
    handles.append(matplotlib.patches.Patch(color="#1a9850", alpha=0.2, label="'holds' region"))
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=5,
                      frameon=False)
    not_run = df[df.verdict == "not run"].check.tolist()
    fig.suptitle("Replication scorecard: measured effect [95% CI] vs the claim's threshold", fontsize=10, x=0.01,
                 ha="left")
    if not_run:
        fig.text(0.01, 0.005, "not run on this grid: " + ", ".join(not_run), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    add_subtitle(fig, scale_line(runs, baseline)
                 + ("" if runs is not None and len(runs) else " (probe checks: scale in the scorecard)"))
    return fig


def load_probes(paths) -> dict:
    out = {}
    for p in paths or []:
        p = Path(p)
        if p.exists():
            out[p.stem] = pd.read_parquet(p)
    return out


def variants_elsewhere(paths) -> dict:
    """variant -> the grid config files (e.g. config/paper.yaml) that define it."""
    import yaml

    from .sweeps import expand

    out: dict = {}
    for p in paths or []:
        if Path(p).exists():
            with open(p) as f:
                cfg = yaml.safe_load(f) or {}
            try:
                names = list(expand(cfg)[0])  # sweep values are variants too
            except ValueError:  # a broken grid elsewhere does not stop this scorecard
                names = list(cfg.get("variants") or {})
            for v in names:
                out.setdefault(v, []).append(str(p))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", default="config/claims.yaml")
    ap.add_argument("--runs", help="runs.parquet (omit: only probe checks can be judged)")
    ap.add_argument("--grid", help="grid.json (name of the grid for the header)")
    ap.add_argument("--probes", nargs="*", default=[], help="probe tables (results/probes/<name>.parquet)")
    ap.add_argument("--grids", nargs="*", default=["config/config.yaml", "config/paper.yaml"],
                    help="grid configs named in the scorecard for variants this grid lacks")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--figure", help="PNG path; a PDF is written beside it")
    args = ap.parse_args(argv)
    runs = pd.read_parquet(args.runs) if args.runs else None
    grid = json.loads(Path(args.grid).read_text()) if args.grid else None
    try:
        df = evaluate(args.registry, Evidence(runs, load_probes(args.probes), variants_elsewhere(args.grids)))
    except RegistryError as e:
        print(f"error: {args.registry}: {e}", file=sys.stderr)
        return 2
    write_csv(args.csv, df)
    write_text(args.md, markdown(df, grid, runs))
    if args.figure:
        png = Path(args.figure)
        figure(df, png, png.with_suffix(".pdf"), runs, (grid or {}).get("baseline"))
    claims = df.drop_duplicates("claim")
    print(" ".join(f"{c}:{v}" for c, v in zip(claims.claim, claims.claim_verdict)))
    print(df.groupby("verdict").size().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
