"""The grid's run-level figures, from the run table, the summary and the loss history:

- ``loss_by_variant``: the final validation loss per variant at its best LR, with Δ vs the baseline paired by
  seed, and the summary's flags marked (``workflows.analysis.flags``: † best LR at the grid's edge, ↗ still
  improving, ≈ on the unigram plateau, ⊘ not below the trigram);
- ``loss_vs_lr``: the final loss against the LR per ablation family, diverged runs drawn at ℓ0;
- ``divergence_heatmap``: diverged / runs per variant and LR;
- ``throughput``: tokens/s relative to the baseline (grid jobs), beside the side-by-side ratios when the grid
  measured them (``speed.parquet``);
- ``loss_curves``: the train and validation loss per ablation family at each variant's best LR.

The loss figures draw the unigram entropy H₁ (and the bigram and trigram references) as labelled lines. The
jittered dots (loss_by_variant, throughput) are drawn under ``style.fixed_jitter``: the same every render.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from models import statistics as S
from workflows.analysis import selection, stats
from workflows.analysis.flags import FLAG_RULES, FLAGS
from workflows.plots.style import BASELINE_COLOR, DIVERGED_COLOR, fixed_jitter
from workflows.plots.tables import (LOSS, Data, facets, family_groups, finite, lr_str, median_errorbar,
                                    missing_note, placeholder, style_variant_ticks, t_errorbar, unigram_key,
                                    unigram_line, variant_lw, variant_marks, variant_z, wrap)

MAX_CURVE_POINTS = 200  # train-loss points per run after smoothing


# ------------------------------------------------------------------------------------------------
# final loss by variant, with Δ vs the baseline
def fig_loss_by_variant(d: Data):
    order, s = d.order, d.summary.set_index("variant").reindex(d.order)
    r = d.runs
    best = r.variant.map(s.best_lr)
    pts = r[np.isclose(r.lr.astype(float), best.astype(float)) & ~r.diverged & finite(r.final_val_loss)]
    n = len(order)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.34 * n + 1.9), sharey=True,
                                 gridspec_kw={"width_ratios": [1.1, 1]})
    if len(pts):
        with fixed_jitter():  # seaborn jitters with numpy's global generator: the same dots every render
            sns.stripplot(data=pts, x="final_val_loss", y="variant", order=order, hue="variant", hue_order=order,
                          palette=d.colors, ax=a1, legend=False, size=4, alpha=0.45, jitter=0.12, zorder=1)
    yx1 = blended_transform_factory(a1.transAxes, a1.transData)
    yx2 = blended_transform_factory(a2.transAxes, a2.transData)
    for i, v in enumerate(order):
        row = s.loc[v]
        m, lo, hi = row.final_loss, row.final_loss_ci_low, row.final_loss_ci_high
        c = d.colors[v]
        if np.isfinite(m):
            xerr = [[m - lo], [hi - m]] if np.isfinite(lo) and np.isfinite(hi) else None
            a1.errorbar(m, i, xerr=xerr, fmt="D", color=c, ms=7 if v == d.baseline else 6, capsize=3, lw=1.8,
                        mec="white", zorder=3)
        else:
            a1.text(0.02, i, "all runs diverged", transform=yx1, va="center", color=DIVERGED_COLOR,
                    style="italic", fontsize=9)
        dm, dlo, dhi = row.delta_vs_baseline, row.delta_ci_low, row.delta_ci_high
        if v == d.baseline:
            a2.text(0.02, i, "reference (Δ = 0)", transform=yx2, va="center", fontsize=9, color="0.25")
        elif np.isfinite(dm):
            xerr = [[dm - dlo], [dhi - dm]] if np.isfinite(dlo) and np.isfinite(dhi) else None
            a2.errorbar(dm, i, xerr=xerr, fmt="o", color=c, ms=6, capsize=3, lw=1.8, mec="white", zorder=3)
        else:
            why = "no finite loss" if not np.isfinite(m) else "no baseline loss to pair with"
            a2.text(0.02, i, f"n/a ({why})", transform=yx2, va="center", fontsize=9, color=DIVERGED_COLOR,
                    style="italic")
        a2.text(1.02, i, f"η*={lr_str(row.best_lr)}", transform=yx2, va="center", fontsize=8, color="0.3")
    base_m = s.final_loss.get(d.baseline, math.nan)
    if np.isfinite(base_m):
        a1.axvline(base_m, color=BASELINE_COLOR, lw=0.8, ls=":", zorder=0)
    a2.axvline(0, color=BASELINE_COLOR, lw=1, zorder=0)
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(5))
    unigram_line(a1, d, orientation="v")
    marks = variant_marks(d)
    a1.set_yticks(range(n), [f"{v} {marks[v]}" if marks.get(v) else v for v in order])
    a1.set_ylim(n - 0.5, -0.5)
    a1.set_ylabel("")
    a1.set_xlabel(f"final validation loss ({LOSS})")
    a1.set_title(("at the LR η* each variant's pilot chose" if d.grid.get("lr_protocol") == "pilot" else
                  "at each variant's best LR η*") + "\n◆ mean over seeds, 95% Student-t interval over seeds; ● one seed",
                 fontsize=10)
    a2.set_xlabel(f"Δ final validation loss vs {d.baseline} ({LOSS}; < 0 is better)")
    delta_at = str(s.delta_at.dropna().iloc[0]) if "delta_at" in s.columns and s.delta_at.notna().any() else ""
    a2.set_title(f"Δ vs baseline, paired by seed, {wrap(delta_at)}\n(95% Student-t interval over the paired "
                 "differences)", fontsize=9)
    style_variant_ticks(a1, d)
    missing = [] if d.baseline in order else [f"baseline {d.baseline!r}"]
    fig.suptitle("Final validation loss by variant" + missing_note(missing), fontsize=13)
    fig.tight_layout()
    keys = unigram_key(d)
    if any(col in d.summary.columns for col in FLAGS):
        keys += [Line2D([], [], ls="", label=f"{mark}  {FLAG_RULES[col].split(':')[0]}") for col, mark in FLAGS.items()]
    if keys:
        fig.legend(handles=keys, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(keys), frameon=False,
                   fontsize=9, handlelength=1.5)
    return fig


# ------------------------------------------------------------------------------------------------
# final loss vs LR per variant (family facets), diverged runs marked at ℓ0
def fig_loss_vs_lr(d: Data):
    r = d.runs.copy()
    l0 = d.init_loss()
    r["loss_or_init"] = selection.capped_score(r)
    groups = family_groups(d)
    fig, axes = facets(len(groups), 4, 4.2, 3.4, sharey=True)
    ok_all = r[~r.diverged & finite(r.final_val_loss)]
    for ax, (fam, vs) in zip(axes, groups):
        for v in vs:
            rv = r[r.variant == v]
            if not len(rv):
                continue
            c = d.colors[v]
            mean = rv.groupby("lr", as_index=False).loss_or_init.mean()
            sns.lineplot(data=mean, x="lr", y="loss_or_init", color=c, lw=variant_lw(d, v), ax=ax, errorbar=None,
                         zorder=variant_z(d, v), label=v)
            ok = rv[~rv.diverged & finite(rv.final_val_loss)]
            if len(ok):
                sns.scatterplot(data=ok, x="lr", y="final_val_loss", color=c, s=22, ax=ax, zorder=4,
                                edgecolor="white", linewidth=0.4, legend=False)
            bad = rv[rv.diverged | ~finite(rv.final_val_loss)]
            if len(bad):
                ax.scatter(bad.lr, bad.init_loss, marker="x", s=60, color=c, linewidths=2, zorder=5)
        if np.isfinite(l0):
            ax.axhline(l0, color=DIVERGED_COLOR, ls="--", lw=0.8, zorder=0)
        unigram_line(ax, d)
        ax.set_xscale("log")
        ax.set_title(fam)
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel(f"final val loss ({LOSS})")
        ax.legend(fontsize=8, loc="upper left", frameon=True, framealpha=0.8)
        lrs = sorted(r[r.variant.isin(vs)].lr.unique())
        if lrs:
            ax.set_xticks(lrs, [lr_str(x) for x in lrs])
            ax.minorticks_off()
    if np.isfinite(l0):
        lo = min(ok_all.final_val_loss.min(), l0 - 0.1) if len(ok_all) else l0 - 1
        hi = max(ok_all.final_val_loss.max(), l0) if len(ok_all) else l0
        if np.isfinite(d.unigram_entropy):
            lo, hi = min(lo, d.unigram_entropy), max(hi, d.unigram_entropy)
        axes[0].set_ylim(lo - 0.05 * (hi - lo), hi + 0.12 * (hi - lo))
    keys = [Line2D([], [], color="0.2", lw=1.6, label="mean over seeds (diverged counted as ℓ0)"),
            Line2D([], [], color="0.2", marker="o", ls="", label="converged run (one seed)"),
            Line2D([], [], color="0.2", marker="x", ls="", ms=8, mew=2, label="diverged run, drawn at ℓ0"),
            Line2D([], [], color=DIVERGED_COLOR, ls="--", lw=0.8, label=f"ℓ0 = ln(vocab) = {l0:.2f}")]
    keys += unigram_key(d)
    fig.suptitle("Final validation loss vs learning rate, per ablation family (baseline in every panel)",
                 fontsize=13)
    fig.tight_layout()
    fig.legend(handles=keys, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(keys), 3), frameon=False,
               fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------
# divergence rate heatmap, variant × LR, annotated k/n
def fig_divergence_heatmap(d: Data):
    r = d.runs
    g = r.groupby(["variant", "lr"]).diverged.agg(k="sum", n="size").reset_index()
    lrs = sorted(r.lr.unique())
    k = g.pivot(index="variant", columns="lr", values="k").reindex(index=d.order, columns=lrs)
    n = g.pivot(index="variant", columns="lr", values="n").reindex(index=d.order, columns=lrs)
    tot = r.groupby("variant").diverged.agg(k="sum", n="size").reindex(d.order)
    k["all"], n["all"] = tot.k, tot.n
    rate = (k / n).astype(float)
    labels = np.where(n.notna().to_numpy(), k.fillna(0).astype(int).astype(str).to_numpy().astype(object) + "/"
                      + n.fillna(0).astype(int).astype(str).to_numpy().astype(object), "")
    cols = [lr_str(x) for x in lrs] + ["all LRs"]
    rate.columns = cols
    fig, ax = plt.subplots(figsize=(1.05 * len(cols) + 3.2, 0.34 * len(d.order) + 1.8))
    sns.heatmap(rate, annot=labels, fmt="", cmap="Reds", vmin=0, vmax=1, linewidths=0.5, linecolor="white",
                cbar_kws={"label": "divergence rate (diverged / runs)", "shrink": 0.8}, ax=ax,
                annot_kws={"fontsize": 9})
    ax.axvline(len(lrs), color="black", lw=2)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("")
    ax.set_yticks(np.arange(len(d.order)) + 0.5, d.order, rotation=0)
    ax.tick_params(axis="x", rotation=0)
    style_variant_ticks(ax, d)
    fig.suptitle("Divergence: runs diverged / runs (k/n) per variant and learning rate\n"
                 "(non-finite loss, or smoothed train loss stuck above ln(vocab))", fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# throughput relative to the baseline
def speed_ratios(speed: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Side-by-side tokens/s (workflows.bench.speed) → per variant the geometric mean ratio to ``baseline`` over the
    reps (paired by rep) with the exponentiated 95% t interval of the mean log ratio — what the speed claims use."""
    if speed is None or not len(speed) or baseline not in set(speed.variant):
        return pd.DataFrame(columns=["variant", "ratio", "low", "high", "reps"])
    base = speed[speed.variant == baseline].set_index("rep").tokens_per_s
    rows = []
    for v, g in speed.groupby("variant", sort=False):
        ratios = (g.set_index("rep").tokens_per_s / base).dropna()
        ratio, lo, hi = stats.ratio_ci(ratios.tolist())
        rows.append({"variant": v, "ratio": ratio, "low": lo, "high": hi, "reps": len(ratios)})
    return pd.DataFrame(rows)


