"""The ladder's figures, written by ``python -m workflows.analysis.ladder --figures DIR`` from its tables
(``workflows.analysis.ladder``: ``ladder_table``, the seeds' ``points`` and the ``fit_lines``):

- ``ladder_curves``: each variant's loss against training compute over the rungs beside the baseline's (dots:
  seeds at their cross-fitted LR, on a pilot grid the pilot's choice: ``lr_label``; bars: 95% t intervals; lines:
  the fit, drawn over the rungs only);
- ``compute_multiplier``: each change as a compute multiplier per rung with its 95% interval over seeds.

The baseline is black, the other arms ``style.distinct_colors`` in the ladder's order; matplotlib's default theme.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from workflows.analysis.scale import scale_line
from workflows.plots.save import save
from workflows.plots.style import BASELINE_COLOR, add_subtitle, distinct_colors


def _arms(table: pd.DataFrame, ladder: dict) -> tuple[str, list[str], dict]:
    """(baseline, the other arms in the table, arm → colour)."""
    b = ladder["baseline"]
    arms = [a for a in ladder["arms"] if a in set(table.variant)]
    others = [a for a in arms if a != b]
    cols = dict(zip(others, distinct_colors(len(others))))
    cols[b] = BASELINE_COLOR
    return b, others, cols


def _rung_ticks(ax, table: pd.DataFrame, baseline: str) -> None:
    """One tick per rung at the baseline's compute, labelled with the rung."""
    bt = table[table.variant == baseline].sort_values("compute")
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(bt.compute.to_numpy(dtype=float), [f"{r}\n{c:.2g}" for r, c in zip(bt.rung, bt.compute)],
                  fontsize=7)


def lr_label(lr_protocol: str | None) -> str:
    """Which LR each seed's dot is at. The ladder analysis cross-fits every cell's LRs
    (``workflows.analysis.ladder.cells``), also on a grid with a shared compare_lr; on a pilot grid (grid.json's
    ``lr_protocol``) each cell has one LR, its pilot's choice."""
    return "each seed at the LR its arm's pilot chose" if lr_protocol == "pilot" else "each seed at its cross-fitted LR"


def fig_ladder_curves(table: pd.DataFrame, points: pd.DataFrame, lines: pd.DataFrame, ladder: dict,
                      runs: pd.DataFrame | None = None, unigram_entropy: float = math.nan,
                      baseline_label: str | None = None, lr_protocol: str | None = None):
    """Loss against compute, one panel per arm beside the baseline: ``points`` (each seed), ``table``'s means
    and intervals, ``lines`` (the fit over the rungs); the subtitle states the scale of ``runs``, the y label the
    LR of the dots (``lr_label`` of grid.json's ``lr_protocol``)."""
    b, others, cols = _arms(table, ladder)

    def curve(ax, arm):
        t = table[table.variant == arm].sort_values("compute")
        p = points[points.variant == arm]
        ax.scatter(p.compute, p.loss, s=14, color=cols[arm], alpha=0.55, lw=0, zorder=3)
        ax.errorbar(t.compute, t.loss, yerr=[t.loss - t.loss_low, t.loss_high - t.loss], fmt="o", ms=5,
                    color=cols[arm], capsize=3, zorder=4, label=arm)
        line = lines[lines.variant == arm]
        if len(line):  # the fit drawn over the rungs only: no extrapolation
            r2 = f"R² {t.r2.iloc[0]:.2f}" if np.isfinite(t.r2.iloc[0]) else "exact: no R² with 2 rungs"
            ax.plot(line.compute.to_numpy(), line.loss.to_numpy(), color=cols[arm], lw=2.2 if arm == b else 1.5,
                    label=f"{arm} fit ({r2})")

    n = max(1, len(others))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False, sharey=True)
    for ax, arm in zip(axes.flat, others or [b]):
        curve(ax, b)
        if arm != b:
            curve(ax, arm)
        if np.isfinite(unigram_entropy):
            ax.axhline(unigram_entropy, color="0.5", ls="-.", lw=1, zorder=0.5)
            ax.text(0.99, unigram_entropy, f"unigram H₁ = {unigram_entropy:.2f}", transform=ax.get_yaxis_transform(),
                    ha="right", va="bottom", fontsize=7, color="0.4")
        ax.set_xscale("log")
        _rung_ticks(ax, table, b)
        ax.set_title(f"{arm} vs {b}" if arm != b else b, fontsize=10)
        ax.set_xlabel("training compute (PaLM FLOPs)")
        ax.legend(fontsize=7, frameon=False, loc="upper right" if not np.isfinite(unigram_entropy) else "lower left")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel(f"final validation loss (nats/token)\n{lr_label(lr_protocol)}")
    fig.suptitle(f"Loss against compute over the ladder's rungs: dots seeds, bars 95% t intervals,\nlines the "
                 f"{ladder['fit']} fit (drawn over the rungs only)", fontsize=10)
    fig.tight_layout()
    add_subtitle(fig, scale_line(runs, baseline_label))
    return fig


