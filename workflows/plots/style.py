"""The look shared by every figure: the themes, the one variant order and palette, the fixed jitter seed and
the scale subtitle.

- ``grid_theme`` (the grid's figures) and ``paper_theme`` (the claims figures): seaborn themes; the ladder,
  decode and operator-profile figures keep matplotlib's defaults (each is drawn by its own command).
- ``variant_order`` / ``palette``: the grid's variant order and variant → colour (the baseline black), the
  same in every figure; ``distinct_colors``: n colours as different as possible.
- ``fixed_jitter``: seaborn's ``stripplot`` jitters with numpy's global generator; every jittered figure draws
  its dots under ``fixed_jitter()`` (seed ``JITTER_SEED``), so the dots land in the same place every render.
- ``add_subtitle``: put the scale line (``workflows.analysis.scale.scale_line``) under a finished figure's title.
"""
from __future__ import annotations

import contextlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

BASELINE_COLOR = (0.0, 0.0, 0.0)
DIVERGED_COLOR = (0.45, 0.45, 0.45)
UNIGRAM_COLOR = (0.55, 0.2, 0.55)
UNIGRAM_GID = "unigram_entropy"  # gid of the reference lines, for tests
SUBTITLE_GID = "scale_subtitle"  # gid of the scale subtitle, for tests
JITTER_SEED = 0  # numpy's global seed while a figure draws its jittered dots (loss_by_variant, throughput)


def grid_theme() -> None:
    """The theme of the grid's figures (``python -m workflows.plots``)."""
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plt.rcParams.update({"figure.max_open_warning": 0})


def paper_theme() -> None:
    """The theme of the claims figures (forest and trajectory)."""
    sns.set_theme(style="whitegrid", context="paper")


@contextlib.contextmanager
def fixed_jitter(seed: int = JITTER_SEED):
    """Seed numpy's global generator for the block (seaborn's stripplot jitter draws from it), then restore
    the generator's state, so a figure's dots depend neither on what ran before nor on the process."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------------------------------------
# The one order and the one palette
def variant_order(grid: dict, present=None) -> list[str]:
    """The grid's variant order, restricted to ``present`` (any extra variants appended, sorted)."""
    order = list(grid.get("order") or grid.get("variants") or [])
    if present is None:
        return order
    present = set(present)
    return [v for v in order if v in present] + sorted(present - set(order))


def distinct_colors(n: int) -> list[tuple]:
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
    cols = iter(distinct_colors(max(0, len([v for v in order if v != base]))))
    return {v: BASELINE_COLOR if v == base else next(cols) for v in order}


# ------------------------------------------------------------------------------------------------
# The scale subtitle
def add_subtitle(fig, text: str, fontsize: float = 9, color: str = "0.3", pad_pt: float = 3.0):
    """Put ``text`` under the figure's suptitle (or on top, if it has none), after the layout is done.

    The figure grows by the subtitle's height; every axes, figure text and figure legend keeps its
    distance from the bottom edge, and the suptitle moves up into the new band, so the subtitle fills
    the gap the suptitle leaves and overlaps nothing. Returns the subtitle's Text (gid SUBTITLE_GID)."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    w, h = fig.get_size_inches()
    probe = fig.text(0, 0, text, fontsize=fontsize)
    dh = probe.get_window_extent(renderer).height / fig.dpi + 2 * pad_pt / 72
    probe.remove()
    sup = fig._suptitle
    legends = [(leg, leg.get_bbox_to_anchor().transformed(fig.dpi_scale_trans.inverted())) for leg in fig.legends]
    scale = h / (h + dh)
    fig.set_size_inches(w, h + dh)
    for ax in fig.axes:
        pos = ax.get_position(original=True)
        ax.set_position([pos.x0, pos.y0 * scale, pos.width, pos.height * scale])
    for t in fig.texts:
        x, y = t.get_position()
        t.set_position((x, y * scale + (dh / (h + dh) if t is sup else 0.0)))
    for leg, box in legends:  # anchors keep their distance from the bottom-left corner (in figure fractions:
        # savefig(bbox_inches="tight") shifts transFigure, not dpi_scale_trans)
        leg.set_bbox_to_anchor(Bbox(box.get_points() / [w, h + dh]), transform=fig.transFigure)
    if sup is not None:
        # the band the suptitle left: from its old bottom edge up by dh
        fig.canvas.draw()
        bottom = sup.get_window_extent(fig.canvas.get_renderer()).y0 / fig.dpi  # inches, after the move
        y = (bottom - pad_pt / 72) / (h + dh)
        x, ha = sup.get_position()[0], sup.get_horizontalalignment()
    else:
        y, x, ha = 1 - pad_pt / 72 / (h + dh), 0.5, "center"
    return fig.text(x, y, text, fontsize=fontsize, color=color, ha=ha, va="top", gid=SUBTITLE_GID)
