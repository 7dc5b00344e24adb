"""One figure per hyperparameter sweep of the grid (``workflows.grid.sweeps``), named ``sweep_<name>``: the final
metric at each value's best LR (mean over seeds, 95% Student-t interval; bits/byte where the sweep says so),
the rule of thumb marked, and the metric against the LR per value (did the optimum move?).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from workflows.analysis import stats
from workflows.plots.registry import SWEEP, SWEEP_PREFIX
from workflows.plots.style import DIVERGED_COLOR
from workflows.plots.tables import LOSS, Data, finite, lr_str, unigram_line, variant_marks


def sweep_table(d: Data, name: str) -> pd.DataFrame:
    """Per value of sweep ``name``: its best LR and the final metric there (mean over seeds with the 95%
    Student-t interval); the metric is bits/byte where the sweep says so (vocabulary), else nats/token."""
    sw = d.grid["sweeps"][name]
    col = "final_val_bpb" if sw.get("metric") == "bpb" else "final_val_loss"
    s = d.summary.set_index("variant")
    marks = variant_marks(d)
    rows = []
    for i, item in enumerate(sw["values"]):
        v = item["variant"]
        best = s.best_lr.get(v, math.nan)
        r = d.runs[(d.runs.variant == v) & np.isclose(d.runs.lr.astype(float), best) & ~d.runs.diverged]
        m, lo, hi = stats.mean_ci(r[col].astype(float).tolist()) if len(r) else (math.nan,) * 3
        rows.append({"variant": v, "value": item["value"], "label": item["label"], "pos": i, "best_lr": best,
                     "mean": m, "low": lo, "high": hi, "seeds": int(finite(r[col]).sum()),
                     "marks": marks.get(v, "")})
    return pd.DataFrame(rows)


def fig_sweep(d: Data, name: str):
    sw = d.grid["sweeps"][name]
    t = sweep_table(d, name)
    metric = "bits/byte" if sw.get("metric") == "bpb" else LOSS
    col = "final_val_bpb" if sw.get("metric") == "bpb" else "final_val_loss"
    raw = [item["value"] for item in sw["values"]]  # (the table's column turns None into NaN)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw)
    log = numeric and sw.get("scale") == "log" and all(x > 0 for x in raw)
    x = t.value.astype(float) if numeric else t.pos
    colors = dict(zip(t.variant, sns.color_palette("viridis", len(t))))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    ok = np.isfinite(t["mean"])
    a1.plot(x[ok], t["mean"][ok], color="0.6", lw=1, zorder=1)
    for xi, (_, r) in zip(x, t.iterrows()):
        if not np.isfinite(r["mean"]):
            a1.annotate("no finite run", (xi, 0.5), xycoords=("data", "axes fraction"), ha="center",
                        color=DIVERGED_COLOR, style="italic", fontsize=9)
            continue
        yerr = [[r["mean"] - r.low], [r.high - r["mean"]]] if np.isfinite(r.low) else None
        a1.errorbar(xi, r["mean"], yerr=yerr, fmt="o", color=colors[r.variant], capsize=3, lw=1.8, ms=7,
                    mec="white", zorder=3)
        a1.annotate(f"η*={lr_str(r.best_lr)} {r.marks}".rstrip(), (xi, r["mean"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8, color="0.3")
    ref = sw.get("reference")
    if ref is not None:
        ref_x = float(ref) if numeric else next((p for p, v in zip(t.pos, raw) if v == ref), None)
        if ref_x is not None:
            a1.axvline(ref_x, color="tab:red", ls="--", lw=1.2, zorder=0, label=f"rule of thumb: {ref:g}")
            a1.legend(loc="best", fontsize=9)
    if log:
        a1.set_xscale("log")
    a1.set_xticks(list(x), list(t.label))
    a1.minorticks_off()
    if col == "final_val_loss":
        unigram_line(a1, d)
    a1.set_xlabel(sw.get("x", name))
    a1.set_ylabel(f"final validation {'bpb' if col == 'final_val_bpb' else 'loss'} ({metric})")
    a1.set_title("at each value's best LR η*: mean over seeds, 95% Student-t interval", fontsize=10)
    # loss vs LR per value: did the optimum move?
    r = d.runs[d.runs.variant.isin(t.variant)].copy()
    r["metric"] = np.where(r.diverged, np.nan, r[col].astype(float))
    for _, row in t.iterrows():
        g = r[r.variant == row.variant].groupby("lr")["metric"]
        ci = g.apply(lambda s: pd.Series(stats.mean_ci(s.dropna().tolist()), index=["m", "lo", "hi"])).unstack()
        if not len(ci):
            continue
        c = colors[row.variant]
        a2.plot(ci.index, ci.m, "o-", color=c, label=f"{row.label}", lw=1.5, ms=4)
        a2.fill_between(ci.index, ci.lo, ci.hi, color=c, alpha=0.12, lw=0)
        div = r[(r.variant == row.variant) & r.diverged]
        if len(div):
            a2.plot(div.lr, [np.nanmax(r.metric)] * len(div), "x", color=c, ms=7)
    a2.set_xscale("log")
    a2.set_xlabel("learning rate")
    a2.set_ylabel(f"final validation ({metric})")
    a2.set_title("final metric vs LR per value (mean, 95% t band; × diverged)", fontsize=10)
    a2.legend(title=sw.get("x", name), fontsize=8, title_fontsize=9, loc="best")
    fig.suptitle(f"Sweep: {sw.get('x', name)}" + (f" — {sw['description']}" if sw.get("description") else ""),
                 fontsize=13)
    fig.tight_layout()
    return fig


def draw_sweep(d: Data, name: str):
    """Figure ``name`` = ``sweep_<sweep name>``."""
    return fig_sweep(d, name.removeprefix(SWEEP_PREFIX))


DRAWS = {SWEEP: draw_sweep}