def fig_compute_multiplier(table: pd.DataFrame, ladder: dict, runs: pd.DataFrame | None = None,
                           baseline_label: str | None = None):
    """Each arm's compute multiplier per rung; the subtitle states the scale of ``runs``."""
    b, others, cols = _arms(table, ladder)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, arm in enumerate(others):
        t = table[table.variant == arm].sort_values("compute")
        x = t.compute.to_numpy(dtype=float) * 1.04 ** (k - (len(others) - 1) / 2)  # arms side by side
        m = t.multiplier.to_numpy(dtype=float)
        ok = np.isfinite(m)
        lo = np.where(np.isfinite(t.multiplier_low), t.multiplier_low, m)
        hi = np.where(np.isfinite(t.multiplier_high), t.multiplier_high, m)
        ax.errorbar(x[ok], m[ok], yerr=[(m - lo)[ok], (hi - m)[ok]], fmt="o-", color=cols[arm], capsize=3,
                    ms=5, lw=1.2, label=arm)
        for xi, (_, row) in zip(x, t.iterrows()):
            if not np.isfinite(row.multiplier):
                ax.annotate("undefined", (xi, 1.0), rotation=90, ha="center", va="bottom", fontsize=7,
                            color=cols[arm])
            elif row.get("extrapolated"):
                ax.annotate("extrap.", (xi, row.multiplier_high), ha="center", va="bottom", fontsize=6,
                            color=cols[arm])
    ax.axhline(1.0, color="0.3", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _rung_ticks(ax, table, b)
    ax.set_xlabel("training compute of the variant's rung (PaLM FLOPs)")
    ax.set_ylabel(f"compute multiplier vs {b}\n(> 1: worth that much extra compute)")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3, which="both")
    axes = set(table.get("axis", pd.Series(dtype=str)).dropna()) - {""}
    if axes == {"training length"}:
        hs = sorted(ladder["horizons"].values())
        curve = f"the baseline's training-length curve at that rung ({hs[0]:g}x-{hs[-1]:g}x its steps)"
    elif axes == {"model size"}:
        curve = "the baseline's model-size curve (the rungs either side)"
    else:
        curve = "the curve in each row's 'axis' (training length or model size)"
    fig.suptitle("Each change as a compute multiplier per rung: each seed against its own baseline at that rung,\n"
                 f"Δloss over the local slope of {curve};\n95% t interval over seeds; 'extrap.': beyond the "
                 "points either side", fontsize=8)
    fig.tight_layout()
    add_subtitle(fig, scale_line(runs, baseline_label))
    return fig


def figures(table: pd.DataFrame, points: pd.DataFrame, lines: pd.DataFrame, ladder: dict, out,
            runs: pd.DataFrame | None = None, unigram_entropy: float = math.nan,
            baseline_label: str | None = None, lr_protocol: str | None = None) -> list[Path]:
    """Draw ladder_curves and compute_multiplier (PNG + PDF) into ``out``; returns the paths."""
    paths = save(fig_ladder_curves(table, points, lines, ladder, runs, unigram_entropy, baseline_label, lr_protocol),
                 Path(out) / "ladder_curves.png")
    return paths + save(fig_compute_multiplier(table, ladder, runs, baseline_label),
                        Path(out) / "compute_multiplier.png")


DRAWS = {"ladder_curves": fig_ladder_curves, "compute_multiplier": fig_compute_multiplier}
