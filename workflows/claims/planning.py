"""How many seeds decide a grid's primary checks? A power plan from scorecards already measured.

    python -m workflows.claims.planning RESULTS [RESULTS ...] [--seeds 4 6 8] [--registry config/claims.yaml]
        [--out FILE.md]

Each RESULTS folder holds a ``claims.csv`` of the same grid (e.g. a reference and its ``replicate/`` on disjoint
seeds). Per primary check (``primary: true`` in the registry) that ran in all of them, the plan takes

- the effect: the mean of the folders' effects;
- the seed sd: the paired seed-to-seed sd each folder's 95% t interval implies (``verdict.sigma_from_ci``),
  pooled over the folders (the root of the mean variance);

and, for every seed count n asked for, the p-value of the decision (``verdict.decision_p``: the verdict the
interval would give at that effect, holds where the effect lies in the holds region and contradicted elsewhere)
that a t interval over n seeds has at exactly that effect and sd. Holm's adjustment over all the plan's primary
checks (statsmodels' ``multipletests``, as the scorecard does) then says how many of them that n decides — at the
expected effect and noise, so a planning number, not a promise: half of the time a check sitting near its
threshold will do worse. A check whose effect lies on a bound has p = 1 at every n; no seed count decides it.

This is how ``config/config.yaml`` chose its seeds and variants (its header holds the table); plan your own grid
the same way from a pilot's scorecard. The log-ratio kinds (speed, metric ratios) are planned on the log scale.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sp
from statsmodels.stats.multitest import multipletests

from workflows.io import write_text

from .kinds import KINDS
from .registry import load_registry
from .verdict import decision_p, judge, sigma_from_ci

HOLM_ALPHA = 0.05


def planned_p(effect: float, sd: float, n: int, c: dict, log_scale: bool = False) -> float:
    """The p-value of the decision a t interval over ``n`` seeds makes when its mean is ``effect`` and the seed
    sd is ``sd`` (on the log scale for a ratio check: ``effect`` is then the ratio, ``sd`` that of its log)."""
    if not (np.isfinite(effect) and np.isfinite(sd) and n >= 2) or (log_scale and effect <= 0):
        return math.nan
    half = float(sp.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if log_scale:
        lo, hi = effect * math.exp(-half), effect * math.exp(half)
    else:
        lo, hi = effect - half, effect + half
    inside = judge(effect, effect, effect, c)[0] == "holds"  # the verdict rule, on the effect itself
    return decision_p(effect, lo, hi, n, c, "holds" if inside else "contradicted", log_scale)


def pooled(claims: list[pd.DataFrame], reg: dict) -> pd.DataFrame:
    """One row per primary check of the loaded registry ``reg`` that ran (a finite effect and interval) in every
    scorecard: check, what, effect (mean), sd (pooled), n (per scorecard), log_scale."""
    checks = {c["full_id"]: c for cl in reg["claims"] for c in cl["checks"] if c.get("primary")}
    rows = []
    for cid, c in checks.items():
        log_scale = KINDS[c["kind"]].log_scale or c.get("unit") == "ratio"
        effects, variances, ns = [], [], []
        for df in claims:
            r = df[(df.check == cid) & np.isfinite(df.effect) & np.isfinite(df.ci_low) & np.isfinite(df.ci_high)]
            if len(r) != 1:
                break
            r = r.iloc[0]
            f = math.log if log_scale else (lambda x: x)
            if log_scale and min(r.effect, r.ci_low) <= 0:
                break
            effects.append(f(r.effect))
            variances.append(sigma_from_ci(f(r.ci_low), f(r.ci_high), int(r.n)) ** 2)
            ns.append(int(r.n))
        else:
            mean = float(np.mean(effects))
            rows.append({"check": cid, "what": c.get("what", ""), "effect": math.exp(mean) if log_scale else mean,
                         "sd": math.sqrt(float(np.mean(variances))), "n": "/".join(map(str, ns)),
                         "log_scale": log_scale})
    return pd.DataFrame(rows, columns=["check", "what", "effect", "sd", "n", "log_scale"])


def plan(claims: list[pd.DataFrame], registry, seeds: list[int]) -> tuple[pd.DataFrame, dict[int, int]]:
    """The plan table (``pooled`` plus a ``p_n{n}`` column per seed count, sorted by the p of the largest n)
    and, per seed count, how many of the checks Holm's adjustment over all of them would decide."""
    reg = load_registry(registry)
    checks = {c["full_id"]: c for cl in reg["claims"] for c in cl["checks"]}
    df = pooled(claims, reg)
    decided = {}
    for n in seeds:
        p = [planned_p(r.effect, r.sd, n, checks[r.check], r.log_scale) for r in df.itertuples()]
        df[f"p_n{n}"] = p
        if len(p):
            reject = multipletests(np.nan_to_num(np.asarray(p, dtype=float), nan=1.0), alpha=HOLM_ALPHA,
                                   method="holm")[0]
            decided[n] = int(reject.sum())
        else:
            decided[n] = 0
    if len(df) and seeds:
        df = df.sort_values(f"p_n{max(seeds)}", kind="stable").reset_index(drop=True)
    return df, decided


def markdown(df: pd.DataFrame, decided: dict[int, int], sources: list[str]) -> str:
    seeds = sorted(decided)
    head = "| check | what | effect | seed sd | n measured | " + " | ".join(f"p, n={n}" for n in seeds) + " |"
    out = [f"# Power plan from {', '.join(sources)}", "",
           f"Primary checks that ran in every scorecard: {len(df)}. Effect: the mean over the scorecards; seed sd: "
           "pooled from their 95% t intervals; p: the decision's p-value a t interval over n seeds would have at "
           "that effect and sd (`workflows/claims/planning.py`).", "", head,
           "|" + "---|" * (5 + len(seeds))]
    for r in df.itertuples():
        ps = " | ".join("—" if not np.isfinite(getattr(r, f"p_n{n}")) else f"{getattr(r, f'p_n{n}'):.2g}"
                        for n in seeds)
        sd = f"{r.sd:.3f}" + (" (log)" if r.log_scale else "")
        out.append(f"| {r.check} | {r.what} | {r.effect:+.3f} | {sd} | {r.n} | {ps} |")
    out += ["", "Decided after Holm's adjustment over these checks, at the expected effect and noise: " +
            ", ".join(f"{decided[n]} of {len(df)} with {n} seeds" for n in seeds) + "."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="folders with a claims.csv of the same grid")
    ap.add_argument("--seeds", nargs="+", type=int, default=[4, 6, 8])
    ap.add_argument("--registry", default="config/claims.yaml")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    a = ap.parse_args(argv)
    if any(n < 2 for n in a.seeds):
        ap.error("--seeds: every seed count must be >= 2 (a t interval needs two seeds)")
    frames = []
    for folder in a.results:
        path = Path(folder) / "claims.csv"
        if not path.exists():
            ap.error(f"results: {path} does not exist (a folder the scorecard wrote)")
        frames.append(pd.read_csv(path))
    df, decided = plan(frames, a.registry, a.seeds)
    text = markdown(df, decided, a.results)
    if a.out:
        write_text(a.out, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
