"""Aggregate: per-run outputs → tidy tables.

    python -m workflows.analysis.aggregate --grid results/grid.json --runs RUN_DIR... --out results \
        [--data-meta WORK/data/KEY/meta.json]

Writes ``runs.csv``/``runs.parquet`` (one row per run, one column per model axis), ``history.parquet``
(every run's long-format history with variant/seed/lr), and ``summary.csv``/``.md``/``.tex`` (one row
per variant: loss at its best LR with a 95% Student-t interval over seeds, Δ vs the baseline paired by
seed with a 95% Student-t interval over the paired differences (Welch's t interval when no seed is
shared), divergence k/n with a Wilson 95% interval, Wortsman LR sensitivity, median tokens/s and its
ratio to the baseline, parameters).

Guards against citing noise — three flags per variant in ``summary.csv`` (``workflows.analysis.flags``, also stated
under the table in ``summary.md``):

- ``best_lr_at_edge``: the variant's best LR is the smallest or the largest LR it was run at (the
  optimum may lie outside the grid; true when it ran a single LR).
- ``still_improving``: at the best LR, the mean over seeds of the validation loss fell, over the last
  10% of training, by more than 2% of its total drop from ℓ0 = ln(vocab): with s90 the latest
  evaluation step ≤ 0.9·steps, ℓ(s90) − ℓ(steps) > 0.02 · (ℓ0 − ℓ(steps)), means over the seeds with
  a finite validation loss at both steps. NaN without an evaluation at the last step or at/before s90.
- ``on_plateau``: the best mean final loss is within 0.1 nats of the training split's unigram entropy
  (the loss of predicting token frequencies alone; from the data ``meta.json``, ``--data-meta``):
  |loss − H₁| ≤ 0.1. NaN without ``--data-meta`` or without a finite loss.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from models import ModelConfig
from models import statistics as S

from workflows.analysis import selection
from workflows.analysis import stats
from workflows.data.corpus import train_unigram_entropy
from workflows.analysis.flags import (FLAG_RULES, FLAGS, best_lr_at_edge, flag_marks, improving_slope, on_plateau, past_ngram,
                    still_improving)
from workflows.io import atomic_path, write_csv, write_parquet, write_text

AXES = ["norm_position", "norm", "bias", "ffn", "block", "n_heads", "n_kv_heads", "attention", "position",
        "qk_norm", "attn_softcap", "final_softcap", "residual", "init", "tie_embeddings", "dropout",
        "final_norm", "attention_module", "attn_scale",
        "d_model", "n_layers", "head_dim", "d_ff", "context_length", "vocab_size"]
TRAIN_COLS = ["steps", "batch_size", "warmup_steps", "z_loss", "weight_decay", "grad_clip"]


def spike_score(grad_norms: np.ndarray, window: int = 1000, sigmas: float = 7.0) -> float:
    """OLMo 2 §3.3: % of steps whose value is ≥ ``sigmas`` σ above the rolling mean of the last
    ``window`` steps (the window is truncated at the start of training)."""
    s = pd.Series(grad_norms)
    prev = s.shift(1)
    mean = prev.rolling(window, min_periods=10).mean()
    std = prev.rolling(window, min_periods=10).std()
    valid = mean.notna()
    if not valid.any():
        return math.nan
    return float(100 * ((s > mean + sigmas * std) & valid).sum() / valid.sum())


def derived_columns(h: pd.DataFrame) -> dict:
    """The run-table columns taken from a run's history, each from the statistic that declares it
    (``columns`` in models/statistics.py); NaN without its rows (``final_weight_norm``: absent)."""
    tr = S.select(h, S.TRAIN_LOSS).sort_values("step")
    gn = S.select(h, S.TRAIN_GRAD_NORM).sort_values("step")
    logit = S.select(h, S.ATTN_LOGIT_MAX)
    logz = S.select(h, S.LOGZ_MEAN).sort_values("step")
    row = {"final_train_loss": float(tr.value.iloc[-10:].mean()) if len(tr) else math.nan,
           "max_attn_logit": float(logit.value.max()) if len(logit) else math.nan,
           "final_logz_mean": float(logz.value.iloc[-1]) if len(logz) else math.nan,
           "grad_spike_score": spike_score(gn.value.to_numpy()) if len(gn) else math.nan}
    wn = S.select(h, S.WEIGHT_NORM)
    if len(wn):  # the Frobenius norm of all weight matrices together at the last statistics step
        last = wn[wn.step == wn.step.max()]
        row["final_weight_norm"] = float(np.sqrt((last.value.astype(float) ** 2).sum()))
    return row


def run_row(run_dir: Path, grid: dict, variant: str | None = None) -> tuple[dict, pd.DataFrame]:
    """One run's row and history. ``variant``: file them under this variant (and its family) instead of
    the one that trained the run: a run two variants share (``workflows.grid.grid``) is trained once and read
    once per variant that names it, with identical numbers."""
    m = json.loads((run_dir / "metrics.json").read_text())
    h = pd.read_parquet(run_dir / "history.parquet")
    cfg = m["config"]
    mc = ModelConfig.from_dict(cfg["model"])
    label = variant or m["variant"]
    meta = grid["variants"].get(label, {})
    row = {"variant": label, "family": meta.get("family", ""), "seed": m["seed"], "lr": m["lr"],
           "status": m["status"]}
    if "rung" in meta:  # a ladder's variant <arm>@<rung> (workflows.analysis.ladder)
        row["rung"] = meta["rung"]
    row.update({a: cfg["model"].get(a) for a in AXES if a in cfg["model"]})
    row.update(n_kv_heads=mc.kv_heads, attention=mc.attention_kind, head_dim=mc.dim_head, d_ff=mc.ffn_dim)
    row.update({c: cfg["train"][c] for c in TRAIN_COLS})
    for k in ("final_val_loss", "final_val_bpb", "final_eval_tokens", "best_val_loss", "last_val_loss", "init_loss", "diverged",
              "diverged_step", "diverged_reason", "tokens_per_s", "mfu", "peak_mem_mb", "params",
              "nonembed_params", "flops_per_token", "tokens_seen", "wall_time_s", "peak_flops"):
        row[k] = m.get(k)
    for k in ("mfu_datasheet", "peak_flops_datasheet"):  # NaN on a CPU, an unknown GPU, fp32, or an older run
        row[k] = m[k] if m.get(k) is not None else math.nan
    prov = m["provenance"]
    row.update(device=prov["device"], dtype=prov["dtype"], threads=prov["threads"], git_commit=prov["git_commit"],
               torch=prov["torch"], data_key=prov["data_key"], run_dir=str(run_dir))
    # a shared GPU: the most other compute processes seen on it during the run (NaN: CPU, unknown, or an older run),
    # and the job's share of its memory; tokens/s and MFU of a run with neighbours depend on them
    neighbours = prov.get("gpu_neighbours") or {}
    row["gpu_neighbours"] = float(neighbours["max"]) if neighbours.get("max") is not None else math.nan
    fraction = prov.get("gpu_mem_fraction")
    row["gpu_mem_fraction"] = float(fraction) if fraction is not None else math.nan
    row.update(derived_columns(h))
    h.insert(0, "lr", m["lr"])
    h.insert(0, "seed", m["seed"])
    h.insert(0, "variant", label)
    return row, h


def run_entry(arg: str, grid: dict) -> Path | tuple[str, Path]:
    """A ``--runs`` argument: RUN_DIR, or VARIANT=RUN_DIR (a variant name holds no '=' or '/')."""
    variant, sep, rest = arg.partition("=")
    if sep and "/" not in variant and variant in grid["variants"]:
        return variant, Path(rest)
    return Path(arg)


def best_lr_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, lr): mean over seeds of the capped score (``selection.capped_score``: diverged runs
    counted as ℓ0), runs and diverged runs."""
    r = runs.assign(score=selection.capped_score(runs))
    return r.groupby(["variant", "lr"], as_index=False).agg(score=("score", "mean"), n=("seed", "size"),
                                                             k_div=("diverged", "sum"))


