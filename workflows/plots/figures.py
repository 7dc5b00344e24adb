"""Figures: the aggregated tables → seaborn figures, each saved as PNG and PDF.

    python -m workflows.plots.figures --results results --grid results/grid.json --out figures [--only NAME ...] \
        [--data-meta WORK/data/KEY/meta.json]

Reads ``runs.parquet`` (or ``runs.csv``), ``summary.csv`` and ``history.parquet`` from ``--results``
(written by ``workflows.analysis.aggregate``), the grid description ``grid.json`` and, with ``--data-meta``, the
training split's unigram entropy from the token files' ``meta.json``. Every figure uses the grid's one
variant order (``grid["order"]``) and one palette (``palette``: variant → colour, fixed by the grid
order, the baseline always black), and has a subtitle stating its scale (``scale.scale_line``:
parameters, training tokens per run, seeds, device).

Intervals: a mean over seeds gets a 95% Student-t interval over seeds (``stats.mean_ci``; those taken
from ``summary.csv`` were computed the same way, Δ over the seed-paired differences); the throughput
median gets a distribution-free order-statistic interval (``stats.median_ci``). No bootstrap.
The loss figures draw the unigram entropy H₁ as a labelled reference line (when ``--data-meta`` is
given), and ``loss_by_variant`` marks the summary's flags: † best LR at grid edge, ↗ still improving,
≈ on the unigram plateau (rules in ``workflows.analysis.flags``).

Figures (``FIGURES``): loss_by_variant, loss_vs_lr, divergence_heatmap, throughput, loss_curves,
activations, grad_norms, attn_logits, weight_norms. A figure whose variants are missing from the grid
plots what exists and says what is missing in its title; diverged runs (NaN losses) are drawn as such, never
dropped silently. Each file is written atomically (temporary file, then rename).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from workflows.analysis import selection  # noqa: E402
from workflows.analysis import stats
from workflows.analysis.flags import FLAG_RULES, FLAGS, flag_marks  # noqa: E402
from workflows.io import atomic_path  # noqa: E402
from workflows.analysis.scale import add_subtitle, scale_line  # noqa: E402

FORMATS = ("png", "pdf")
DPI = 150
LOSS = "nats/token"
BASELINE_COLOR = (0.0, 0.0, 0.0)
DIVERGED_COLOR = (0.45, 0.45, 0.45)
UNIGRAM_COLOR = (0.55, 0.2, 0.55)
UNIGRAM_GID = "unigram_entropy"  # gid of the reference lines, for tests
SITE_ORDER = {"embed": 0, "attn": 1, "attn+ffn": 1, "ffn": 2}
# variants whose only changes are on these axes are the depth-profile comparisons (figures 6, 7) ...
DEPTH_AXES = {"norm_position", "residual"}
# ... and the attention-logit comparison (figure 8)
LOGIT_AXES = {"qk_norm", "attn_softcap", "final_softcap"}
MAX_STEPS_SHOWN = 6  # training steps drawn as hue in the activation profile
MAX_CURVE_POINTS = 200  # train-loss points per run after smoothing


# ------------------------------------------------------------------------------------------------
# The one order and the one palette
def variant_order(grid: dict, present=None) -> list[str]:
    """The grid's variant order, restricted to ``present`` (any extra variants appended, sorted)."""
    order = list(grid.get("order") or grid.get("variants") or [])
    if present is None:
        return order
    present = set(present)
    return [v for v in order if v in present] + sorted(present - set(order))


def _distinct_colors(n: int) -> list[tuple]:
    """n colours, neighbours as different as possible and all readable on white: tab10, then its dark
    siblings (grey left out, kept for 'diverged'), then mid-lightness hues between them."""
    cols = []
    for name in ("tab10", "dark"):
        cols += [c for i, c in enumerate(sns.color_palette(name, 10)) if i != 7]
    cols += sns.husl_palette(9, h=0.06, s=0.95, l=0.55)
    if n > len(cols):
        cols += sns.husl_palette(n - len(cols), h=0.11, s=0.8, l=0.35)
    return [tuple(float(x) for x in c) for c in cols[:n]]


def palette(grid: dict) -> dict[str, tuple]:
    """variant → RGB colour, the same in every figure: the baseline black, the others in grid order."""
    order = variant_order(grid)
    base = grid.get("baseline")
    cols = iter(_distinct_colors(max(0, len([v for v in order if v != base]))))
    return {v: BASELINE_COLOR if v == base else next(cols) for v in order}


def t_errorbar(values) -> tuple[float, float]:
    """seaborn ``errorbar=`` callable: the 95% Student-t interval of the mean over seeds."""
    return stats.mean_ci(values)[1:]


def median_errorbar(values) -> tuple[float, float]:
    """seaborn ``errorbar=`` callable: the distribution-free 95% interval of the median."""
    return stats.median_ci(values)[1:]


