"""The grid's figures: the aggregated tables → seaborn figures, each saved as PNG and PDF.

    python -m workflows.plots --results results --grid results/grid.json --out figures [--only NAME ...] \\
        [--data-meta WORK/data/KEY/meta.json]

Reads the results folder (``tables.load``: runs, summary, history, side-by-side speed, n-gram references), the
grid description ``grid.json`` and, with ``--data-meta``, the training split's unigram entropy. Every figure
uses the grid's one variant order (``grid["order"]``) and one palette (``style.palette``: variant → colour,
fixed by the grid order, the baseline always black), and has a subtitle stating its scale
(``workflows.analysis.scale.scale_line``: parameters, training tokens per run, seeds, device).

Figures (``registry.names("grid")``, drawn by ``runs`` and ``layers``): loss_by_variant, loss_vs_lr,
divergence_heatmap, throughput, loss_curves, activations, grad_norms, attn_logits, weight_norms; and
``sweep_<name>`` per sweep of the grid (``sweeps``). Diverged runs (NaN losses) are drawn as such, never
dropped silently. A figure that fails is reported and the others are still written (exit status 1).
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from workflows.analysis.scale import scale_line
from workflows.plots import layers, registry, runs, sweeps
from workflows.plots.save import save
from workflows.plots.style import add_subtitle, grid_theme, plt
from workflows.plots.tables import Data, load

DRAWS = {**runs.DRAWS, **layers.DRAWS, **sweeps.DRAWS}
FIGURES = {name: DRAWS[name] for name in registry.names("grid")}  # the grid's fixed figures, in drawing order


def draw(name: str, d: Data):
    """Figure ``name`` with its scale subtitle (params, tokens per run, seeds, device)."""
    if name.startswith(registry.SWEEP_PREFIX):
        fig = DRAWS[registry.SWEEP](d, name)  # sweep_<name>: the one function of every sweep
    else:
        fig = FIGURES[name](d)
    add_subtitle(fig, scale_line(d.runs, d.baseline))
    return fig


def render(d: Data, out, names=None) -> dict[str, str]:
    """Draw and save each figure; returns {name: error} for those that failed (the others are written)."""
    grid_theme()
    errors = {}
    for name in names or FIGURES:
        t0 = time.perf_counter()
        try:
            with np.errstate(all="ignore"):
                fig = draw(name, d)
            save(fig, Path(out) / f"{name}.png")
            print(f"[figures] {name}: {time.perf_counter() - t0:.1f}s", flush=True)
        except Exception:  # noqa: BLE001 - report every failing figure, keep drawing the others
            plt.close("all")
            errors[name] = traceback.format_exc()
            print(f"[figures] {name} FAILED:\n{errors[name]}", file=sys.stderr, flush=True)
    return errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workflows.plots",
                                description="Draw the benchmark's figures (PNG + PDF) from the aggregated tables.")
    p.add_argument("--results", required=True, help="folder with runs.parquet, summary.csv, history.parquet")
    p.add_argument("--grid", help="grid.json (default: RESULTS/grid.json)")
    p.add_argument("--out", required=True, help="figures folder")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help=f"draw only these figures ({', '.join(FIGURES)}, and sweep_<name> per sweep of the grid)")
    p.add_argument("--data-meta", help="meta.json of the token files (WORK/data/KEY/meta.json): draws the training "
                                       "split's unigram entropy in the loss figures (absent: no line)")
    args = p.parse_args(argv)
    d = load(args.results, args.grid or Path(args.results) / "grid.json", args.data_meta)
    known = list(FIGURES) + registry.sweep_names(d.grid.get("sweeps"))
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        p.error(f"unknown figure(s) {unknown}; choose from {known}")
    errors = render(d, args.out, args.only or known)
    if errors:
        print(f"[figures] {len(errors)} figure(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    print(f"[figures] {len(args.only or known)} figures -> {args.out}/")
    return 0
