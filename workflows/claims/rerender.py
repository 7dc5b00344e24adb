"""Re-render a finished grid's scorecard, tables and figures from its committed run tables, without training.

    python -m workflows.claims.rerender results/reference/cpu-default [--out DIR] [--work work]

A results folder (a committed reference under ``results/reference/``, or a pipeline's ``results/``) holds the run
tables every later stage reads: ``runs.parquet``, ``grid.json``, ``history.parquet``, ``summary.csv``,
``probes/*.parquet``, ``speed.parquet``, ``ngram.json`` and, where the grid made them, ``decode.parquet`` and
``op_profile.parquet``. This command runs the same commands as the pipeline's rules on those tables, for what the
folder already has:

- the scorecard (``claims.csv``, ``claims.md``, ``claims_trajectory.csv`` and their figures): ``workflows.claims``;
- the ladder's tables and figures (``ladder.csv`` ...): ``workflows.analysis.ladder``;
- the replication report (``replication.csv``/``.md``) against the results folder one level up (a reference's
  ``replicate/``) or ``--original``: ``workflows.analysis.replicate``;
- every grid figure that ``DIR/figures`` (or the folder's ``figures/``) already has: ``workflows.plots``; the
  unigram-entropy line needs the token files (``--work``: the pipeline's work folder, where ``data/<key>/meta.json``
  of the grid's data is; without it the figures are skipped);
- the decode figure and the operator profile's table and figure, from their tables.

With the code that wrote them, every output is byte-identical (``tests/claims/test_rerender.py`` checks the
committed references' tables). ``--out`` defaults to the folder itself.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from workflows.analysis import ladder, replicate
from workflows.bench import decode, opprofile
from workflows.claims import scorecard
from workflows.grid.config import CLAIMS_GRIDS, DataConfig
from workflows.plots import registry
from workflows.plots import render as plots


def data_meta(results: Path, work: Path | None) -> Path | None:
    """The grid's token files' meta.json under ``work`` (None when they are not built there)."""
    if work is None:
        return None
    data = json.loads((results / "grid.json").read_text()).get("data")
    meta = work / "data" / DataConfig.from_dict(data or {}).key() / "meta.json"
    return meta if meta.exists() else None


def rerender(results: Path, out: Path, work: Path | None = None, original: Path | None = None,
             registry_path: str = "config/claims.yaml") -> list[str]:
    """Re-render what ``results`` has into ``out``; returns the stages run."""
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    meta = data_meta(results, work)
    done = []
    has = (lambda name: (results / name).exists())
    if has("ladder.csv"):
        ladder.main(["--runs", str(results / "runs.parquet"), "--grid", str(results / "grid.json"), "--out", str(out),
                     "--figures", str(figures)] + (["--data-meta", str(meta)] if meta else []))
        done.append("ladder")
    if has("claims.csv"):
        args = ["--registry", registry_path, "--runs", str(results / "runs.parquet"), "--grid",
                str(results / "grid.json"), "--probes", *map(str, sorted((results / "probes").glob("*.parquet"))),
                "--grids", *CLAIMS_GRIDS, "--csv", str(out / "claims.csv"), "--md", str(out / "claims.md"),
                "--figure", str(figures / "claims.png")]
        if has("history.parquet"):
            args += ["--history", str(results / "history.parquet")]
        if has("ngram.json"):
            args += ["--ngram", str(results / "ngram.json"), "--trajectory", str(out / "claims_trajectory.csv"),
                     "--trajectory-figure", str(figures / "claims_trajectory.png")]
        if has("speed.parquet"):
            args += ["--speed", str(results / "speed.parquet")]
        tables = {"decode": results / "decode.parquet", "op_profile": results / "op_profile.parquet"}
        args += ["--table", *(f"{k}={v}" for k, v in tables.items() if v.exists())]
        scorecard.main(args)
        done.append("claims")
    if has("replication.csv"):
        first = original or results.parent
        if out.resolve() != results.resolve():  # the report reads run B's seeds from its grid.json
            shutil.copyfile(results / "grid.json", out / "grid.json")
        replicate.main([str(first), str(out), "--out", str(out)])
        done.append("replication")
    drawn = [n for n in registry.names("grid") + [p.stem for p in (results / "figures").glob("sweep_*.png")]
             if (results / "figures" / f"{n}.png").exists()]
    if drawn and meta:
        plots.main(["--results", str(results), "--grid", str(results / "grid.json"), "--out", str(figures),
                    "--data-meta", str(meta), "--only", *drawn])
        done.append("figures")
    elif drawn:
        print(f"grid figures skipped: no token files of the grid's data under --work ({work})", file=sys.stderr)
    if has("decode.parquet"):
        decode.main(["--plot", str(results / "decode.parquet"), "--figures", str(figures)])
        done.append("decode")
    if has("op_profile.parquet"):
        opprofile.main(["--plot", str(results / "op_profile.parquet"), "--md", str(out / "op_profile.md"),
                        "--figure", str(figures / "op_profile.png")])
        done.append("op_profile")
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a results folder with its run tables (results/reference/<name>)")
    p.add_argument("--out", type=Path, help="where to write (default: the folder itself)")
    p.add_argument("--work", type=Path, help="the pipeline's work folder (its token files: the unigram line)")
    p.add_argument("--original", type=Path, help="the first run's results folder (replication.md; default: the parent)")
    p.add_argument("--registry", default="config/claims.yaml")
    a = p.parse_args(argv)
    if not (a.results / "grid.json").exists():
        p.error(f"{a.results} has no grid.json: not a results folder")
    done = rerender(a.results, a.out or a.results, a.work, a.original, a.registry)
    print(f"re-rendered {a.results}: {', '.join(done) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
