"""The scorecard: every check of the registry judged on the evidence → claims.csv, claims.md (and the
forest and trajectory figures, drawn by ``workflows.plots.claims``)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from statsmodels.stats.multitest import multipletests

from models import statistics as S
from workflows.analysis import stats
from workflows.grid.sweeps import expand
from workflows.io import write_csv, write_text

from .evidence import Evidence, NotRun
from .kinds import KINDS
from .registry import RegistryError, compares, load_registry
from .verdict import DECIDED, VERDICTS, combine, decision_p, fmt, holds_region, judge, power

HOLM_ALPHA = 0.05
TRAJECTORY_KINDS = ("loss_delta", "metric_delta")  # checks of the final validation loss: judged at every evaluation
MOVING_FRACTION = 1 / 3  # a verdict that changes over the last third of training is "still moving"
RUN_KEY = ["variant", "seed", "lr"]  # one run of a grid

RULE_TEXT = (
    "**The verdict rule.** Every bound is fixed in `config/claims.yaml` before the runs, in raw units, with its "
    "rationale; none depends on the noise observed. An *equivalence or band* check **holds** when the 95% CI lies "
    "inside its region, is **contradicted** when the CI lies wholly outside it, and is **inconclusive** otherwise "
    "(a CI inside that excludes the null is reported as different but smaller than the margin). A *directional* "
    "check **holds** when the CI lies wholly on the claimed side of its threshold and is **contradicted** only "
    "when the CI excludes every value the claim allows, so a CI that contains the published effect is never "
    "contradicted. **Not judged**: a degenerate arm (loss at ℓ0, gradients or activations below a stated floor) "
    "or throughput of grid jobs that shared cores — reported, never judged. **Inconclusive** also when the "
    "evidence is below the check's minimum; **not run**: the grid lacks what it compares. **Not past n-gram "
    "statistics** (not judged): an arm whose final loss is not below a smoothed trigram model's on the same "
    "evaluation tokens. **Stability checks** are judged only where their mechanism acted (the engagement they "
    "report), else not judged. **Still moving**: a check of the final loss whose verdict changes over the last "
    "third of training (judged at every evaluation): undecided. **Primary checks** (named in the registry before "
    "the runs) are Holm-adjusted together: a decision whose adjusted p-value is ≥ 0.05 becomes inconclusive. "
    "LRs: on an LR-pilot grid each variant is compared at the LR its pilot seeds chose (disjoint from the "
    "evaluation seeds); otherwise at the grid's pre-registered shared LR (`compare_lr`) or at each variant's "
    "cross-fitted best LR (chosen on the other half of the seeds), never at an LR chosen on the seeds that "
    "estimate it. MDE: the "
    "smallest distance from the nearest bound that this many seeds decide with 80% power (two-sided α = 0.05); "
    "seeds to decide: at the observed effect and noise. A verdict counts when a second run on fresh seeds gives "
    "it again (`workflows.analysis.replicate`).")


def _published(p) -> str:
    return "; ".join(map(str, p)) if isinstance(p, list) else str(p)


def _source(s: dict) -> str:
    out = s.get("paper", "")
    if s.get("arxiv"):
        out += f", arXiv:{s['arxiv']}"
    if s.get("where"):
        out += f", {s['where']}"
    return out


def evaluate(registry, ev: Evidence, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (check, group): effect, CI, holds region, verdict and reason, power (mde, seeds_needed),
    how the LR was chosen, the engagement a stability check measured; the claim's verdict joined.

    With ``history`` (history.parquet), every check of the final validation loss is also judged at each
    evaluation step (``trajectory``); one whose verdict changes over the last third of training is
    "still moving", never decided. Then the *primary* checks (``primary: true``, named before the runs) are
    Holm-adjusted together (statsmodels' ``multipletests``) on the p-value of the decision each verdict makes
    (``verdict.decision_p``): a decision that does not survive becomes inconclusive. ``verdict_unadjusted``
    keeps the per-check verdict."""
    df = _evaluate(registry, ev)
    traj = trajectory(registry, ev, history) if history is not None and ev.runs is not None else None
    df["verdict_unadjusted"] = df.verdict
    df["trajectory"] = ""
    if traj is not None and len(traj):
        late = traj[traj.step.isin(late_steps(traj.step))]
        for i, r in df.iterrows():
            t = traj[(traj.check == r.check) & (traj.group == r.group)]
            if not len(t):
                continue
            df.at[i, "trajectory"] = " → ".join(f"{int(s)}:{v[:4]}" for s, v in zip(t.step, t.verdict))
            seen = set(late[(late.check == r.check) & (late.group == r.group)].verdict) | {r.verdict}
            if r.verdict in DECIDED and len(seen) > 1:
                df.at[i, "verdict"] = "still moving"
                df.at[i, "reason"] = (f"{r.reason}; but the verdict changes over the last third of training "
                                      f"({', '.join(sorted(seen))}): more training could change it")
    df = holm(df, registry)
    df.attrs["trajectory"] = traj if traj is not None else pd.DataFrame()
    return df