def lr_mode(grid: dict) -> str:
    """How the summary and the claims pick each variant's compared runs: ``assigned`` (an LR-pilot grid),
    ``shared`` (a pre-registered compare_lr) or ``best`` (cross-fitted)."""
    if grid.get("lr_protocol") == "pilot":
        return "assigned"
    return "shared" if grid.get("compare_lr") else "best"


def summarise(runs: pd.DataFrame, grid: dict, history: pd.DataFrame | None = None,
              unigram_entropy: float | dict = math.nan, ngram: dict | None = None,
              assignment: dict | None = None) -> pd.DataFrame:
    """One row per variant (see the module docstring); ``history`` (long format, with variant/seed/lr) is
    needed for ``still_improving`` and ``unigram_entropy`` (nats/token; or {data_key: nats/token} when
    variants use different token files, e.g. a vocabulary sweep) for ``on_plateau``; without them those
    flags are NaN. The final loss is shown at the variant's in-sample best LR (descriptive); Δ vs the
    baseline is estimated at the grid's pre-registered ``compare_lr`` when it has one, else at each side's
    cross-fitted best LR (``selection``), never at an LR chosen on the seeds that estimate it. On an LR-pilot
    grid every variant has one LR, the one its pilot seeds chose (``assignment``: lr_assignment.json, whose
    ``at_edge`` gives ``best_lr_at_edge``), and both the loss and Δ are taken there. ``ngram``: the n-gram
    references (``workflows.data.ngram``) for ``not_past_trigram``."""
    baseline = grid["baseline"]
    per_lr = best_lr_table(runs)
    order = [v for v in grid["order"] if v in set(runs.variant)]
    best = {v: selection.best_lr(runs[runs.variant == v]) for v in order}
    compare_lr = grid.get("compare_lr")
    mode = lr_mode(grid)
    trigram = float(((ngram or {}).get("orders") or {}).get("3", {}).get("nats", math.nan))

    def at_best(v):
        r = runs[(runs.variant == v) & (runs.lr == best[v])]
        return dict(zip(r.seed, r.final_val_loss.astype(float)))

    @functools.cache
    def compared(v):
        r = runs[runs.variant == v]
        return selection.values_at(r, selection.comparison_lrs(r, mode, compare_lr), "final_val_loss")

    val_hist = None
    if history is not None and len(history):
        val_hist = S.select(history, S.VAL_LOSS)
    def baseline_of(v):  # a ladder's <arm>@<rung> compares with <baseline>@<rung> (workflows.analysis.ladder)
        return grid["variants"].get(v, {}).get("baseline", baseline)

    rows = []
    for v in order:
        r = runs[runs.variant == v]
        b = baseline_of(v)
        vals = at_best(v)
        mean, lo, hi = stats.mean_ci(list(vals.values()))
        cmp = compared(v)
        if v == b:
            d, dlo, dhi, npair = 0.0, 0.0, 0.0, len(cmp)
        elif b not in best:
            d, dlo, dhi, npair = math.nan, math.nan, math.nan, 0
        elif mode == "best":  # the claims' cross-fitted interval (selection.crossfit_delta; no LR pilot)
            d, dlo, dhi, npair = selection.crossfit_delta(r, runs[runs.variant == b], "final_val_loss")
        else:
            d, dlo, dhi, npair = stats.paired_delta(cmp, compared(b))
        base_tps = runs[runs.variant == b].tokens_per_s.median() if b in best else math.nan
        k, n = int(r.diverged.sum()), len(r)
        wlo, whi = stats.wilson(k, n)
        lrs = per_lr[per_lr.variant == v]
        stable = r.groupby("lr").diverged.sum()
        stable = stable[stable == 0]
        tps = r.tokens_per_s.median()
        eta = float(best[v])
        if val_hist is not None:
            hv = val_hist[(val_hist.variant == v) & np.isclose(val_hist.lr.astype(float), eta, rtol=1e-9, atol=0)]
            at = r[np.isclose(r.lr.astype(float), eta, rtol=1e-9, atol=0)]
            steps = float(at.steps.max()) if "steps" in at.columns else math.nan
            improving = still_improving(hv[["seed", "step", "value"]], steps)
            slope = improving_slope(hv[["seed", "step", "value"]], steps)
        else:
            improving, slope = math.nan, (math.nan, math.nan, math.nan, 0)
        if mode == "assigned":  # the pilot's: None (not decidable) for a fixed LR or two candidates
            at_edge = ((assignment or {}).get("variants") or {}).get(v, {}).get("at_edge")
            at_edge = math.nan if at_edge is None else bool(at_edge)
        else:
            at_edge = best_lr_at_edge(eta, r.lr.unique())
        rows.append({
            "variant": v, "family": grid["variants"][v].get("family", ""), "runs": n,
            "seeds": r.seed.nunique(), "lrs": r.lr.nunique(), "best_lr": best[v],
            "final_loss": mean, "final_loss_ci_low": lo, "final_loss_ci_high": hi,
            "delta_vs_baseline": d, "delta_ci_low": dlo, "delta_ci_high": dhi, "delta_pairs": npair,
            "delta_at": selection.describe(mode, compare_lr),
            "diverged": k, "divergence_rate": k / n if n else math.nan, "divergence_ci_low": wlo,
            "divergence_ci_high": whi,
            "lr_sensitivity": (stats.lr_sensitivity(dict(zip(lrs.lr, lrs.score)), float(r.init_loss.iloc[0]))
                               if len(lrs) > 1 else math.nan),  # (one LR: no sensitivity to speak of)
            "max_stable_lr": float(stable.index.max()) if len(stable) else math.nan,
            "tokens_per_s": tps, "speed_ratio": tps / base_tps if base_tps else math.nan,
            "mfu": r.mfu.median(), "params": int(r.params.iloc[0]), "nonembed_params": int(r.nonembed_params.iloc[0]),
            "final_slope": slope[0], "final_slope_ci_low": slope[1], "final_slope_ci_high": slope[2],
            "trigram_ref": trigram, "final_eval_tokens": int(r.final_eval_tokens.min())
            if "final_eval_tokens" in r.columns and r.final_eval_tokens.notna().any() else 0,
            "best_lr_at_edge": at_edge,
            "still_improving": improving,
            "on_plateau": on_plateau(mean, unigram_entropy.get(r.data_key.iloc[0], math.nan)
                                     if isinstance(unigram_entropy, dict) else unigram_entropy),
            "not_past_trigram": (math.nan if not (np.isfinite(trigram) and np.isfinite(mean)) else
                                 not past_ngram(hi if np.isfinite(hi) else mean, trigram)),
        })
    out = pd.DataFrame(rows)
    if len(out):
        for col in FLAGS:  # True / False / <NA> (not decidable)
            out[col] = out[col].astype("boolean")
    return out


