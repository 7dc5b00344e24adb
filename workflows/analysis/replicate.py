"""Does a verdict replicate? Two scorecards of the same grid on disjoint seeds, compared check by check.

    python -m workflows.analysis.replicate RESULTS_A RESULTS_B [--out DIR]      # DIR defaults to RESULTS_B

RESULTS_A/claims.csv and RESULTS_B/claims.csv (and their grid.json, for the seeds) → DIR/replication.csv and
DIR/replication.md: for each check both verdicts, both effects with their 95% CIs, and the outcome —

- ``replicated``: decided (holds or contradicted) in both runs, the same way;
- ``conflict``: holds in one run and contradicted in the other;
- ``decided once``: decided in one run, undecided (inconclusive / not judged) in the other;
- ``undecided``: decided in neither; ``not run``: not run in either.

A verdict counts as evidence when it replicated: the second run's seeds are fresh (``seed_offset``), so a verdict
that survives them is not an accident of the first run's seeds. Make the second run with
``snakemake --cores all --config seed_offset=1000 results=results/replicate work=work/replicate figures=figures/replicate logs=logs/replicate replicate_of=results``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from workflows.io import write_csv, write_text

DECIDED = ("holds", "contradicted")
PROBE_KINDS = ["probe", "probe_delta"]  # measured on the probes' own small models, not on the grid's runs
BENCH_KINDS = ["speed_ratio", "decode_ratio", "profile_share"]  # the side-by-side speed, decode and profile jobs
OUTCOMES = ("replicated", "conflict", "decided once", "undecided", "not run")


def outcome(a: str, b: str) -> str:
    if a in DECIDED and b in DECIDED:
        return "replicated" if a == b else "conflict"
    if a in DECIDED or b in DECIDED:
        return "decided once"
    if a == "not run" and b == "not run":
        return "not run"
    return "undecided"


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per (check, group) present in either scorecard."""
    keep = ["check", "group", "claim", "what", "kind", "unit", "rule", "verdict", "effect", "ci_low", "ci_high", "n"]
    a = a.assign(group=a.group.fillna("")) if "group" in a.columns else a.assign(group="")
    b = b.assign(group=b.group.fillna("")) if "group" in b.columns else b.assign(group="")
    m = pd.merge(a[[c for c in keep if c in a.columns]], b[[c for c in keep if c in b.columns]],
                 on=["check", "group"], how="outer", suffixes=("_a", "_b"), sort=False)
    for col in ("claim", "what", "kind", "unit", "rule"):
        m[col] = m[f"{col}_a"].fillna(m[f"{col}_b"])
        m = m.drop(columns=[f"{col}_a", f"{col}_b"])
    m["verdict_a"] = m.verdict_a.fillna("not run")
    m["verdict_b"] = m.verdict_b.fillna("not run")
    m["outcome"] = [outcome(x, y) for x, y in zip(m.verdict_a, m.verdict_b)]
    m["same_verdict"] = m.verdict_a == m.verdict_b
    lo = np.maximum(m.ci_low_a.astype(float), m.ci_low_b.astype(float))
    hi = np.minimum(m.ci_high_a.astype(float), m.ci_high_b.astype(float))
    m["cis_overlap"] = np.where(m[["ci_low_a", "ci_high_a", "ci_low_b", "ci_high_b"]].notna().all(axis=1),
                                lo <= hi, pd.NA)
    cols = ["claim", "check", "group", "what", "kind", "unit", "rule", "verdict_a", "verdict_b", "outcome",
            "same_verdict", "effect_a", "ci_low_a", "ci_high_a", "n_a", "effect_b", "ci_low_b", "ci_high_b", "n_b",
            "cis_overlap"]
    return m[cols]


def _ci(e, lo, hi) -> str:
    if e is None or (isinstance(e, float) and not math.isfinite(e)):
        return "—"
    s = f"{e:+.3g}"
    if all(isinstance(x, float) and math.isfinite(x) for x in (lo, hi)):
        s += f" [{lo:+.3g}, {hi:+.3g}]"
    return s