def holm(df: pd.DataFrame, registry) -> pd.DataFrame:
    """Holm's step-down adjustment over the primary checks (module docstring of ``evaluate``)."""
    reg = load_registry(registry)
    primary = {c["full_id"] for cl in reg["claims"] for c in cl["checks"] if c.get("primary")}
    log_scale = {c["full_id"]: KINDS[c["kind"]].log_scale or c.get("unit") == "ratio"
                 for cl in reg["claims"] for c in cl["checks"]}
    checks = {c["full_id"]: c for cl in reg["claims"] for c in cl["checks"]}
    df["primary"] = df.check.isin(primary)
    df["p_decision"] = [decision_p(r.effect, r.ci_low, r.ci_high, int(r.n), checks[r.check], r.verdict,
                                   log_scale[r.check]) for r in df.itertuples()]
    df["p_holm"] = math.nan
    rows = df.index[df.primary & (df.verdict != "not run")]
    if len(rows):
        p = df.loc[rows, "p_decision"].fillna(1.0).to_numpy(dtype=float)  # an undecided primary check counts
        reject, p_adj, _, _ = multipletests(p, alpha=HOLM_ALPHA, method="holm")
        df.loc[rows, "p_holm"] = p_adj
        for i, ok in zip(rows, reject):
            if df.at[i, "verdict"] in DECIDED and not ok:
                df.at[i, "reason"] = (f"{df.at[i, 'reason']}; not significant after Holm's adjustment over the "
                                      f"{len(rows)} primary checks (p = {df.at[i, 'p_decision']:.3g}, adjusted "
                                      f"{df.at[i, 'p_holm']:.3g})")
                df.at[i, "verdict"] = "inconclusive"
    claim_verdict = {cid: combine(g.verdict.tolist()) for cid, g in df.groupby("claim", sort=False)}
    df["claim_verdict"] = df.claim.map(claim_verdict)
    return df


def late_steps(steps) -> list[int]:
    """The evaluation steps of the still-moving rule: those in the last third of training (``MOVING_FRACTION``
    of the last step), the last included."""
    steps = sorted({int(x) for x in steps})
    return [x for x in steps if x >= (1 - MOVING_FRACTION) * steps[-1]] if steps else []


def runs_at_step(runs: pd.DataFrame, val: pd.DataFrame, step: int) -> pd.DataFrame:
    """``runs`` with ``final_val_loss`` replaced by each run's learning-curve value at ``step`` (``val``: the
    history's validation-loss rows); runs without an evaluation there are left out."""
    at = val[val.step == step][RUN_KEY + ["value"]].rename(columns={"value": "final_val_loss"})
    return runs.drop(columns=["final_val_loss"]).merge(at, on=RUN_KEY, how="inner")