# ------------------------------------------------------------------------------------------------
@dataclass
class Data:
    grid: dict
    runs: pd.DataFrame
    summary: pd.DataFrame
    history: pd.DataFrame
    unigram_entropy: float = math.nan  # nats/token of the training split (NaN: unknown, no line drawn)
    speed: pd.DataFrame | None = None  # side-by-side throughput (speed.parquet), when the grid has it
    ngram: dict | None = None  # n-gram references on the evaluation tokens (ngram.json, workflows.data.ngram)
    order: list[str] = field(init=False)
    colors: dict = field(init=False)

    def __post_init__(self):
        self.order = variant_order(self.grid, self.runs.variant.unique())
        self.colors = palette(self.grid)
        extra = [v for v in self.order if v not in self.colors]
        self.colors.update(zip(extra, sns.color_palette("husl", len(extra)) if extra else []))
        self.runs = self.runs.assign(diverged=self.runs.diverged.fillna(False).astype(bool))

    @property
    def baseline(self) -> str:
        return self.grid.get("baseline", "")

    def family(self, v: str) -> str:
        return (self.grid.get("variants", {}).get(v) or {}).get("family") or "other"

    def overrides(self, v: str) -> dict:
        spec = self.grid.get("variants", {}).get(v) or {}
        return {**(spec.get("model") or {}), **{f"train.{k}": x for k, x in (spec.get("train") or {}).items()}}

    def model_value(self, v: str, axis: str):
        spec = self.grid.get("variants", {}).get(v) or {}
        return (spec.get("model") or {}).get(axis, (self.grid.get("model") or {}).get(axis))

    def label(self, v: str) -> str:
        """variant plus what it changes, for facet titles."""
        o = self.overrides(v)
        if v == self.baseline:
            return f"{v} (reference)"
        return f"{v}\n(" + ", ".join(f"{k}={x}" for k, x in o.items()) + ")" if o else v

    def init_loss(self) -> float:
        x = self.runs.init_loss.dropna()
        return float(x.iloc[0]) if len(x) else math.nan

    def best_lr(self, v: str) -> float:
        s = self.summary[self.summary.variant == v]
        return float(s.best_lr.iloc[0]) if len(s) and pd.notna(s.best_lr.iloc[0]) else math.nan

    def lrs(self, v: str) -> list[float]:
        return sorted(self.runs[self.runs.variant == v].lr.unique())

    def comparison_lr(self, v: str) -> float:
        """The LR at which depth profiles are compared: the baseline's best LR where the variant ran it,
        else the variant's own best LR."""
        ref = self.best_lr(self.baseline)
        if np.isfinite(ref) and any(np.isclose(ref, x) for x in self.lrs(v)):
            return ref
        return self.best_lr(v)

    def select(self, axes: set[str]) -> list[str]:
        """The baseline and every variant whose overrides are all on ``axes`` (grid order)."""
        out = []
        for v in self.order:
            o = self.overrides(v)
            if v == self.baseline or (o and set(o) <= axes):
                out.append(v)
        return out


def _read_table(results: Path, stem: str) -> pd.DataFrame:
    if (results / f"{stem}.parquet").exists():
        return pd.read_parquet(results / f"{stem}.parquet")
    return pd.read_csv(results / f"{stem}.csv")


def load(results, grid_path, data_meta=None) -> Data:
    """The tables of ``results``; ``data_meta``: the token files' meta.json (unigram entropy), optional."""
    results = Path(results)
    grid = json.loads(Path(grid_path).read_text())
    runs = _read_table(results, "runs")
    summary = pd.read_csv(results / "summary.csv")
    hp = results / "history.parquet"
    cols = ["variant", "seed", "lr", "step", "kind", "metric", "layer", "site", "value"]
    history = pd.read_parquet(hp) if hp.exists() else pd.DataFrame(columns=cols)
    h = math.nan
    if data_meta is not None:
        from workflows.data.corpus import train_unigram_entropy

        h = train_unigram_entropy(data_meta)["nats_per_token"]
    sp = results / "speed.parquet"
    speed = pd.read_parquet(sp) if sp.exists() else None
    ng = results / "ngram.json"
    ngram = json.loads(ng.read_text()) if ng.exists() else None
    return Data(grid, runs, summary, history, h, speed, ngram)


# ------------------------------------------------------------------------------------------------
# Small helpers
def _at_lr(df: pd.DataFrame, lr: float) -> pd.Series:
    return np.isclose(df.lr.astype(float), lr, rtol=1e-9, atol=0.0)


def _wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _lr_str(lr: float) -> str:
    return f"{lr:g}" if np.isfinite(lr) else "n/a"


def _finite(s: pd.Series) -> pd.Series:
    return s.notna() & np.isfinite(s.astype(float))


def _missing_note(missing: list[str]) -> str:
    return f"\n(not in this grid: {'; '.join(missing)})" if missing else ""


def _style_variant_ticks(ax, d: Data, axis: str = "y") -> None:
    """Bold the baseline's tick label and colour every variant's label with its palette colour."""
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    for t in labels:
        v = t.get_text().split(" ", 1)[0]  # a variant name, maybe followed by its flag marks
        if v in d.colors:
            t.set_color(d.colors[v] if v != d.baseline else BASELINE_COLOR)
            if v == d.baseline:
                t.set_fontweight("bold")


def _lw(d: Data, v: str) -> float:
    return 2.6 if v == d.baseline else 1.6


def _z(d: Data, v: str) -> float:
    """The baseline is drawn thick and underneath, so a variant that matches it stays visible."""
    return 1.5 if v == d.baseline else 2.5


