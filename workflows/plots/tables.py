"""The grid's aggregated tables as one object (``Data``, read by ``load``) and the drawing helpers the grid's
figures share (``runs``, ``layers``, ``sweeps``): the unigram and n-gram reference lines, the family facets,
the variant legends, the seed intervals seaborn draws.

``load`` reads ``runs.parquet`` (or ``runs.csv``), ``summary.csv``, ``history.parquet``, ``speed.parquet`` and
``ngram.json`` from a results folder (written by ``workflows.analysis.aggregate`` and the rules before it), the
grid description ``grid.json`` and, with ``data_meta``, the training split's unigram entropy from the token
files' ``meta.json``.

Intervals: a mean over seeds gets a 95% Student-t interval over seeds (``stats.mean_ci``; those taken from
``summary.csv`` were computed the same way, Δ over the seed-paired differences); the throughput median gets a
distribution-free order-statistic interval (``stats.median_ci``). No bootstrap.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from workflows.analysis import stats
from workflows.analysis.flags import flag_marks
from workflows.plots.style import BASELINE_COLOR, UNIGRAM_COLOR, UNIGRAM_GID, palette, variant_order

LOSS = "nats/token"


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
def wrap(text: str, width: int = 60) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def lr_str(lr: float) -> str:
    return f"{lr:g}" if np.isfinite(lr) else "n/a"


def finite(s: pd.Series) -> pd.Series:
    return s.notna() & np.isfinite(s.astype(float))


def missing_note(missing: list[str]) -> str:
    return f"\n(not in this grid: {'; '.join(missing)})" if missing else ""


def style_variant_ticks(ax, d: Data, axis: str = "y") -> None:
    """Bold the baseline's tick label and colour every variant's label with its palette colour."""
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    for t in labels:
        v = t.get_text().split(" ", 1)[0]  # a variant name, maybe followed by its flag marks
        if v in d.colors:
            t.set_color(d.colors[v] if v != d.baseline else BASELINE_COLOR)
            if v == d.baseline:
                t.set_fontweight("bold")


def variant_lw(d: Data, v: str) -> float:
    return 2.6 if v == d.baseline else 1.6


def variant_z(d: Data, v: str) -> float:
    """The baseline is drawn thick and underneath, so a variant that matches it stays visible."""
    return 1.5 if v == d.baseline else 2.5


def facets(n: int, ncols: int, w: float, h: float, **kw):
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, **kw)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def family_groups(d: Data, variants=None) -> list[tuple[str, list[str]]]:
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


def placeholder(title: str, message: str):
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.axis("off")
    fig.suptitle(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11, color="0.3",
            transform=ax.transAxes)
    return fig


def legend_outside(fig, handles, labels, title=None, ncol=1):
    fig.legend(handles, labels, title=title, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               ncol=ncol)


def variant_handles(d: Data, variants, extra: dict | None = None):
    hs = [Line2D([], [], color=d.colors[v], lw=variant_lw(d, v), marker="o", ms=4) for v in variants]
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


def unigram_key(d: Data) -> list:
    refs = [Line2D([], [], color=UNIGRAM_COLOR, ls=ls, lw=0.9,
                   label=f"smoothed {name} on the same evaluation tokens = {x:.2f}") for name, x, ls in ngram_refs(d)]
    if not np.isfinite(d.unigram_entropy):
        return refs
    return [Line2D([], [], color=UNIGRAM_COLOR, ls="-.", lw=1.0,
                   label=f"unigram entropy of the training split H₁ = {d.unigram_entropy:.2f}")] + refs


def variant_marks(d: Data) -> dict[str, str]:
    """variant → its flag marks from summary.csv ('†↗≈⊘': ``workflows.analysis.flags.FLAGS``, rules in
    ``FLAG_RULES``)."""
    if "variant" not in d.summary.columns:
        return {}
    return {r["variant"]: flag_marks(r) for _, r in d.summary.iterrows()}