def markdown_summary(s: pd.DataFrame, lr_label: str = "best LR") -> str:
    def ci(m, lo, hi, f="{:.3f}"):
        if not np.isfinite(m):
            return "—"
        return f.format(m) + (f" [{f.format(lo)}, {f.format(hi)}]" if np.isfinite(lo) else "")

    t = pd.DataFrame({
        "variant": [f"{v} {m}" if m else v for v, m in zip(s.variant, (flag_marks(r) for _, r in s.iterrows()))],
        lr_label: s.best_lr.map("{:g}".format),
        "final loss [95% CI]": [ci(*x) for x in zip(s.final_loss, s.final_loss_ci_low, s.final_loss_ci_high)],
        "Δ vs baseline [95% CI]": [ci(*x, f="{:+.3f}") for x in zip(s.delta_vs_baseline, s.delta_ci_low, s.delta_ci_high)],
        "diverged k/n [Wilson 95%]": [f"{k}/{n} [{lo:.2f}, {hi:.2f}]" for k, n, lo, hi in
                                      zip(s.diverged, s.runs, s.divergence_ci_low, s.divergence_ci_high)],
        "LR sensitivity": s.lr_sensitivity.map(lambda x: f"{x:.3f}" if np.isfinite(x) else "—"),
        "tokens/s": s.tokens_per_s.map("{:,.0f}".format),
        "speed vs baseline": s.speed_ratio.map("{:.2f}×".format),
        "params": s.params.map("{:,}".format),
    })
    return t.to_markdown(index=False)