def _seeds(results: Path) -> str:
    """The evaluation seeds the run trained: the grid's and every variant's own (arms may name more than the
    grid's list), with the per-variant counts where they differ, the offset and the LR pilot's seeds."""
    p = Path(results) / "grid.json"
    if not p.exists():
        return "seeds unknown"
    g = json.loads(p.read_text())
    per_variant = [v.get("seeds") or g.get("seeds") or [] for v in (g.get("variants") or {}).values()]
    seeds = sorted(set(g.get("seeds") or []).union(*map(set, per_variant)))
    counts = sorted({len(s) for s in per_variant})
    out = f"seeds {seeds}" + (f", {counts[0]}–{counts[-1]} per variant" if len(counts) > 1 else "")
    out += f" (seed_offset {g['seed_offset']})" if g.get("seed_offset") else ""
    return out + (f"; pilot seeds {g['pilot_seeds']}" if g.get("pilot_seeds") else "")


def markdown(df: pd.DataFrame, a: Path, b: Path) -> str:
    counts = df.outcome.value_counts()
    decided_a = int(df.verdict_a.isin(DECIDED).sum())
    decided_b = int(df.verdict_b.isin(DECIDED).sum())
    lines = [f"# Replication: {a} vs {b}", "",
             f"Run A: `{a}` ({_seeds(a)}); run B: `{b}` ({_seeds(b)}). Written by `python -m workflows.analysis.replicate`; "
             "a verdict counts as evidence when both runs, on disjoint seeds, give it.", "",
             f"- decided (holds or contradicted): {decided_a} checks in A, {decided_b} in B",
             *(f"- {o}: {int(counts.get(o, 0))}" for o in OUTCOMES), ""]
    for label, part in (("Training-run checks (the grid's trained runs; not the probes or the speed bench)",
                         df[~df.kind.isin(PROBE_KINDS + BENCH_KINDS)]),
                        ("Speed-bench checks", df[df.kind.isin(BENCH_KINDS)])):
        lines += [f"{label}: {int(part.verdict_a.isin(DECIDED).sum())} decided in A, "
                  f"{int(part.verdict_b.isin(DECIDED).sum())} in B, {int((part.outcome == 'replicated').sum())} "
                  f"replicated, {int((part.outcome == 'conflict').sum())} in conflict."]
    lines += [""]
    t = pd.DataFrame({
        "check": [c + (f" ({g})" if g else "") for c, g in zip(df.check, df.group)],
        "what": df.what, "holds if": df.rule,
        "A": df.verdict_a, "effect A [95% CI]": [_ci(*x) for x in zip(df.effect_a, df.ci_low_a, df.ci_high_a)],
        "B": df.verdict_b, "effect B [95% CI]": [_ci(*x) for x in zip(df.effect_b, df.ci_low_b, df.ci_high_b)],
        "outcome": df.outcome.map(lambda o: f"**{o}**" if o in ("replicated", "conflict") else o),
    })
    t = t.apply(lambda col: col.map(lambda x: x.replace("|", "\\|") if isinstance(x, str) else x))
    lines += [t.to_markdown(index=False), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_a", help="results folder of the first run (claims.csv, grid.json)")
    p.add_argument("results_b", help="results folder of the second run, on other seeds")
    p.add_argument("--out", help="folder for replication.csv / .md (default: RESULTS_B)")
    args = p.parse_args(argv)
    a, b = Path(args.results_a), Path(args.results_b)
    for d in (a, b):
        if not (d / "claims.csv").exists():
            print(f"error: {d / 'claims.csv'} does not exist (run the pipeline there first)", file=sys.stderr)
            return 2
    df = compare(pd.read_csv(a / "claims.csv", keep_default_na=False, na_values=[""]),
                 pd.read_csv(b / "claims.csv", keep_default_na=False, na_values=[""]))
    out = Path(args.out or b)
    write_csv(out / "replication.csv", df)
    write_text(out / "replication.md", markdown(df, a, b))
    counts = df.outcome.value_counts()
    print(", ".join(f"{o} {int(counts.get(o, 0))}" for o in OUTCOMES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