def trajectory(registry, ev: Evidence, history: pd.DataFrame) -> pd.DataFrame:
    """Every check of the final validation loss (``TRAJECTORY_KINDS``) judged at each evaluation step, on the
    learning curve's validation loss at that step (its fixed small window set): check, group, step, effect,
    ci_low, ci_high, n, verdict. The last step is the end of training, where each run also has its final score
    (the whole split, or ``train.final_eval_windows``): there the trajectory uses the final score, so its end
    point is the final verdict rather than a second, noisier look at the same models on the curve's windows (a
    run that stopped early, diverged, keeps its curve)."""
    reg = load_registry(registry)
    wanted = [(cl, c) for cl in reg["claims"] for c in cl["checks"]
              if c["kind"] in TRAJECTORY_KINDS and c.get("metric", "final_val_loss") == "final_val_loss"]
    val = S.select(history, S.VAL_LOSS)
    if not wanted or not len(val) or ev.runs is None:
        return pd.DataFrame(columns=["check", "group", "step", "effect", "ci_low", "ci_high", "n", "verdict"])
    steps = sorted(set(val.step.astype(int)))
    final = ev.runs.set_index(RUN_KEY).final_val_loss
    rows = []
    for s in steps:
        r = runs_at_step(ev.runs, val, s)
        if s == steps[-1]:  # the end of training: the final score where the run has one (see the docstring)
            end = final.reindex(pd.MultiIndex.from_frame(r[RUN_KEY])).to_numpy(dtype=float)
            r["final_val_loss"] = np.where(np.isnan(end), r.final_val_loss, end)
        if not len(r):
            continue
        step_ev = replace(ev, runs=r, ngram=None)  # (the trigram guard judges the final loss only)
        for cl, c in wanted:
            try:
                measures = KINDS[c["kind"]].fn(step_ev, c)
            except NotRun:
                continue
            for m in measures:
                verdict, _ = judge(m.effect, m.lo, m.hi, c, m.short, m.not_judged)
                rows.append({"check": c["full_id"], "group": m.group, "step": s, "effect": m.effect,
                             "ci_low": m.lo, "ci_high": m.hi, "n": m.n, "verdict": verdict})
    return pd.DataFrame(rows)


def _evaluate(registry, ev: Evidence) -> pd.DataFrame:
    """One row per (check, group), unadjusted (see ``evaluate``)."""
    reg = load_registry(registry)
    ev.floors = reg["floors"]
    rows = []
    for cl in reg["claims"]:
        for c in cl["checks"]:
            spec = KINDS[c["kind"]]
            a, b, text = holds_region(c)
            base = {"claim": cl["id"], "check": c["full_id"], "title": cl["title"], "what": c["what"],
                    "kind": c["kind"], "source": _source(cl["source"]), "quote": cl["source"].get("quote", ""),
                    "published": _published(cl["published"]), "published_effect": c.get("published", math.nan),
                    "confidence": cl.get("confidence", ""), "claim_note": cl.get("note", ""),
                    "compares": compares(c),
                    "metric": c.get("metric", spec.metric), "unit": c["unit"], "rule": text,
                    "rationale": c.get("rationale", ""), "holds_low": a, "holds_high": b}
            try:
                measures = spec.fn(ev, c)
            except NotRun as e:
                rows.append({**base, "group": "", "effect": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                             "n": 0, "verdict": "not run", "reason": str(e), "notes": "", "lr_choice": "",
                             "mde": math.nan, "seeds_needed": math.nan, "decides_as": "", "to_decide": "",
                             "params": "", "tokens": "", "engagement": ""})
                continue
            for m in measures:
                verdict, why = judge(m.effect, m.lo, m.hi, c, m.short, m.not_judged)
                pw = power(m.effect, m.lo, m.hi, m.n, c, spec.log_scale)
                if verdict in ("holds", "contradicted"):
                    pw["to_decide"] = ""
                elif m.short:
                    pw["to_decide"] = "first: " + "; ".join(m.short) + (f"; then {pw['to_decide']}" if pw["to_decide"] else "")
                rows.append({**base, "group": m.group, "effect": m.effect, "ci_low": m.lo, "ci_high": m.hi,
                             "n": m.n, "verdict": verdict, "reason": why, "notes": "; ".join(m.notes),
                             "lr_choice": m.lr_choice, **pw, "params": m.params, "tokens": m.tokens,
                             "engagement": m.engagement})
    df = pd.DataFrame(rows)
    claim_verdict = {cid: combine(g.verdict.tolist()) for cid, g in df.groupby("claim", sort=False)}
    df.insert(1, "claim_verdict", df.claim.map(claim_verdict))
    return df