def markdown_notes(unigram: dict | None, ngram: dict | None = None) -> str:
    """The legend of the marks and the rule of each flag, for under the table."""
    lines = ["Marks: " + ", ".join(f"{mark} {FLAG_RULES[col].split(':')[0]}" for col, mark in FLAGS.items())
             + " (columns " + ", ".join(f"`{c}`" for c in FLAGS) + " of summary.csv; empty where not decidable).", ""]
    for col, mark in FLAGS.items():
        name, rule = FLAG_RULES[col].split(": ", 1)
        lines.append(f"- {mark} `{col}` ({name}): {rule}.")
    if unigram and np.isfinite(unigram.get("nats_per_token", math.nan)):
        lines.append(f"\nUnigram entropy of the training split: {unigram['nats_per_token']:.3f} nats/token "
                     f"({unigram['bits_per_byte']:.3f} bits/byte).")
    else:
        lines.append("\nUnigram entropy of the training split: not given (run with `--data-meta`), so "
                     "`on_plateau` is not decided.")
    if ngram:
        refs = ", ".join(f"{o['name']} {o['nats']:.3f}" for _, o in sorted(ngram["orders"].items(), key=lambda x: int(x[0])))
        lines.append(f"\nN-gram references on the same {ngram['eval_tokens']:,} evaluation tokens (nats/token; "
                     f"{ngram['method']}): {refs}.")
    return "\n".join(lines)


