"""The LR pilot: choose each variant's learning rate on pilot seeds, before its evaluation runs.

    python -m workflows.analysis.pilot --grid RESULTS/grid.json --runs RESULTS/pilot/<variant>/... --out RESULTS

A grid with ``lr_pilot: {seeds: [...]}`` (``workflows.grid.grid``) trains every variant with several candidate LRs
once per (pilot seed, candidate LR). This step reads those pilot runs and assigns each variant the candidate
with the lowest mean *capped* final loss over the pilot seeds (``selection.lr_scores``: a diverged run counts
as its loss at initialisation; ties go to the smaller LR). A variant with a single candidate LR is assigned it
as fixed in the config (no pilot runs). The evaluation seeds then train once each at the assigned LR, so no
effect is estimated on the seeds that chose its LR (no winner's curse: van Hasselt 2013; Cawley & Talbot
2010) and no estimator has to re-choose the LR inside a resample of 3-4 seeds.

Outputs (atomic): ``lr_assignment.json`` (what the evaluation jobs read: per variant the assigned LR, its
source, the candidates and their pilot scores, whether it lies at the edge of the candidates) and
``pilot_runs.csv`` (one row per pilot run: the same columns as runs.csv, ``stage`` = pilot).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from workflows.analysis import selection
from workflows.analysis.aggregate import run_row
from workflows.io import atomic_path, write_json

RULE = ("the candidate LR with the lowest mean capped final validation loss over the pilot seeds (a diverged run "
        "counts as its loss at init; ties: the smaller LR)")


def assign(pilot_runs: pd.DataFrame, grid: dict) -> dict:
    """{"rule", "pilot_seeds", "variants": {variant: {"lr", "source", "candidates", "scores", "at_edge",
    "pilot_runs"}}} for every variant of ``grid`` (grid.json): from ``pilot_runs`` where it has pilot runs,
    else its single candidate LR (``source`` = fixed)."""
    out = {}
    for v in grid["order"]:  # at_edge: None (not decidable) for a fixed LR or 2 candidates
        cands = [float(x) for x in grid["variants"][v]["lrs"]]
        r = pilot_runs[pilot_runs.variant == v] if len(pilot_runs) else pilot_runs
        if len(cands) == 1:
            out[v] = {"lr": cands[0], "source": "fixed", "candidates": cands, "scores": {}, "at_edge": None,
                      "pilot_runs": 0}
            continue
        missing = sorted(set(map(float, cands)) - {float(x) for x in r.lr}) if len(r) else cands
        if missing:
            raise ValueError(f"variant {v!r} has no pilot run at LR {missing}: the pilot is incomplete")
        scores = selection.lr_scores(r)
        lr = selection.best_lr(r)
        # at the edge of >= 3 candidates: the optimum may lie outside them (with 2 every choice is an edge: undecided)
        edge = (math.isclose(lr, min(cands)) or math.isclose(lr, max(cands))) if len(cands) >= 3 else None
        out[v] = {"lr": lr, "source": "pilot", "candidates": cands,
                  "scores": {f"{k:g}": round(float(x), 6) for k, x in scores.items()},
                  "at_edge": None if edge is None else bool(edge),
                  "pilot_runs": int(len(r))}
    return {"rule": RULE, "pilot_seeds": grid.get("pilot_seeds", []), "variants": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", required=True, help="grid.json")
    p.add_argument("--runs", nargs="*", default=[], help="pilot job folders (RESULTS/pilot/<variant>)")
    p.add_argument("--out", required=True, help="folder for lr_assignment.json and pilot_runs.csv")
    args = p.parse_args(argv)
    grid = json.loads(Path(args.grid).read_text())
    rows = []
    for job in map(Path, args.runs):
        for metrics in sorted(job.glob("seed*/lr*/metrics.json")):
            rows.append(run_row(metrics.parent, grid)[0])
    runs = pd.DataFrame(rows)
    if len(runs):
        runs.insert(1, "stage", "pilot")
    try:
        a = assign(runs, grid)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_json(out / "lr_assignment.json", a)
    with atomic_path(out / "pilot_runs.csv") as tmp:
        runs.to_csv(tmp, index=False)
    for v, x in a["variants"].items():
        print(f"{v}: LR {x['lr']:g} ({x['source']}" + (f"; scores {x['scores']}" if x["scores"] else "")
              + (", at the edge of its candidates" if x["at_edge"] else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
