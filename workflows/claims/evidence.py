"""What the checks read: the run table, the probe tables, the side-by-side speed table, and the grid's
pre-registered comparison LR — with the guards that turn missing or degenerate evidence into "not run" or
"not judged" instead of a verdict."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from workflows.analysis import selection
from workflows.analysis import stats

# Degeneracy floors (stated in config/claims.yaml's header): an arm below them carries no verdict.
FLOORS = {
    "loss_at_init": 0.05,  # nats: a run whose final loss is within this of ℓ0 learned nothing
    "grad_norm": 1e-8,  # a per-layer gradient norm below this has underflowed (signal collapse)
    "rms": 1e-6,  # a residual-stream RMS below this: the signal is below any norm's eps
}
FLOOR_METRICS = (("grad_", "grad_norm"), ("resid_rms", "rms"))  # probe metric prefix -> floor


class NotRun(Exception):
    """The grid (or the probes) lacks what a check compares."""


@dataclass
class Evidence:
    runs: pd.DataFrame | None
    probes: dict
    elsewhere: dict = field(default_factory=dict)  # variant -> grid files that define it
    compare_lr: float | None = None  # the grid's pre-registered shared comparison LR (grid.json)
    speed: pd.DataFrame | None = None  # side-by-side throughput (variant, rep, tokens_per_s, device)
    floors: dict = field(default_factory=lambda: dict(FLOORS))
    tables: dict = field(default_factory=dict)  # other measured tables by name (``--table NAME=PATH``): ladder, decode...
    lr_protocol: str = ""  # grid.json's: "pilot" (each variant at its assigned LR), "shared", "crossfit"
    ngram: dict | None = None  # n-gram references on the evaluation tokens (workflows.data.ngram): the trigram guard
    horizons: dict = field(default_factory=dict)  # grid.json's ladder.horizons: the baseline's horizon arm -> factor

    def table(self, name: str) -> pd.DataFrame:
        """Measured table ``name`` (e.g. the ladder's or the decode bench's); NotRun when this run has none."""
        t = self.tables.get(name)
        if t is None:
            raise NotRun(f"no {name} table in this run (its config does not measure it)")
        return t

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
            if any(not same(h, want) for h in have):
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

    def lrs_for(self, runs: pd.DataFrame, c: dict) -> tuple[dict, str]:
        """Which runs of one variant a check compares (``selection.comparison_lrs``) and how they were
        chosen. ``at: shared`` on a grid without a ``compare_lr`` falls back to the cross-fitted best LR
        (and says so)."""
        mode = c.get("at", "shared")
        if self.lr_protocol == "pilot":  # one LR per variant and seed, its pilot's choice: pairs are by seed
            return selection.comparison_lrs(runs, "assigned"), selection.describe("assigned")
        if mode == "shared" and self.compare_lr is None:
            mode = "best"
            how = "no compare_lr in this grid: " + selection.describe("best")
        else:
            how = selection.describe(mode, self.compare_lr)
        lrs = selection.comparison_lrs(runs, mode, self.compare_lr)
        if mode == "shared" and not lrs:
            raise NotRun(f"variant {runs.variant.iloc[0]!r} has no run at the grid's compare_lr {self.compare_lr:g}")
        return lrs, how

    def degenerate_runs(self, runs: pd.DataFrame, lrs: dict) -> str:
        """A reason when every compared run of a variant ended at ℓ0 (learned nothing), else ''."""
        if not lrs or "init_loss" not in runs.columns:
            return ""
        loss = selection.values_at(runs, lrs, "final_val_loss")
        init = selection.values_at(runs, lrs, "init_loss")
        tol = float(self.floors["loss_at_init"])
        at_init = [k for k in loss if np.isfinite(loss[k]) and loss[k] >= init[k] - tol]
        if at_init and len(at_init) == len(loss):
            return (f"degenerate: every compared run of {runs.variant.iloc[0]!r} ended within {tol:g} nats of ℓ0 "
                    f"(it learned nothing)")
        trigram = float(((self.ngram or {}).get("orders") or {}).get("3", {}).get("nats", math.nan))
        finite = [x for x in loss.values() if np.isfinite(x)]
        if np.isfinite(trigram) and finite:
            _, _, hi = stats.mean_ci(finite) if len(finite) > 1 else (None, None, finite[0])
            if not hi < trigram:
                return (f"not past n-gram statistics: {runs.variant.iloc[0]!r} ends at {np.mean(finite):.3f} nats "
                        f"(95% upper bound {hi:.3f}), not below the smoothed trigram's {trigram:.3f} on the same tokens")
        return ""

    def engagement(self, c: dict, t: pd.DataFrame, k: pd.DataFrame, lts: tuple) -> tuple[str, str]:
        """(what was measured, not-judged reason or ''): whether the check's mechanism acted on the compared
        runs (``engaged`` in the registry: a run metric of one arm, reduced by the max over its compared runs,
        above or below a fixed bound). A stability trick that never acted "costs nothing" by construction."""
        e = c.get("engaged")
        if not e:
            return "", ""
        runs, lrs = (t, lts[0]) if e["arm"] == "treatment" else (k, lts[1])
        if e["metric"] not in runs.columns:
            return "", f"not judged: runs.parquet has no {e['metric']!r} to show that the mechanism acted"
        vals = [abs(x) if e.get("transform") == "abs" else x
                for x in selection.values_at(runs, lrs, e["metric"]).values()]
        vals = [x for x in vals if np.isfinite(x)]
        if not vals:
            return "", f"not judged: no finite {e['metric']} to show that the mechanism acted"
        top = max(vals) if "above" in e else min(vals)
        bound, ok = (e["above"], top > e["above"]) if "above" in e else (e["below"], top < e["below"])
        desc = "max" if "above" in e else "min"
        seen = (f"engagement: {desc} {e['metric']} of {runs.variant.iloc[0]} = {top:.3g} "
                f"({'>' if 'above' in e else '<'} {bound:g} needed: {e.get('what', 'the mechanism acts')})")
        return seen, "" if ok else f"not judged: the mechanism never acted ({seen})"

    def degenerate_probe(self, tab: pd.DataFrame, depths) -> str:
        """A reason when a probe arm's per-layer gradients or activations fell below their floor at one of
        ``depths``, else ''."""
        reasons = []
        for prefix, floor_name in FLOOR_METRICS:
            rows = tab[tab.metric.str.startswith(prefix) & ~tab.metric.str.endswith("_of_mean")
                       & tab.depth.isin(list(depths)) & (tab.layer >= 0 if prefix == "grad_" else True)]
            if rows.empty:
                continue
            floor = float(self.floors[floor_name])
            low = rows[~(rows.value.abs() >= floor)]  # NaN counts as below
            if len(low):
                ds = sorted({int(d) for d in low.depth})
                reasons.append(f"{prefix.rstrip('_')} below {floor:g} at L={ds} (min {rows.value.min():.2g})")
        return ("degenerate: " + "; ".join(reasons) + " — the signal collapsed at init") if reasons else ""


def same(have, want) -> bool:
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
