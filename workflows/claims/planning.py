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

    python -m workflows.claims.planning RESULTS [RESULTS ...] --simulate [--seeds 7 10] [--grid CONFIG.yaml ...]

``--simulate`` plans the whole decision instead of the final interval alone: a check counts only where it is
decided after Holm *and* not "still moving" (the scorecard's rule: its verdict at every evaluation step of the last
third of training, on the learning curve, and the final one agree). Each RESULTS folder then also needs its
``runs.parquet`` and ``history.parquet``. Per primary check of the final validation loss, the plan reads the
per-seed paired differences at those late steps and at the end (the scorecard's own pairing, ``kinds``) from
every folder and fits a multivariate normal: the mean of the folders' means, the covariance pooled within
folders. It then draws grids of n seed pairs (``--seeds``, or each check's pairs in ``--grid``'s config, whose
variants may name their own seeds), judges every step with the verdict rule, adjusts the final decisions
with Holm over the primary checks, and reports the share of draws in which each check is decided and stable,
and how many checks a grid decides. Checks are drawn independently of one another (arms they share, such as
the baseline, correlate them in a real grid), and a Monte Carlo share has a standard error of up to 0.5/sqrt(draws).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sp
from statsmodels.stats.multitest import multipletests

from models import statistics as S
from workflows.io import write_text

from .evidence import Evidence, NotRun
from .kinds import KINDS, _paired_values
from .registry import load_registry
from .scorecard import HOLM_ALPHA, TRAJECTORY_KINDS, late_steps, runs_at_step
from .verdict import DECIDED, decision_p, judge, sigma_from_ci

DRAWS = 4000


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


def seed_deltas(results: Path, reg: dict) -> dict[str, pd.DataFrame]:
    """Per primary check of the final validation loss: a frame of its seed-paired differences (treatment −
    control, the scorecard's pairing and LRs), one row per seed pair, one column per late step
    (``scorecard.late_steps`` before the end, whose verdict is the final one) and ``final``."""
    results = Path(results)
    for name in ("runs.parquet", "history.parquet"):
        if not (results / name).exists():
            raise FileNotFoundError(f"{results / name} does not exist: --simulate reads each folder's run table "
                                    "and learning curves")
    runs = pd.read_parquet(results / "runs.parquet")
    history = S.select(pd.read_parquet(results / "history.parquet", filters=[("kind", "==", S.VAL_LOSS.kind)]),
                       S.VAL_LOSS)
    grid = json.loads((results / "grid.json").read_text()) if (results / "grid.json").exists() else {}
    frames = {step: runs_at_step(runs, history, step) for step in late_steps(history.step)[:-1]}
    frames["final"] = runs  # the last column: the end of training
    evidence = {step: Evidence(r, {}, compare_lr=grid.get("compare_lr"), lr_protocol=grid.get("lr_protocol", ""))
                for step, r in frames.items()}
    out = {}
    for cl in reg["claims"]:
        for c in cl["checks"]:
            if not c.get("primary") or c["kind"] not in TRAJECTORY_KINDS or \
                    c.get("metric", "final_val_loss") != "final_val_loss" or c.get("at") == "best":
                continue
            cols = {}
            try:
                for step, ev in evidence.items():
                    p = _paired_values(ev, c, "final_val_loss")
                    shared = sorted(set(p.treatment_values) & set(p.control_values), key=str)
                    cols[step] = pd.Series({k: p.treatment_values[k] - p.control_values[k] for k in shared},
                                           dtype=float)
            except NotRun:
                continue
            out[c["full_id"]] = pd.DataFrame(cols).dropna()
    return out


def holm_reject(p: np.ndarray, alpha: float = HOLM_ALPHA) -> np.ndarray:
    """Holm's step-down decisions for many families at once: ``p`` is checks x families, one family per column
    (what statsmodels' ``multipletests(method="holm")`` decides per column, without its per-call overhead)."""
    m = p.shape[0]
    order = np.argsort(p, axis=0, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=0)
    ok = np.logical_and.accumulate(sorted_p <= alpha / (m - np.arange(m))[:, None], axis=0)
    out = np.zeros_like(ok)
    np.put_along_axis(out, order, ok, axis=0)
    return out


def simulate(folders: list[dict[str, pd.DataFrame]], registry, pairs: dict[str, int] | int,
             draws: int = DRAWS, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """The Monte Carlo plan (module docstring, ``--simulate``). ``folders``: ``seed_deltas`` of each results
    folder; ``pairs``: the seed pairs per check (one number for all). Returns one row per check (check, what,
    effect and seed sd at the end, n measured, pairs, p_final: the share decided by the final interval alone,
    p_stable: decided after Holm and not still moving) and, per draw, how many checks it decided."""
    reg = load_registry(registry)
    checks = {c["full_id"]: c for cl in reg["claims"] for c in cl["checks"]}
    ids = [cid for cid in checks if all(cid in f and len(f[cid]) >= 2 for f in folders)]
    rng = np.random.default_rng(seed)
    rows, p_dec, verdicts_ok = [], [], []
    for cid in ids:
        c, n = checks[cid], pairs if isinstance(pairs, int) else pairs.get(cid, 0)
        data = [f[cid] for f in folders]
        cols = list(data[0].columns)
        if any(list(d.columns) != cols for d in data) or n < 2:
            continue
        mean = np.mean([d.to_numpy().mean(0) for d in data], axis=0)
        cov = sum((len(d) - 1) * np.atleast_2d(np.cov(d.to_numpy().T)) for d in data) / sum(len(d) - 1 for d in data)
        x = rng.multivariate_normal(mean, cov, size=(draws, n), method="eigh")
        m, sd = x.mean(1), x.std(1, ddof=1)
        half = float(sp.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        lo, hi = m - half, m + half
        v = np.array([[judge(m[i, j], lo[i, j], hi[i, j], c)[0] for j in range(len(cols))] for i in range(draws)])
        final = v[:, -1]
        p_dec.append([decision_p(m[i, -1], lo[i, -1], hi[i, -1], n, c, final[i]) for i in range(draws)])
        verdicts_ok.append(np.isin(final, DECIDED) & (v == final[:, None]).all(1))
        rows.append({"check": cid, "what": c.get("what", ""), "effect": float(mean[-1]), "sd": math.sqrt(cov[-1, -1]),
                     "n": "/".join(str(len(d)) for d in data), "pairs": n,
                     "p_final": float(np.isin(final, DECIDED).mean())})
    if not rows:
        return pd.DataFrame(columns=["check", "what", "effect", "sd", "n", "pairs", "p_final", "p_stable"]), \
            np.zeros(draws, dtype=int)
    reject = holm_reject(np.nan_to_num(np.asarray(p_dec, dtype=float), nan=1.0))  # checks x draws
    decided = np.asarray(verdicts_ok) & reject
    df = pd.DataFrame(rows)
    df["p_stable"] = decided.mean(1)
    return df, decided.sum(0)


def simulated_markdown(tables: dict, sources: list[str], draws: int) -> str:
    """``tables``: {label (e.g. "n=7" or the grid config): (simulate's frame, decided counts)}."""
    labels = list(tables)
    first = tables[labels[0]][0]
    out = [f"# Simulated plan from {', '.join(sources)}", "",
           f"Per primary check of the final validation loss, the share of {draws} simulated grids in which it is decided "
           "after Holm's adjustment and not still moving (its verdict at every evaluation step of the last third and "
           "at the end agree); in brackets the share decided by the final interval alone. Effect and seed sd: at the "
           "end, from the measured seed pairs (`python -m workflows.claims.planning --simulate`).", "",
           "| check | what | effect | seed sd | n measured | " + " | ".join(labels) + " |",
           "|" + "---|" * (5 + len(labels))]
    for r in first.itertuples():
        cells = []
        for lab in labels:
            t = tables[lab][0].set_index("check")
            cells.append(f"{t.p_stable[r.check]:.2f} ({t.p_final[r.check]:.2f}), {int(t.pairs[r.check])} pairs"
                         if r.check in t.index else "—")
        out.append(f"| {r.check} | {r.what} | {r.effect:+.3f} | {r.sd:.3f} | {r.n} | " + " | ".join(cells) + " |")
    out += [""]
    for lab in labels:
        counts = tables[lab][1]
        k = len(tables[lab][0])
        dist = ", ".join(f"≥ {j}: {np.mean(counts >= j):.2f}" for j in range(max(1, k - 3), k + 1))
        out.append(f"- {lab}: expected {counts.mean():.2f} of {k} decided and stable; share of grids deciding {dist}.")
    return "\n".join(out) + "\n"


def grid_pairs(config: str | Path, registry) -> dict[str, int]:
    """Seed pairs per check in a grid config: the evaluation seeds its treatment and control share."""
    from workflows.grid.grid import Grid, load_pipeline_config

    grid = Grid.from_config(load_pipeline_config(config))
    reg = load_registry(registry)
    out = {}
    for cl in reg["claims"]:
        for c in cl["checks"]:
            t, k = c.get("treatment"), c.get("control")
            if t in grid.variants and k in grid.variants:
                out[c["full_id"]] = len(set(grid.variant_seeds(t)) & set(grid.variant_seeds(k)))
    return out


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
    ap.add_argument("--seeds", nargs="+", type=int, help="seed counts to plan (default 4 6 8; with --simulate and "
                    "--grid: none unless given)")
    ap.add_argument("--registry", default="config/claims.yaml")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    ap.add_argument("--simulate", action="store_true", help="plan the whole decision (Holm and the still-moving "
                    "rule) by simulation from each folder's runs.parquet and history.parquet")
    ap.add_argument("--grid", nargs="+", help="with --simulate: grid config(s) whose seed pairs per check to plan "
                    "(besides any --seeds)")
    ap.add_argument("--draws", type=int, default=DRAWS, help=f"with --simulate: simulated grids (default {DRAWS})")
    a = ap.parse_args(argv)
    if a.seeds is None:
        a.seeds = [] if a.grid else [4, 6, 8]
    if any(n < 2 for n in a.seeds):
        ap.error("--seeds: every seed count must be >= 2 (a t interval needs two seeds)")
    if a.grid and not a.simulate:
        ap.error("--grid: only with --simulate")
    if a.simulate:
        if a.draws < 100:
            ap.error(f"--draws {a.draws}: at least 100")
        try:
            reg = load_registry(a.registry)
            folders = [seed_deltas(Path(f), reg) for f in a.results]
        except FileNotFoundError as e:
            ap.error(f"results: {e}")
        plans = {**{f"n={n}": n for n in a.seeds}, **{g: grid_pairs(g, a.registry) for g in a.grid or []}}
        tables = {lab: simulate(folders, a.registry, pairs, a.draws) for lab, pairs in plans.items()}
        text = simulated_markdown(tables, a.results, a.draws)
        if a.out:
            write_text(a.out, text)
        else:
            sys.stdout.write(text)
        return 0
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