def aggregate(run_dirs: list[Path], grid: dict, out: Path, unigram: dict | None = None,
              data_meta: str | Path | None = None, ngram: dict | None = None,
              assignment: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the tables; ``unigram``: the training split's unigram entropy
    ({"nats_per_token", "bits_per_byte"}, ``workflows.data.corpus.train_unigram_entropy``) for ``on_plateau``.
    When the runs use several token files (e.g. a vocabulary sweep) and ``data_meta`` (WORK/data/KEY/meta.json)
    is given, each variant is judged against its own files' entropy, read from WORK/data/<its data_key>/."""
    # an entry is a run folder, or (variant, folder) for a run shared with (trained by) another variant
    rows, hists = zip(*(run_row(Path(d[1]), grid, d[0]) if isinstance(d, tuple) else run_row(Path(d), grid)
                        for d in run_dirs))
    runs = pd.DataFrame(rows)
    order = {v: i for i, v in enumerate(grid["order"])}
    runs = runs.sort_values(["variant", "lr", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c)
    runs = runs.reset_index(drop=True)
    history = pd.concat(hists, ignore_index=True)
    entropy = (unigram or {}).get("nats_per_token", math.nan)
    if data_meta is not None and "data_key" in runs.columns and runs.data_key.nunique() > 1:
        folders = Path(data_meta).parent.parent
        entropy = {k: (train_unigram_entropy(folders / k / "meta.json")["nats_per_token"]
                       if (folders / k / "meta.json").exists() else math.nan) for k in runs.data_key.unique()}
    if assignment is not None:  # an LR-pilot grid: every row is an evaluation run at its assigned LR
        runs.insert(1, "stage", "eval")
    summary = summarise(runs, grid, history, entropy, ngram, assignment)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", runs)
    write_parquet(out / "runs.parquet", runs)
    write_parquet(out / "history.parquet", history)
    write_csv(out / "summary.csv", summary)
    delta_at = summary.delta_at.iloc[0] if len(summary) else ""
    where = ("Final loss per variant at the LR its pilot seeds chose (lr_assignment.json; the evaluation seeds ran "
             "only there)" if lr_mode(grid) == "assigned" else
             "Final loss per variant at its in-sample best LR (lowest mean capped score over all its seeds, "
             "diverged runs counted as ln(vocab); descriptive)")
    tokens = (f", scored on {int(summary.final_eval_tokens.min()):,} validation tokens"
              if len(summary) and summary.final_eval_tokens.min() > 0 else "")
    header = (f"{where}{tokens}: mean with a {stats.T_INTERVAL}. Δ vs baseline: "
              f"{delta_at}, paired by seed, {stats.PAIRED_T_INTERVAL} — not at the in-sample best LR, whose "
              "selection on the same seeds would bias it. Divergence: Wilson 95% score interval over all runs of "
              "the variant.\n\n")
    write_text(out / "summary.md", header + markdown_summary(summary, "LR (pilot)" if lr_mode(grid) == "assigned" else "best LR") + "\n\n" + markdown_notes(unigram, ngram) + "\n")
    with atomic_path(out / "summary.tex") as tmp:
        tmp.write_text(summary.drop(columns=["family"]).to_latex(index=False, float_format="%.4g"))
    return runs, summary


def main(argv=None):
    p = argparse.ArgumentParser(description="Aggregate finished runs into tidy tables.")
    p.add_argument("--grid", required=True, help="grid.json written by the pipeline (variants, order, baseline)")
    p.add_argument("--runs", nargs="+", required=True,
                   help="run folders holding metrics.json + history.parquet; VARIANT=RUN_DIR files a run that "
                        "another variant trained (an identical config) under VARIANT as well")
    p.add_argument("--out", default="results")
    p.add_argument("--ngram", help="n-gram references on the evaluation tokens (workflows.data.ngram's JSON): the "
                                   "not_past_trigram flag and the reference lines")
    p.add_argument("--assignment", help="lr_assignment.json of an LR-pilot grid (workflows.analysis.pilot)")
    p.add_argument("--data-meta", help="meta.json of the token files (WORK/data/KEY/meta.json): the training "
                                       "split's unigram entropy for the on_plateau flag (absent: NaN)")
    args = p.parse_args(argv)
    grid = json.loads(Path(args.grid).read_text())
    unigram = train_unigram_entropy(args.data_meta) if args.data_meta else None
    entries = [run_entry(r, grid) for r in args.runs]
    ngram = json.loads(Path(args.ngram).read_text()) if args.ngram else None
    assignment = json.loads(Path(args.assignment).read_text()) if args.assignment else None
    runs, summary = aggregate(entries, grid, Path(args.out), unigram, args.data_meta, ngram, assignment)
    bad = runs[runs.status != "ok"]
    print(f"{len(runs)} runs ({len(bad)} diverged) of {runs.variant.nunique()} variants -> {args.out}/")


if __name__ == "__main__":
    main()