def fig_throughput(d: Data):
    r = d.runs[finite(d.runs.tokens_per_s)].copy()
    if not len(r):
        return placeholder("Throughput", "no run has a finite tokens/s measurement")
    base = r[r.variant == d.baseline].tokens_per_s.median()
    relative = bool(np.isfinite(base) and base > 0)
    r["x"] = r.tokens_per_s / base if relative else r.tokens_per_s
    order, n = d.order, len(d.order)
    side = speed_ratios(d.speed, d.baseline)
    if len(side):
        fig, (ax, a2) = plt.subplots(1, 2, figsize=(14, 0.34 * n + 2.2), sharey=True,
                                     gridspec_kw={"width_ratios": [1.3, 1]})
        for i, v in enumerate(order):
            row = side[side.variant == v]
            if not len(row):
                continue
            row = row.iloc[0]
            xerr = ([[row.ratio - row.low], [row.high - row.ratio]] if np.isfinite(row.low) else None)
            a2.errorbar(row.ratio, i, xerr=xerr, fmt="o", color=d.colors[v], ms=6, capsize=3, lw=1.8, mec="white")
            a2.annotate(f"{row.ratio:.2f}×", (row.ratio, i), textcoords="offset points", xytext=(6, 5), fontsize=8)
        a2.axvline(1.0, color=BASELINE_COLOR, lw=1, ls="--")
        reps = int(side.reps.max())
        a2.set_xlabel(f"tokens/s ÷ {d.baseline}'s, side by side in one process")
        a2.set_title(f"judged (speed claims): {reps} alternating reps, nothing else running;\ngeometric mean, "
                     "95% t interval of the mean log ratio over reps", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(9, 0.34 * n + 1.9))
    sns.barplot(data=r, x="x", y="variant", order=order, hue="variant", hue_order=order, palette=d.colors,
                estimator="median", errorbar=median_errorbar, legend=False, alpha=0.55,
                err_kws={"linewidth": 1.4, "color": "0.15"}, capsize=0.25, ax=ax)
    with fixed_jitter():  # seaborn jitters with numpy's global generator: the same dots every render
        sns.stripplot(data=r, x="x", y="variant", order=order, color="0.1", size=3.5, jitter=0.15, alpha=0.7, ax=ax)
    if relative:
        ax.axvline(1.0, color=BASELINE_COLOR, lw=1, ls="--")
    yx = blended_transform_factory(ax.transAxes, ax.transData)
    med = r.groupby("variant").tokens_per_s.median()
    for i, v in enumerate(order):
        txt = f"{med[v] / base:.2f}×, {med[v]:,.0f} tok/s" if relative and v in med else (
            f"{med[v]:,.0f} tok/s" if v in med else "no timing")
        ax.text(0.015 if len(side) else 1.01, i, txt, transform=yx, va="center", fontsize=8, color="0.15", ha="left")
    ax.set_ylabel("")
    ax.set_yticks(range(n), order)
    style_variant_ticks(ax, d)
    if relative:
        ax.set_xlabel(f"training throughput relative to {d.baseline} (tokens/s ÷ baseline median tokens/s)")
        title = "Throughput relative to the baseline"
    else:
        ax.set_xlabel("training throughput (tokens/s)")
        title = f"Throughput (no timed {d.baseline!r} run: absolute tokens/s)"
    ax.set_title("grid jobs, which shared the machine (or a GPU) with other jobs: reported, not judged", fontsize=9)
    fig.suptitle(f"{title}\nbar: median over runs (all LRs and seeds) with its distribution-free 95% "
                 "order-statistic interval (none below 6 runs); dots: runs", fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# loss curves per ablation family at each variant's best LR
def _smooth_train(tr: pd.DataFrame) -> pd.DataFrame:
    out = []
    for _, g in tr.groupby(["variant", "seed"]):
        g = g.sort_values("step")
        g = g[finite(g.value)]
        if not len(g):
            continue
        w = max(1, len(g) // 25)
        g = g.assign(value=g.value.rolling(w, min_periods=1).mean())
        stride = max(1, math.ceil(len(g) / MAX_CURVE_POINTS))
        out.append(pd.concat([g.iloc[::stride], g.iloc[[-1]]]).drop_duplicates("step"))
    return pd.concat(out, ignore_index=True) if out else tr.iloc[:0]


def fig_loss_curves(d: Data):
    h = d.history
    h = S.select(h, S.TRAIN_LOSS, S.VAL_LOSS)
    best = {v: d.best_lr(v) for v in d.order}
    h = h[h.variant.isin(d.order)]
    h = h[np.isclose(h.lr.astype(float), h.variant.map(best).astype(float))]
    if not len(h):
        return placeholder("Loss curves", "no loss history at the variants' best learning rates")
    tr = _smooth_train(h[h.kind == S.TRAIN_LOSS.kind])
    va = h[(h.kind == S.VAL_LOSS.kind) & finite(h.value)]
    groups = family_groups(d)
    fig, axes = facets(len(groups), 4, 4.4, 3.4, sharey=True, sharex=True)
    for ax, (fam, vs) in zip(axes, groups):
        for v in vs:
            c = d.colors[v]
            tv, vv = tr[tr.variant == v], va[va.variant == v]
            if len(tv):
                sns.lineplot(data=tv, x="step", y="value", color=c, lw=variant_lw(d, v) - 0.4, errorbar=None, ax=ax,
                             alpha=0.9, zorder=variant_z(d, v), label=f"{v} (η*={lr_str(best[v])})")
            if len(vv):
                sns.lineplot(data=vv, x="step", y="value", color=c, lw=1.2, ls="--", marker="o", ms=5,
                             errorbar=t_errorbar, ax=ax, zorder=variant_z(d, v),
                             label=None if len(tv) else f"{v} (η*={lr_str(best[v])})")
            div = d.runs[(d.runs.variant == v) & d.runs.diverged & np.isclose(d.runs.lr, best[v])]
            if len(div):
                ax.plot([], [], " ", label=f"  {len(div)} run(s) of {v} diverged")
        unigram_line(ax, d)
        ax.set_title(fam)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"loss ({LOSS})")
        ax.legend(fontsize=8, loc="upper right", framealpha=0.8)
    # zoom on the part of training where variants differ: skip the first 10% of steps
    vals = pd.concat([tr, va])
    late = vals[vals.step >= 0.1 * vals.step.max()].value
    l0 = d.init_loss()
    if len(late):
        lo, hi = late.min(), late.max()
        if np.isfinite(l0):
            hi = min(hi, l0 + 0.1)
        if np.isfinite(d.unigram_entropy):
            lo, hi = min(lo, d.unigram_entropy), max(hi, d.unigram_entropy)
        pad = 0.06 * max(hi - lo, 0.05)
        axes[0].set_ylim(lo - pad, hi + pad)
    keys = [Line2D([], [], color="0.2", lw=1.6, label="train loss (running mean, mean over seeds)"),
            Line2D([], [], color="0.2", lw=1.2, ls="--", marker="o",
                   label="validation loss (mean, 95% Student-t interval over seeds)")] + unigram_key(d)
    fig.suptitle("Loss curves per ablation family, each variant at " + ("the LR η* its pilot chose"
                 if d.grid.get("lr_protocol") == "pilot" else "its best LR η*") + " (baseline in every panel)",
                 fontsize=13)
    fig.tight_layout()
    fig.legend(handles=keys, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(keys), frameon=False, fontsize=9)
    return fig


DRAWS = {"loss_by_variant": fig_loss_by_variant, "loss_vs_lr": fig_loss_vs_lr,
         "divergence_heatmap": fig_divergence_heatmap, "throughput": fig_throughput, "loss_curves": fig_loss_curves}