def _facets(n: int, ncols: int, w: float, h: float, **kw):
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _family_groups(d: Data, variants=None) -> list[tuple[str, list[str]]]:
    """(family, [baseline, members...]) per ablation family in grid order; the baseline in every facet."""
    variants = d.order if variants is None else variants
    fams: dict[str, list[str]] = {}
    for v in variants:
        if v != d.baseline:
            fams.setdefault(d.family(v), []).append(v)
    base = [d.baseline] if d.baseline in variants else []
    if not fams:
        return [(d.family(d.baseline) if base else "all", base)]
    return [(f, base + vs) for f, vs in fams.items()]


def _placeholder(title: str, message: str):
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.axis("off")
    fig.suptitle(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11, color="0.3",
            transform=ax.transAxes)
    return fig


def _legend_outside(fig, handles, labels, title=None, ncol=1):
    fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               ncol=ncol)


def _variant_handles(d: Data, variants, extra: dict | None = None):
    hs = [Line2D([], [], color=d.colors[v], lw=_lw(d, v), marker="o", ms=4) for v in variants]
    labels = [v + ((extra or {}).get(v, "")) for v in variants]
    return hs, labels


NGRAM_LINES = {"2": ("bigram", ":"), "3": ("trigram", "--")}  # n-gram references drawn beside the unigram line


def ngram_refs(d: Data) -> list[tuple[str, float, str]]:
    """(name, nats/token, line style) of the bigram and trigram references on the evaluation tokens, if known."""
    orders = (d.ngram or {}).get("orders") or {}
    return [(name, float(orders[k]["nats"]), ls) for k, (name, ls) in NGRAM_LINES.items() if k in orders]


def unigram_line(ax, d: Data, orientation: str = "h", label: bool = True):
    """The training split's unigram entropy as a labelled reference line (nothing if unknown), and the
    bigram and trigram references scored on the same evaluation tokens as the runs (``ngram.json``)."""
    for name, x, ls in ngram_refs(d):
        kw = dict(color=UNIGRAM_COLOR, ls=ls, lw=0.9, zorder=0.5, gid=f"{name}_reference", label="_nolegend_")
        ax.axhline(x, **kw) if orientation == "h" else ax.axvline(x, **kw)
        if label:
            tr = (blended_transform_factory(ax.transAxes, ax.transData) if orientation == "h"
                  else blended_transform_factory(ax.transData, ax.transAxes))
            ax.text(*((0.99, x) if orientation == "h" else (x, 0.02)), f"{name} {x:.2f}" + ("" if orientation == "h" else " "),
                    transform=tr, ha="right", va="bottom", fontsize=7, color=UNIGRAM_COLOR,
                    rotation=0 if orientation == "h" else 90)
    h = d.unigram_entropy
    if not np.isfinite(h):
        return None
    kw = dict(color=UNIGRAM_COLOR, ls="-.", lw=1.0, zorder=0.5, gid=UNIGRAM_GID, label="_nolegend_")
    line = ax.axhline(h, **kw) if orientation == "h" else ax.axvline(h, **kw)
    if label:
        if orientation == "h":
            ax.text(0.99, h, f"unigram H₁ = {h:.2f}", transform=blended_transform_factory(ax.transAxes, ax.transData),
                    ha="right", va="bottom", fontsize=7, color=UNIGRAM_COLOR, gid=UNIGRAM_GID)
        else:
            ax.text(h, 0.02, f"unigram H₁ = {h:.2f} ", transform=blended_transform_factory(ax.transData, ax.transAxes),
                    ha="right", va="bottom", fontsize=7, color=UNIGRAM_COLOR, rotation=90, gid=UNIGRAM_GID)
    return line


def _unigram_key(d: Data) -> list:
    refs = [Line2D([], [], color=UNIGRAM_COLOR, ls=ls, lw=0.9,
                   label=f"smoothed {name} on the same evaluation tokens = {x:.2f}") for name, x, ls in ngram_refs(d)]
    if not np.isfinite(d.unigram_entropy):
        return refs
    return [Line2D([], [], color=UNIGRAM_COLOR, ls="-.", lw=1.0,
                   label=f"unigram entropy of the training split H₁ = {d.unigram_entropy:.2f}")] + refs


