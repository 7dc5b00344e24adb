"""The operator-profile figure, written by ``python -m workflows.bench.opprofile --figure PATH.png`` from its
table: per variant a FLOP-share bar beside a time-share bar, stacked by operator class (the bench's ``CLASSES``,
coloured by ``COLORS``), and the published reference pair (the bench's ``IVANOV``, hatched). Matplotlib's
default theme.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import PercentFormatter

from workflows.plots.save import save
from workflows.plots.style import add_subtitle

COLORS = {"matmul": "#4c72b0", "normalisation": "#dd8452", "element-wise": "#55a868", "softmax-attention": "#c44e52",
          "optimizer": "#8172b3", "other": "#937860", "framework": "#bbbbbb"}


def fig_op_profile(df: pd.DataFrame, classes, reference: dict, scale: str):
    """FLOP share beside time share by operator class (``classes``, in stacking order) per variant and the
    ``reference`` pair (its ``label``, ``flop_share`` and ``time_share`` by class); ``scale``: the subtitle."""
    variants = list(dict.fromkeys(df.variant))
    groups = [(v, df[df.variant == v].set_index("class")) for v in variants]
    fig, ax = plt.subplots(figsize=(1.6 * (len(groups) + 1) + 2.5, 4.2))
    width, labels, ticks = 0.38, [], []
    for i, (v, t) in enumerate(groups + [(reference["label"], None)]):
        for j, share in enumerate(("flop_share", "time_share")):
            x, bottom = i + (j - 0.5) * (width + 0.03), 0.0
            for c in classes:
                h = float(t.loc[c, share]) if t is not None else reference[share].get(c, 0.0)
                if h > 0:
                    ax.bar(x, h, width, bottom=bottom, color=COLORS[c], edgecolor="white", linewidth=0.5,
                           hatch="//" if t is None else None, label=c)
                if h >= 0.04:  # the share, where it fits
                    ax.text(x, bottom + h / 2, f"{100 * h:.1f}%", ha="center",
                            va="center", fontsize=6.5, color="white")
                bottom += h
            ax.text(x, -0.02, "FLOPs" if j == 0 else "time", ha="center", va="top", fontsize=7, rotation=90)
        labels.append(v)
        ticks.append(i)
    ax.set_xticks(ticks, [l.replace(" (", "\n(") for l in labels], fontsize=8)
    ax.tick_params(axis="x", pad=26)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the training step")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    handles = {}
    for h, l in zip(*ax.get_legend_handles_labels()):
        handles.setdefault(l, h)
    ax.legend([handles[c] for c in classes if c in handles], [c for c in classes if c in handles],
              loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_title("FLOP share vs time share by operator class (hatched: BERT/V100 reference; its normalisation "
                 "includes softmax)", fontsize=8)
    fig.suptitle("Where the time of a training step goes")
    fig.tight_layout()
    add_subtitle(fig, scale)
    return fig


def figure(df: pd.DataFrame, path, classes, reference: dict, scale: str):
    """``fig_op_profile``, saved as ``path`` (.png) and its .pdf when ``path`` is given. Returns the figure."""
    fig = fig_op_profile(df, classes, reference, scale)
    if path is not None:
        save(fig, Path(path).with_suffix(".png"))
    return fig


DRAWS = {"op_profile": fig_op_profile}