def _ci(r) -> str:
    if not np.isfinite(r.effect):
        return "—"
    s = fmt(r.effect)
    if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
        s += f" [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
    return s + (f" {r.unit}" if r.unit and r.unit not in ("ratio",) else "×" if r.unit == "ratio" else "")


def _seeds(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return "∞" if math.isinf(x) else f"{int(x)}"


def markdown(df: pd.DataFrame, grid: dict | None, runs: pd.DataFrame | None) -> str:
    name = (grid or {}).get("name", "")
    lines = [f"# Replication scorecard{' — grid ' + repr(name) if name else ''}", ""]
    if runs is not None and len(runs):
        lines.append(f"{len(runs)} runs of {runs.variant.nunique()} variants, {runs.seed.nunique()} seed(s) "
                     f"{sorted(runs.seed.unique().tolist())}, LRs {sorted(runs.lr.unique().tolist())}; "
                     f"device: {', '.join(sorted(set(runs.device.astype(str))))}"
                     + (f"; pre-registered comparison LR {grid['compare_lr']:g}" if (grid or {}).get("compare_lr")
                        else "")
                     + (f"; each variant at the LR chosen by its pilot seeds {grid.get('pilot_seeds')}"
                        if (grid or {}).get("lr_protocol") == "pilot" else "")
                     + (f"; final losses scored on {int(runs.final_eval_tokens.min()):,} validation tokens"
                        if "final_eval_tokens" in runs.columns and runs.final_eval_tokens.notna().all() else "") + ".")
    if "primary" in df.columns and df.primary.any():
        n_primary = int((df.primary & (df.verdict != "not run")).sum())
        lines.append(f"Primary checks (marked ★): {n_primary} ran; their decisions are Holm-adjusted together "
                     f"(family-wise α = {HOLM_ALPHA}). Verdicts before the adjustment and before the "
                     "still-moving rule: column `verdict_unadjusted` of claims.csv; each check's verdict at every "
                     "evaluation step: claims_trajectory.csv.")
    lines += [
        "Computed by `workflows.claims` from `runs.parquet` and `probes/*.parquet` against the registry "
        "`config/claims.yaml`; do not edit by hand. Effects are treatment − control (or treatment / control for "
        "ratios, geometric mean) with 95% CIs: a Student-t interval over seeds for means (over the seed-paired "
        "differences where both sides share seeds, Welch's t where they share none; on the log scale for "
        "ratios); for a probe value reduced over depths, Bonferroni-adjusted per-depth t intervals; for LR "
        "sensitivity, highest stable LR and spread, the union of a jackknife t interval and a BCa bootstrap over "
        f"seeds (seed {stats.BOOTSTRAP_SEED}); Wilson intervals for divergence fractions. Scale: parameters and "
        "training tokens per run (probes: per model); a result at this scale is a finding about this scale.", "",
        RULE_TEXT, "", "## Claims", ""]
    counts = df.groupby("claim", sort=False).verdict.apply(
        lambda v: ", ".join(f"{int((v == x).sum())} {x}" for x in VERDICTS if (v == x).any()))
    claims = df.drop_duplicates("claim")
    t = pd.DataFrame({"claim": claims.claim, "title": claims.title,
                      "verdict": claims.claim_verdict.map(lambda v: f"**{v}**"),
                      "checks": claims.claim.map(counts), "prior confidence at small scale": claims.confidence,
                      "note": claims.claim_note})
    lines += [t.to_markdown(index=False), "", "## Checks", ""]
    first = ~df.claim.duplicated()
    t = pd.DataFrame({
        "claim": np.where(first, df.claim, ""),
        "source": np.where(first, df.source, ""),
        "check": [c.split(".", 1)[1] + (f" ({g})" if g else "") + (" ★" if p else "")
                  for c, g, p in zip(df.check, df.group, df.get("primary", pd.Series(False, index=df.index)))],
        "what": df.what, "compares": df.compares,
        "measured effect [95% CI]": [_ci(r) for r in df.itertuples()],
        "holds if": df.rule, "verdict": df.verdict.map(lambda v: f"**{v}**"),
        "why": [r.reason + (f" ({r.notes})" if r.notes else "")
                + (f"; {r.engagement}" if getattr(r, "engagement", "") and r.engagement not in r.reason else "")
                for r in df.itertuples()],
        "n": df.n, "MDE": [fmt(x) for x in df.mde], "seeds to decide": [_seeds(x) for x in df.seeds_needed],
        "LR": df.lr_choice,
        "scale (params · tokens)": [f"{p} · {t}" if p else "—" for p, t in zip(df.params, df.tokens)],
    })
    t = t.apply(lambda col: col.map(lambda x: x.replace("|", "\\|") if isinstance(x, str) else x))
    lines += [t.to_markdown(index=False), ""]
    lines += ["## Margins and their reasons", "",
              "Each bound was fixed before the runs; the published effect, where the check states one, lies inside "
              "its holds region (the loader rejects a check that would contradict its own source).", ""]
    for r in df.drop_duplicates("check").itertuples():
        pub = f" Published effect: {fmt(r.published_effect)}." if np.isfinite(r.published_effect) else ""
        lines.append(f"- **{r.check}** holds if {r.rule}: {r.rationale or '—'}{pub}")
    lines.append("")
    undecided = df[df.verdict.isin(["inconclusive", "still moving"])]
    if len(undecided):
        lines += ["## What it would take to decide the inconclusive checks", ""]
        for r in undecided.itertuples():
            lines.append(f"- {r.check}{' (' + r.group + ')' if r.group else ''} — {r.what}: {r.reason}. "
                         + (f"MDE at n = {r.n}: {fmt(r.mde)}; " if np.isfinite(r.mde) else "") + (r.to_decide or ""))
        lines.append("")
    quotes = df.drop_duplicates("claim")
    lines += ["## Sources, as quoted", ""]
    for r in quotes.itertuples():
        lines.append(f"- **{r.claim}** {r.source}: {r.quote or '(no quote recorded)'}")
    lines.append("")
    left = df[(df.kind != "probe") & ((df.verdict == "not run")
                                      | df.reason.str.contains("too little evidence", regex=False))]
    if len(left):
        lines += ["## Not decided on this grid: left to other grids", "",
                  "These checks need variants, seeds, LRs or GPU runs this grid does not have (the reason names "
                  "the grid that defines a missing variant).", ""]
        for r in left.itertuples():
            lines.append(f"- {r.check}{' (' + r.group + ')' if r.group else ''} — {r.what}: {r.reason}")
        lines.append("")
    return "\n".join(lines)


def load_probes(paths) -> dict:
    out = {}
    for p in paths or []:
        p = Path(p)
        if p.exists():
            out[p.stem] = pd.read_parquet(p)
    return out


def variants_elsewhere(paths) -> dict:
    """variant -> the grid config files (e.g. config/paper.yaml) that define it."""
    out: dict = {}
    for p in paths or []:
        if Path(p).exists():
            with open(p) as f:
                cfg = yaml.safe_load(f) or {}
            try:
                names = list(expand(cfg)[0])  # sweep values are variants too
            except ValueError:  # a broken grid elsewhere does not stop this scorecard
                names = list(cfg.get("variants") or {})
            for v in names:
                out.setdefault(v, []).append(str(p))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The replication scorecard: claims registry + runs -> verdicts.")
    ap.add_argument("--registry", default="config/claims.yaml")
    ap.add_argument("--runs", help="runs.parquet (omit: only probe checks can be judged)")
    ap.add_argument("--grid", help="grid.json (name and compare_lr of the grid)")
    ap.add_argument("--probes", nargs="*", default=[], help="probe tables (results/probes/<name>.parquet)")
    ap.add_argument("--speed", help="side-by-side throughput table (speed.parquet) for the speed checks")
    ap.add_argument("--table", nargs="*", default=[], metavar="NAME=PATH",
                    help="other measured tables the checks read by name (e.g. ladder=results/ladder.parquet); a "
                         "missing file is no table")
    ap.add_argument("--grids", nargs="*", default=["config/config.yaml", "config/paper.yaml"],
                    help="grid configs named in the scorecard for variants this grid lacks")
    ap.add_argument("--history", help="history.parquet: judge the final-loss checks at every evaluation step "
                                      "(the still-moving rule and --trajectory)")
    ap.add_argument("--ngram", help="n-gram references on the evaluation tokens (workflows.data.ngram's JSON): arms not "
                                    "below the trigram are not judged")
    ap.add_argument("--trajectory", help="CSV of every final-loss check's effect, CI and verdict per evaluation step")
    ap.add_argument("--csv", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--figure", help="PNG path; a PDF is written beside it")
    ap.add_argument("--trajectory-figure", help="PNG path of the verdicts-against-training-time figure (PDF beside it)")
    args = ap.parse_args(argv)
    runs = pd.read_parquet(args.runs) if args.runs else None
    history = pd.read_parquet(args.history, filters=[("kind", "==", S.VAL_LOSS.kind)]) if args.history else None
    grid = json.loads(Path(args.grid).read_text()) if args.grid else None
    speed = pd.read_parquet(args.speed) if args.speed and Path(args.speed).exists() else None
    compare_lr = (grid or {}).get("compare_lr")
    tables = {}
    for arg in args.table:
        name, sep, path = arg.partition("=")
        if not sep or not name:
            ap.error(f"--table {arg!r}: expected NAME=PATH")
        if Path(path).exists():
            tables[name] = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    try:
        df = evaluate(args.registry, Evidence(runs, load_probes(args.probes), variants_elsewhere(args.grids),
                                              compare_lr=float(compare_lr) if compare_lr else None, speed=speed,
                                              tables=tables, lr_protocol=(grid or {}).get("lr_protocol", ""),
                                              ngram=json.loads(Path(args.ngram).read_text()) if args.ngram else None,
                                              horizons=((grid or {}).get("ladder") or {}).get("horizons") or {}),
                      history)
    except RegistryError as e:
        print(f"error: {args.registry}: {e}", file=sys.stderr)
        return 2
    write_csv(args.csv, df)
    if args.trajectory:
        write_csv(args.trajectory, df.attrs.get("trajectory", pd.DataFrame()))
    write_text(args.md, markdown(df, grid, runs))
    if args.figure:
        from workflows.plots.claims import write_forest

        write_forest(df, args.figure, runs, (grid or {}).get("baseline"))
    if args.trajectory_figure:
        from workflows.plots.claims import write_trajectory

        write_trajectory(df, df.attrs.get("trajectory", pd.DataFrame()), args.trajectory_figure, runs)
    claims = df.drop_duplicates("claim")
    print(" ".join(f"{c}:{v}" for c, v in zip(claims.claim, claims.claim_verdict)))
    print(df.groupby("verdict").size().to_string())
    return 0