def save(fig, out: Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf atomically (reproducible: no timestamps in the PDF)."""
    paths = []
    for fmt in FORMATS:
        path = Path(out) / f"{name}.{fmt}"
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------------------
# 1. final loss by variant, with Δ vs the baseline
def fig_loss_by_variant(d: Data):
    order, s = d.order, d.summary.set_index("variant").reindex(d.order)
    r = d.runs
    best = r.variant.map(s.best_lr)
    pts = r[np.isclose(r.lr.astype(float), best.astype(float)) & ~r.diverged & _finite(r.final_val_loss)]
    n = len(order)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 0.34 * n + 1.9), sharey=True,
                                 gridspec_kw={"width_ratios": [1.1, 1]})
    if len(pts):
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
        a2.text(1.02, i, f"η*={_lr_str(row.best_lr)}", transform=yx2, va="center", fontsize=8, color="0.3")
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
    a2.set_title(f"Δ vs baseline, paired by seed, {_wrap(delta_at)}\n(95% Student-t interval over the paired "
                 "differences)", fontsize=9)
    _style_variant_ticks(a1, d)
    missing = [] if d.baseline in order else [f"baseline {d.baseline!r}"]
    fig.suptitle("Final validation loss by variant" + _missing_note(missing), fontsize=13)
    fig.tight_layout()
    keys = _unigram_key(d)
    if any(col in d.summary.columns for col in FLAGS):
        keys += [Line2D([], [], ls="", label=f"{mark}  {FLAG_RULES[col].split(':')[0]}") for col, mark in FLAGS.items()]
    if keys:
        fig.legend(handles=keys, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(keys), frameon=False,
                   fontsize=9, handlelength=1.5)
    return fig


def variant_marks(d: Data) -> dict[str, str]:
    """variant → its flag marks from summary.csv ('†↗≈', see workflows.analysis.aggregate.FLAG_RULES)."""
    if "variant" not in d.summary.columns:
        return {}
    return {r["variant"]: flag_marks(r) for _, r in d.summary.iterrows()}


# ------------------------------------------------------------------------------------------------
# 2. final loss vs LR per variant (family facets), diverged runs marked at ℓ0
def fig_loss_vs_lr(d: Data):
    r = d.runs.copy()
    l0 = d.init_loss()
    r["loss_or_init"] = selection.capped_score(r)
    groups = _family_groups(d)
    fig, axes = _facets(len(groups), 4, 4.2, 3.4, sharey=True)
    ok_all = r[~r.diverged & _finite(r.final_val_loss)]
    for ax, (fam, vs) in zip(axes, groups):
        for v in vs:
            rv = r[r.variant == v]
            if not len(rv):
                continue
            c = d.colors[v]
            mean = rv.groupby("lr", as_index=False).loss_or_init.mean()
            sns.lineplot(data=mean, x="lr", y="loss_or_init", color=c, lw=_lw(d, v), ax=ax, errorbar=None,
                         zorder=_z(d, v), label=v)
            ok = rv[~rv.diverged & _finite(rv.final_val_loss)]
            if len(ok):
                sns.scatterplot(data=ok, x="lr", y="final_val_loss", color=c, s=22, ax=ax, zorder=4,
                                edgecolor="white", linewidth=0.4, legend=False)
            bad = rv[rv.diverged | ~_finite(rv.final_val_loss)]
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
            ax.set_xticks(lrs, [_lr_str(x) for x in lrs])
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
    keys += _unigram_key(d)
    fig.suptitle("Final validation loss vs learning rate, per ablation family (baseline in every panel)",
                 fontsize=13)
    fig.tight_layout()
    fig.legend(handles=keys, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(keys), 3), frameon=False,
               fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------
# 3. divergence rate heatmap, variant × LR, annotated k/n
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
    cols = [_lr_str(x) for x in lrs] + ["all LRs"]
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
    _style_variant_ticks(ax, d)
    fig.suptitle("Divergence: runs diverged / runs (k/n) per variant and learning rate\n"
                 "(non-finite loss, or smoothed train loss stuck above ln(vocab))", fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# 4. throughput relative to the baseline
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
    r = d.runs[_finite(d.runs.tokens_per_s)].copy()
    if not len(r):
        return _placeholder("Throughput", "no run has a finite tokens/s measurement")
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
    _style_variant_ticks(ax, d)
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
# 5. loss curves per ablation family at each variant's best LR
def _smooth_train(tr: pd.DataFrame) -> pd.DataFrame:
    out = []
    for _, g in tr.groupby(["variant", "seed"]):
        g = g.sort_values("step")
        g = g[_finite(g.value)]
        if not len(g):
            continue
        w = max(1, len(g) // 25)
        g = g.assign(value=g.value.rolling(w, min_periods=1).mean())
        stride = max(1, math.ceil(len(g) / MAX_CURVE_POINTS))
        out.append(pd.concat([g.iloc[::stride], g.iloc[[-1]]]).drop_duplicates("step"))
    return pd.concat(out, ignore_index=True) if out else tr.iloc[:0]


def fig_loss_curves(d: Data):
    h = d.history
    h = h[((h.kind == "train") | (h.kind == "val")) & (h.metric == "loss")]
    best = {v: d.best_lr(v) for v in d.order}
    h = h[h.variant.isin(d.order)]
    h = h[np.isclose(h.lr.astype(float), h.variant.map(best).astype(float))]
    if not len(h):
        return _placeholder("Loss curves", "no loss history at the variants' best learning rates")
    tr = _smooth_train(h[h.kind == "train"])
    va = h[(h.kind == "val") & _finite(h.value)]
    groups = _family_groups(d)
    fig, axes = _facets(len(groups), 4, 4.4, 3.4, sharey=True, sharex=True)
    for ax, (fam, vs) in zip(axes, groups):
        for v in vs:
            c = d.colors[v]
            tv, vv = tr[tr.variant == v], va[va.variant == v]
            if len(tv):
                sns.lineplot(data=tv, x="step", y="value", color=c, lw=_lw(d, v) - 0.4, errorbar=None, ax=ax,
                             alpha=0.9, zorder=_z(d, v), label=f"{v} (η*={_lr_str(best[v])})")
            if len(vv):
                sns.lineplot(data=vv, x="step", y="value", color=c, lw=1.2, ls="--", marker="o", ms=5,
                             errorbar=t_errorbar, ax=ax, zorder=_z(d, v),
                             label=None if len(tv) else f"{v} (η*={_lr_str(best[v])})")
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
                   label="validation loss (mean, 95% Student-t interval over seeds)")] + _unigram_key(d)
    fig.suptitle("Loss curves per ablation family, each variant at " + ("the LR η* its pilot chose"
                 if d.grid.get("lr_protocol") == "pilot" else "its best LR η*") + " (baseline in every panel)",
                 fontsize=13)
    fig.tight_layout()
    fig.legend(handles=keys, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(keys), frameon=False, fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------------
# 6-7: depth profiles (residual stream and gradients) of norm-position / residual variants
def _depth_variants(d: Data) -> tuple[list[str], list[str]]:
    vs = d.select(DEPTH_AXES)
    missing = []
    if not any(d.model_value(v, "norm_position") == "post" for v in vs):
        missing.append("post-norm variant")
    if not any(d.model_value(v, "residual") is False for v in vs):
        missing.append("no-residual variant")
    return vs, missing


def _runs_at(h: pd.DataFrame, d: Data, vs) -> pd.DataFrame:
    """Rows of ``h`` of each variant in ``vs`` at its comparison LR."""
    lr = {v: d.comparison_lr(v) for v in vs}
    h = h[h.variant.isin(vs)]
    return h[np.isclose(h.lr.astype(float), h.variant.map(lr).astype(float))]


def _no_stats_message(d: Data) -> str:
    every = (d.grid.get("train") or {}).get("stats_every")
    return ("no per-layer statistics in the history" + (f" (train.stats_every = {every})" if every == 0 else ""))


def fig_activations(d: Data):
    vs, missing = _depth_variants(d)
    h = d.history
    h = h[(h.kind == "layer") & h.metric.isin(["resid_rms", "resid_std"])]
    h = _runs_at(h, d, vs)
    h = h[_finite(h.value) & (h.value > 0)]
    if not len(h):
        return _placeholder("Residual-stream activations over depth", _no_stats_message(d))
    vs = [v for v in vs if v in set(h.variant)]
    steps = np.array(sorted(h.step.unique()))
    if len(steps) > MAX_STEPS_SHOWN:
        steps = np.unique(steps[np.round(np.linspace(0, len(steps) - 1, MAX_STEPS_SHOWN)).astype(int)])
    h = h[h.step.isin(steps)].copy()
    h["site_rank"] = h.site.map(SITE_ORDER).fillna(3)
    step_colors = dict(zip(steps, sns.color_palette("viridis", len(steps))))
    fig, axes = plt.subplots(2, len(vs), figsize=(3.4 * len(vs) + 1.0, 6.2), sharey="row", squeeze=False)
    for j, v in enumerate(vs):
        hv = h[h.variant == v]
        sites = hv[["layer", "site", "site_rank"]].drop_duplicates().sort_values(["layer", "site_rank"])
        pos = {(a, b): i for i, (a, b) in enumerate(zip(sites.layer, sites.site))}
        hv = hv.assign(depth=[pos[k] for k in zip(hv.layer, hv.site)])
        ticks = ["emb" if s == "embed" else f"{la}.{s}" for la, s in zip(sites.layer, sites.site)]
        for i, (metric, name) in enumerate([("resid_rms", "RMS"), ("resid_std", "std")]):
            ax = axes[i, j]
            hm = hv[hv.metric == metric]
            if len(hm):
                sns.lineplot(data=hm, x="depth", y="value", hue="step", hue_order=list(steps), palette=step_colors,
                             marker="o", ms=4, errorbar=None, ax=ax, legend=False)
            ax.set_yscale("log")
            every = max(1, math.ceil(len(ticks) / 10))
            ax.set_xticks(range(len(ticks))[::every], ticks[::every], rotation=60, ha="right", fontsize=8)
            ax.set_xlabel("")
            ax.set_ylabel(f"residual stream {name} (log)" if j == 0 else "")
            if i == 0:
                ax.set_title(f"{d.label(v)}\nη={_lr_str(d.comparison_lr(v))}", fontsize=9, color=d.colors[v],
                             fontweight="bold" if v == d.baseline else "normal")
    hs = [Line2D([], [], color=step_colors[s], marker="o", ms=4, lw=1.5) for s in steps]
    _legend_outside(fig, hs, [str(s) for s in steps], title="training step")
    fig.supxlabel("depth: embedding output, then the residual stream after each sublayer (layer.sublayer)",
                  fontsize=10)
    fig.suptitle("Residual-stream RMS and std over depth and training (mean over seeds)"
                 + _missing_note(missing), fontsize=12)
    fig.tight_layout()
    return fig


def fig_grad_norms(d: Data):
    vs, missing = _depth_variants(d)
    h = d.history
    h = h[(h.kind == "layer") & (h.metric == "grad_norm")]
    h = _runs_at(h, d, vs)
    h = h[_finite(h.value)]
    if not len(h):
        return _placeholder("Per-layer gradient norms", _no_stats_message(d))
    vs = [v for v in vs if v in set(h.variant)]
    last = h.groupby(["variant", "seed", "lr"]).step.transform("max")
    first = h.groupby(["variant", "seed", "lr"]).step.transform("min")
    panels = [(h[h.step == first], "at initialisation (step {})"),
              (h[(h.step == last) & (last > first)], "at the last statistics step ({})")]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), sharey=True)
    for ax, (hp, title) in zip(axes, panels):
        if len(hp):
            for v in vs:
                hv = hp[hp.variant == v]
                if len(hv):
                    sns.lineplot(data=hv, x="layer", y="value", color=d.colors[v], lw=_lw(d, v), marker="o",
                                 errorbar=t_errorbar, ax=ax, zorder=_z(d, v))
            st = sorted(hp.step.unique())
            title = title.format(st[0] if len(st) == 1 else f"{st[0]}–{st[-1]}: diverged runs stop early")
        else:
            ax.text(0.5, 0.5, "no later statistics step", transform=ax.transAxes, ha="center", color="0.4")
            title = title.format("none")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (block index)")
        ax.set_ylabel("gradient L2 norm of the layer's parameters (log)")
        layers = sorted(h.layer.unique())
        ax.set_xticks(layers)
    lr = {v: d.comparison_lr(v) for v in vs}
    hs, labels = _variant_handles(d, vs, {v: f" (η={_lr_str(lr[v])})" for v in vs})
    _legend_outside(fig, hs, labels, title="variant")
    fig.suptitle("Per-layer gradient norms (before clipping), mean with a 95% Student-t interval over seeds"
                 + _missing_note(missing), fontsize=12)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# 8. max attention logit over training, with and without QK-norm, at each LR
def fig_attn_logits(d: Data):
    vs = d.select(LOGIT_AXES)
    missing = [] if any(d.model_value(v, "qk_norm") is True for v in vs) else ["qk_norm variant"]
    if d.baseline not in vs:
        missing.insert(0, f"baseline {d.baseline!r}")
    h = d.history
    h = h[(h.kind == "layer") & (h.metric == "attn_logit_max") & h.variant.isin(vs)]
    h = h[_finite(h.value)]
    if not len(h):
        return _placeholder("Max attention logit", _no_stats_message(d) + _missing_note(missing))
    vs = [v for v in vs if v in set(h.variant)]
    m = h.groupby(["variant", "seed", "lr", "step"], as_index=False).value.max()
    lrs = sorted(m.lr.unique())
    fig, axes = plt.subplots(1, len(lrs) + 1, figsize=(3.6 * (len(lrs) + 1) + 1, 3.9), squeeze=False, sharey=True)
    axes = axes[0]
    pos = (m.value > 0).all()
    for ax, lr in zip(axes, lrs):
        ml = m[np.isclose(m.lr, lr)]
        for v in vs:
            mv = ml[ml.variant == v]
            if len(mv):
                sns.lineplot(data=mv, x="step", y="value", color=d.colors[v], lw=_lw(d, v), marker="o", ms=4,
                             errorbar=t_errorbar, ax=ax, zorder=_z(d, v))
        div = d.runs[np.isclose(d.runs.lr, lr) & d.runs.variant.isin(vs) & d.runs.diverged]
        note = f"; diverged: {', '.join(sorted(set(div.variant)))}" if len(div) else ""
        ax.set_title(f"η = {_lr_str(lr)}{note}", fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("max attention logit (max over layers)" if ax is axes[0] else "")
        if pos:
            ax.set_yscale("log")
    # summary: peak over training vs LR; diverged runs as x
    ax = axes[-1]
    peak = m.groupby(["variant", "seed", "lr"], as_index=False).value.max()
    peak = peak.merge(d.runs[["variant", "seed", "lr", "diverged"]], on=["variant", "seed", "lr"], how="left")
    peak["diverged"] = peak.diverged.fillna(False).astype(bool)
    for v in vs:
        pv = peak[peak.variant == v].groupby("lr", as_index=False).value.mean()
        sns.lineplot(data=pv, x="lr", y="value", color=d.colors[v], lw=_lw(d, v), errorbar=None, ax=ax,
                     zorder=_z(d, v))
    ok, bad = peak[~peak.diverged], peak[peak.diverged]
    ax.scatter(ok.lr, ok.value, c=[d.colors[v] for v in ok.variant], s=20, zorder=3)
    if len(bad):
        ax.scatter(bad.lr, bad.value, c=[d.colors[v] for v in bad.variant], marker="x", s=60, linewidths=2,
                   zorder=4)
    ax.set_xscale("log")
    if pos:
        ax.set_yscale("log")
    ax.set_xticks(lrs, [_lr_str(x) for x in lrs])
    ax.minorticks_off()
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("")
    ax.set_title("peak over training (● run, × diverged)", fontsize=10)
    hs, labels = _variant_handles(d, vs)
    _legend_outside(fig, hs, labels, title="variant")
    fig.suptitle("Max attention logit (q·k/√d) over training, with and without QK-norm; mean with a "
                 "95% Student-t interval over seeds" + _missing_note(missing), fontsize=12)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# sweeps: one figure per hyperparameter sweep of the grid (workflows/grid/sweeps.py)
SWEEP_PREFIX = "sweep_"


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
                     "mean": m, "low": lo, "high": hi, "seeds": int(_finite(r[col]).sum()),
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
        a1.annotate(f"η*={_lr_str(r.best_lr)} {r.marks}".rstrip(), (xi, r["mean"]), textcoords="offset points",
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


FIGURES = {
    "loss_by_variant": fig_loss_by_variant,
    "loss_vs_lr": fig_loss_vs_lr,
    "divergence_heatmap": fig_divergence_heatmap,
    "throughput": fig_throughput,
    "loss_curves": fig_loss_curves,
    "activations": fig_activations,
    "grad_norms": fig_grad_norms,
    "attn_logits": fig_attn_logits,
}


# ------------------------------------------------------------------------------------------------
# the claims scorecard (written by workflows.claims; not one of the FIGURES drawn from the tables)
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


def trajectory_figure(df: pd.DataFrame, traj: pd.DataFrame, out_png: Path, out_pdf: Path | None = None,
                      runs: pd.DataFrame | None = None) -> None:
    """Verdicts against training time: for every check of the final loss, its effect and 95% CI at each
    evaluation step (the learning curve's windows) against the check's fixed holds region, each point colored by
    the verdict it would get there; the last third of training (where a change makes the check "still moving")
    is shaded; the final verdict (whole validation split) is in the panel title. Written like ``save``
    (no timestamps)."""
    sns.set_theme(style="whitegrid", context="paper")
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
    handles.append(matplotlib.patches.Patch(color="#1a9850", alpha=0.2, label="'holds' region"))
    handles.append(matplotlib.patches.Patch(color="0.9", label="last third of training"))
    fig.legend(handles=handles, fontsize=7, loc="upper right", ncol=4, frameon=False)
    fig.suptitle("Verdicts against training time: effect [95% CI] of each final-loss check at every evaluation "
                 "(curve windows)", fontsize=9, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.02, 1, 0.93))
    add_subtitle(fig, scale_line(runs, None))
    for path, fmt in ((out_png, "png"), (out_pdf, "pdf")):
        if path is None:
            continue
        meta = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, metadata=meta)
    plt.close(fig)


def claims_figure(df: pd.DataFrame, out_png: Path, out_pdf: Path | None = None, runs: pd.DataFrame | None = None,
           baseline: str | None = None) -> None:
    """Write ``claims_forest`` as PNG (and PDF) atomically."""
    fig = claims_forest(df, runs, baseline)
    for path, fmt in ((out_png, "png"), (out_pdf, "pdf")):
        if path is None:
            continue
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
    plt.close(fig)


def claims_forest(df: pd.DataFrame, runs: pd.DataFrame | None = None, baseline: str | None = None):
    """Forest plot: each check's effect and 95% CI against its 'holds' region, one panel per unit; the
    subtitle states the scale of ``runs`` (``scale.scale_line``: params, tokens per run, seeds, device)."""
    sns.set_theme(style="whitegrid", context="paper")
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
    handles.append(matplotlib.patches.Patch(color="#1a9850", alpha=0.2, label="'holds' region"))
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


def figure_files(out, names=None) -> list[str]:
    """Every file ``render`` writes for ``names`` (all figures by default)."""
    return [f"{out}/{n}.{fmt}" for n in (names or FIGURES) for fmt in FORMATS]


def sweep_figures(grid: dict) -> list[str]:
    """The figure names of a grid's sweeps: ``sweep_<name>``."""
    return [SWEEP_PREFIX + n for n in grid.get("sweeps") or {}]


def draw(name: str, d: Data):
    """Figure ``name`` with its scale subtitle (params, tokens per run, seeds, device)."""
    fig = fig_sweep(d, name.removeprefix(SWEEP_PREFIX)) if name.startswith(SWEEP_PREFIX) else FIGURES[name](d)
    add_subtitle(fig, scale_line(d.runs, d.baseline))
    return fig


def render(d: Data, out, names=None) -> dict[str, str]:
    """Draw and save each figure; returns {name: error} for those that failed (the others are written)."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plt.rcParams.update({"figure.max_open_warning": 0})
    errors = {}
    for name in names or FIGURES:
        t0 = time.perf_counter()
        try:
            with np.errstate(all="ignore"):
                fig = draw(name, d)
            save(fig, Path(out), name)
            print(f"[figures] {name}: {time.perf_counter() - t0:.1f}s", flush=True)
        except Exception:  # noqa: BLE001 - report every failing figure, keep drawing the others
            plt.close("all")
            errors[name] = traceback.format_exc()
            print(f"[figures] {name} FAILED:\n{errors[name]}", file=sys.stderr, flush=True)
    return errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Draw the benchmark's figures (PNG + PDF) from the aggregated tables.")
    p.add_argument("--results", required=True, help="folder with runs.parquet, summary.csv, history.parquet")
    p.add_argument("--grid", help="grid.json (default: RESULTS/grid.json)")
    p.add_argument("--out", required=True, help="figures folder")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help=f"draw only these figures ({', '.join(FIGURES)}, and sweep_<name> per sweep of the grid)")
    p.add_argument("--data-meta", help="meta.json of the token files (WORK/data/KEY/meta.json): draws the training "
                                       "split's unigram entropy in the loss figures (absent: no line)")
    args = p.parse_args(argv)
    d = load(args.results, args.grid or Path(args.results) / "grid.json", args.data_meta)
    known = list(FIGURES) + sweep_figures(d.grid)
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        p.error(f"unknown figure(s) {unknown}; choose from {known}")
    errors = render(d, args.out, args.only or known)
    if errors:
        print(f"[figures] {len(errors)} figure(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    print(f"[figures] {len(args.only or known)} figures -> {args.out}/")
    return 0


# ------------------------------------------------------------------------------------------------
# per-layer weight norms over training: weight decay against norm inflation (Adam's update is blind
# to a parameter's scale, so without decay the norms only grow)
WEIGHT_DECAY_SWEEP = "weight_decay"  # the sweep whose values become the hue
MAX_LAYERS_SHOWN = 6  # layer columns of the weight-norm figure (first, last and evenly spaced between)
WHOLE_MODEL_SITES = {"embed": "token embedding", "pos": "position embedding", "head": "output head"}  # layer -1


def _weight_norm_layout(h: pd.DataFrame):
    """(whole-model sites, block sites, layers shown): at most MAX_LAYERS_SHOWN layers, evenly spaced."""
    whole = [s for s in WHOLE_MODEL_SITES if s in set(h.site[h.layer < 0])]
    block = sorted(set(h.site[h.layer >= 0]), key=lambda s: SITE_ORDER.get(s, 3))
    layers = np.array(sorted(h.layer[h.layer >= 0].unique()))
    if len(layers) > MAX_LAYERS_SHOWN:
        layers = layers[np.unique(np.round(np.linspace(0, len(layers) - 1, MAX_LAYERS_SHOWN)).astype(int))]
    return whole, block, [int(x) for x in layers]


def fig_weight_norms(d: Data):
    """Frobenius norm of each sublayer's weight matrices (and the embedding) vs training step: the
    embedding side in the first column, then one column per layer and one row per sublayer site; hue =
    weight decay for a weight-decay sweep, else the variant."""
    h = d.history
    h = h[(h.kind == "layer") & (h.metric == "weight_norm")]
    h = h[_finite(h.value)]
    if not len(h):
        return _placeholder("Per-layer weight norms", "no weight_norm rows in the history (recorded at "
                            "statistics steps; older runs and train.stats_every = 0 have none)")
    sweep = (d.grid.get("sweeps") or {}).get(WEIGHT_DECAY_SWEEP)
    present = set(h.variant)
    if sweep and any(item["variant"] in present for item in sweep["values"]):
        items = [item for item in sweep["values"] if item["variant"] in present]
        vs = [item["variant"] for item in items]
        hue = {item["variant"]: f"weight_decay = {item['label']}" for item in items}
        colors = dict(zip(hue.values(), sns.color_palette("viridis", len(items))))
        title = "AdamW weight decay"
    else:
        vs = [v for v in d.order if v in present]
        hue = {v: v for v in vs}
        colors = {v: d.colors[v] for v in vs}
        title = "variant"
    h = _runs_at(h, d, vs)
    whole, block, layers = _weight_norm_layout(h)
    nrows, ncols = max(len(whole), len(block), 1), 1 + len(layers)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.0, 2.6 * nrows), squeeze=False, sharex=True)
    cells = [(i, 0, -1, site) for i, site in enumerate(whole)]
    cells += [(i, j + 1, layer, site) for j, layer in enumerate(layers) for i, site in enumerate(block)]
    used = {(i, j) for i, j, _, _ in cells}
    for (i, j), ax in np.ndenumerate(axes):
        ax.set_visible((i, j) in used)
    for i, j, layer, site in cells:
        ax = axes[i, j]
        hp = h[(h.layer == layer) & (h.site == site)]
        for v in vs:
            hv = hp[hp.variant == v]
            if len(hv):
                sns.lineplot(data=hv, x="step", y="value", color=colors[hue[v]], lw=_lw(d, v), marker="o", ms=3,
                             errorbar=t_errorbar, ax=ax, zorder=_z(d, v))
        ax.set_title(WHOLE_MODEL_SITES[site] if layer < 0 else f"layer {layer} · {site}", fontsize=10)
        bottom = (i + 1, j) not in used  # the lowest panel of its column carries the step axis
        ax.tick_params(labelbottom=bottom)
        ax.set_xlabel("training step" if bottom else "")
        ax.set_ylabel("Frobenius norm" if j == 0 or (j == 1 and i >= len(whole)) else "")
    hs = [Line2D([], [], color=colors[hue[v]], lw=_lw(d, v), marker="o", ms=4) for v in vs]
    _legend_outside(fig, hs, [f"{hue[v]} (η={_lr_str(d.comparison_lr(v))})" for v in vs], title=title)
    n_layers = int(h.layer.max()) + 1 if (h.layer >= 0).any() else 0
    shown = "" if len(layers) == n_layers else f" (layers {layers} of {n_layers})"
    fig.suptitle("Weight norms over training (weight matrices of each sublayer, before the step's update)"
                 f"{shown}; mean with a 95% Student-t interval over seeds", fontsize=12)
    fig.tight_layout()
    return fig


FIGURES["weight_norms"] = fig_weight_norms


if __name__ == "__main__":
    sys.exit(main())
