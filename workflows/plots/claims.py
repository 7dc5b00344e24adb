"""The claims scorecard's figures, written by ``python -m workflows.claims`` (``--figure``, ``--trajectory-figure``):

- ``claims`` (``claims_forest``): each check's effect and 95% CI against its fixed 'holds' region, one panel per
  unit, with its power (seeds, minimum detectable effect, seeds to decide) on the right;
- ``claims_trajectory``: the final-loss checks' effect and CI at every evaluation step, coloured by the verdict
  each step would get.

Both use ``style.paper_theme`` and keep their own size when saved (``save(..., tight=False)``).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from workflows.analysis.scale import scale_line
from workflows.plots.save import save
from workflows.plots.style import add_subtitle, paper_theme


def _power_label(r) -> str:
    """'n=4 · MDE 0.012 · →9' for a scorecard row (deterministic checks: 'n=1 · exact')."""
    if r.verdict == "not run":
        return ""
    mde, need = r.get("mde", math.nan), r.get("seeds_needed", math.nan)
    if r.get("mde", math.nan) == 0:
        return f"n={r.n} · exact"
    out = f"n={r.n}"
    if np.isfinite(mde):
        out += f" · MDE {mde:.2g}"
    if r.verdict == "inconclusive" and isinstance(need, float) and not math.isnan(need):
        out += " · →∞" if math.isinf(need) else f" · →{int(need)}"
    return out


VERDICT_COLORS = {"holds": "#1a9850", "contradicted": "#d73027", "inconclusive": "#7f7f7f",
                  "still moving": "#fdae61", "not judged": "#9e6ebd"}


def claims_forest(df: pd.DataFrame, runs: pd.DataFrame | None = None, baseline: str | None = None):
    """Forest plot: each check's effect and 95% CI against its 'holds' region, one panel per unit; the
    subtitle states the scale of ``runs`` (``scale.scale_line``: params, tokens per run, seeds, device)."""
    paper_theme()
    colors = VERDICT_COLORS
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
            ax.text(1.01, i, _power_label(r), transform=blended_transform_factory(ax.transAxes, ax.transData),
                    va="center", fontsize=6, color="0.3")
        ax.set_yticks(range(len(sub)))
        ax.set_yticklabels(sub.label, fontsize=7)
        ax.set_ylim(len(sub) - 0.5, -0.5)
        if log:
            ax.set_xscale("log")
        ax.set_xlim(xmin, xmax)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    handles = [Line2D([], [], color=c, marker="o", lw=2, label=v) for v, c in colors.items()]
    handles.append(Line2D([], [], color="#7f7f7f", marker="o", mfc="white", lw=0, label="too little evidence"))
    handles.append(Patch(color="#1a9850", alpha=0.2, label="'holds' region"))
    axes[0, 0].legend(handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=5,
                      frameon=False)
    not_run = df[df.verdict == "not run"].check.tolist()
    fig.suptitle("Replication scorecard: measured effect [95% CI] vs the claim's fixed bound "
                 "(right: seeds n · minimum detectable effect at 80% power · seeds to decide)", fontsize=9, x=0.01,
                 ha="left")
    if not_run:
        fig.text(0.01, 0.005, "not run on this grid: " + ", ".join(not_run), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    add_subtitle(fig, scale_line(runs, baseline)
                 + ("" if runs is not None and len(runs) else " (probe checks: scale in the scorecard)"))
    return fig


def claims_trajectory(df: pd.DataFrame, traj: pd.DataFrame, runs: pd.DataFrame | None = None):
    """Verdicts against training time: for every check of the final loss, its effect and 95% CI at each
    evaluation step (the learning curve's windows) against the check's fixed holds region, each point colored by
    the verdict it would get there; the last third of training (where a change makes the check "still moving")
    is shaded; the final verdict (whole validation split) is in the panel title."""
    paper_theme()
    checks = [c for c in dict.fromkeys(traj.check)] if len(traj) else []
    ncol = min(4, max(1, len(checks)))
    nrow = max(1, math.ceil(len(checks) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow + 0.8), squeeze=False)
    final = df.drop_duplicates("check").set_index("check") if len(df) else pd.DataFrame()
    for ax, check in zip(axes.flat, checks):
        t = traj[traj.check == check].sort_values("step")
        last = float(t.step.max())
        ax.axvspan(last * 2 / 3, last, color="0.9", lw=0, zorder=0)
        r = final.loc[check] if check in final.index else None
        if r is not None:
            a, b = r.holds_low, r.holds_high
            lo_y = np.nanmin(t.ci_low.to_numpy(dtype=float)) if t.ci_low.notna().any() else 0.0
            hi_y = np.nanmax(t.ci_high.to_numpy(dtype=float)) if t.ci_high.notna().any() else 0.0
            a = lo_y - 1 if not np.isfinite(a) else a
            b = hi_y + 1 if not np.isfinite(b) else b
            ax.axhspan(a, b, color="#1a9850", alpha=0.10, lw=0, zorder=0)
            ax.axhline(0.0, color="0.4", lw=0.6)
        ax.fill_between(t.step, t.ci_low.astype(float), t.ci_high.astype(float), color="0.6", alpha=0.3, lw=0)
        ax.plot(t.step, t.effect.astype(float), color="0.3", lw=1)
        for v, c in VERDICT_COLORS.items():
            p = t[t.verdict == v]
            if len(p):
                ax.plot(p.step, p.effect.astype(float), "o", color=c, ms=3.5)
        lo = np.nanmin(np.r_[t.ci_low.to_numpy(dtype=float), 0.0])
        hi = np.nanmax(np.r_[t.ci_high.to_numpy(dtype=float), 0.0])
        pad = 0.1 * (hi - lo) or 0.01
        ax.set_ylim(lo - pad, hi + pad)
        verdict = r.verdict if r is not None else ""
        ax.set_title(f"{check}: {str(r.what)[:30] if r is not None else ''}\nfinal: {verdict}", fontsize=7,
                     color=VERDICT_COLORS.get(verdict, "black"))
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel(f"effect ({r.unit if r is not None else ''})", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(checks):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, marker="o", lw=0, label=v) for v, c in VERDICT_COLORS.items()]
    handles.append(Patch(color="#1a9850", alpha=0.2, label="'holds' region"))
    handles.append(Patch(color="0.9", label="last third of training"))
    fig.legend(handles=handles, fontsize=7, loc="upper right", ncol=4, frameon=False)
    fig.suptitle("Verdicts against training time: effect [95% CI] of each final-loss check at every evaluation "
                 "(curve windows)", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.02, 1, 0.93))
    add_subtitle(fig, scale_line(runs, None))
    return fig


def write_forest(df: pd.DataFrame, path_png, runs: pd.DataFrame | None = None,
                 baseline: str | None = None) -> list[Path]:
    """``claims_forest`` as ``path_png`` and the PDF beside it."""
    return save(claims_forest(df, runs, baseline), path_png, tight=False)


def write_trajectory(df: pd.DataFrame, traj: pd.DataFrame, path_png, runs: pd.DataFrame | None = None) -> list[Path]:
    """``claims_trajectory`` as ``path_png`` and the PDF beside it."""
    return save(claims_trajectory(df, traj, runs), path_png, tight=False)


DRAWS = {"claims": claims_forest, "claims_trajectory": claims_trajectory}
