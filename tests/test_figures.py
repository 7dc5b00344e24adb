"""Figures from small synthetic tables: every figure is written (PNG + PDF, non-empty, PNG readable),
also for grids lacking the variants a figure compares (qk_norm, no_residual, post_norm), with a
variant whose runs all diverged, and without per-layer statistics."""
from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from workflows import figures
from workflows.aggregate import summarise

L0 = math.log(256)
STEPS, STATS_EVERY, EVAL_EVERY, N_LAYERS = 40, 10, 20, 2


def make_grid(variants: dict, stats_every: int = STATS_EVERY) -> dict:
    return {"name": "synthetic", "baseline": "baseline", "order": list(variants), "seeds": [0, 1],
            "lrs": [0.01, 0.1],
            "variants": {v: {"family": fam, "description": "", "model": model, "train": {}}
                         for v, (fam, model) in variants.items()},
            "model": {"d_model": 32, "n_layers": N_LAYERS, "norm_position": "pre", "block": "serial"},
            "train": {"steps": STEPS, "stats_every": stats_every}}


def history(v, seed, lr, diverge_at, parallel, rng, stats=True):
    """A plausible long-format history; a diverging run stops at ``diverge_at`` with an exploding loss."""
    rows = []
    end = STEPS if diverge_at is None else diverge_at
    quality = 0.0 if v == "baseline" else 0.01 * (sum(map(ord, v)) % 7)
    for step in range(end):
        loss = 2.5 + quality + (L0 - 2.5) * math.exp(-step / 6) + 0.05 * rng.standard_normal()
        if diverge_at is not None and step >= diverge_at - 3:
            loss = [8.0, 40.0, float("nan")][step - diverge_at + 3]
        rows += [(step, "train", "loss", -1, "", loss), (step, "train", "grad_norm", -1, "", 1 + rng.random()),
                 (step, "train", "lr", -1, "", lr)]
        if stats and step % STATS_EVERY == 0:
            growth = 1 + step * lr * (3 if v == "no_residual" else 1)
            sites = [(-1, "embed")] + [(i, s) for i in range(N_LAYERS)
                                       for s in (("attn+ffn",) if parallel else ("attn", "ffn"))]
            for k, (layer, site) in enumerate(sites):
                rms = 0.02 * growth * (1 + k)
                for m, val in (("mean", 0.0), ("std", rms), ("rms", rms), ("maxabs", 5 * rms)):
                    rows.append((step, "layer", f"resid_{m}", layer, site, val))
            for i in range(N_LAYERS):
                logit = 3.0 if v == "qk_norm" else 0.05 + step * lr * 10 * (i + 1)
                rows += [(step, "layer", "attn_logit_max", i, "", logit),
                         (step, "layer", "grad_norm", i, "", 0.3 / (1 + i) / growth),
                         (step, "layer", "update_ratio", i, "", 1e-3 * lr)]
            rows += [(step, "logits", "logz_mean", -1, "", 5.0), (step, "logits", "logz_max", -1, "", 6.0)]
    for step in range(0, end + 1, EVAL_EVERY):
        val = 2.55 + quality + (L0 - 2.5) * math.exp(-step / 6) if step < end or diverge_at is None else float("nan")
        rows.append((step, "val", "loss", -1, "", val))
    h = pd.DataFrame(rows, columns=["step", "kind", "metric", "layer", "site", "value"])
    h.insert(0, "lr", lr)
    h.insert(0, "seed", seed)
    h.insert(0, "variant", v)
    return h


def write_results(root, grid, diverge: dict, stats=True):
    """runs.parquet, history.parquet, summary.csv (by the real aggregate.summarise) and grid.json."""
    rng = np.random.default_rng(0)
    rows, hists = [], []
    for v in grid["order"]:
        parallel = grid["variants"][v]["model"].get("block") == "parallel"
        for lr in grid["lrs"]:
            for seed in grid["seeds"]:
                dv = diverge.get((v, lr), diverge.get(v))
                h = history(v, seed, lr, dv, parallel, rng, stats)
                hists.append(h)
                val = h[(h.kind == "val") & (h.metric == "loss")].value
                rows.append({"variant": v, "family": grid["variants"][v]["family"], "seed": seed, "lr": lr,
                             "status": "diverged" if dv else "ok", "diverged": dv is not None,
                             "final_val_loss": math.nan if dv else float(val.iloc[-1]), "init_loss": L0,
                             "tokens_per_s": (math.nan if dv == 3 else 1000.0 * (1 + 0.1 * rng.random())
                                              * (0.8 if v != "baseline" else 1.0)),
                             "mfu": 0.1, "params": 1000, "nonembed_params": 800, "device": "synthetic CPU"})
    runs = pd.DataFrame(rows)
    root.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(root / "runs.parquet", index=False)
    pd.concat(hists, ignore_index=True).to_parquet(root / "history.parquet", index=False)
    summarise(runs, grid).to_csv(root / "summary.csv", index=False)
    (root / "grid.json").write_text(json.dumps(grid))
    return root


def check_outputs(out, names=None):
    names = names or list(figures.FIGURES)
    for name in names:
        for fmt in figures.FORMATS:
            path = out / f"{name}.{fmt}"
            assert path.exists() and path.stat().st_size > 1000, path
        img = mpimg.imread(out / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, (name, img.shape)
        assert img[..., :3].std() > 0.01, f"{name}.png looks blank"
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


FULL = {"baseline": ("baseline", {}),
        "post_norm": ("norm position", {"norm_position": "post"}),
        "no_residual": ("residual", {"residual": False}),
        "qk_norm": ("stability", {"qk_norm": True}),
        "parallel": ("block", {"block": "parallel"})}
REDUCED = {"baseline": ("baseline", {}),
           "gelu": ("ffn", {"ffn": "gelu"}),
           "mha": ("attention", {"n_kv_heads": 4}),
           "no_norm": ("norm type", {"norm": "none"})}


def test_full_grid_with_some_divergence(tmp_path):
    grid = make_grid(FULL)
    res = write_results(tmp_path / "res", grid, {("baseline", 0.1): 25, ("post_norm", 0.1): 12})
    out = tmp_path / "fig"
    assert figures.main(["--results", str(res), "--grid", str(res / "grid.json"), "--out", str(out)]) == 0
    check_outputs(out)
    d = figures.load(res, res / "grid.json")
    assert "not in this grid" not in figures.fig_attn_logits(d)._suptitle.get_text()
    assert "not in this grid" not in figures.fig_activations(d)._suptitle.get_text()


def test_reduced_grid_and_an_all_diverged_variant(tmp_path):
    """No qk_norm / no_residual / post_norm; every no_norm run diverges (one before timing starts)."""
    grid = make_grid(REDUCED)
    res = write_results(tmp_path / "res", grid, {"no_norm": 3})
    summary = pd.read_csv(res / "summary.csv")
    assert summary.set_index("variant").final_loss.isna()["no_norm"]
    out = tmp_path / "fig"
    assert figures.main(["--results", str(res), "--grid", str(res / "grid.json"), "--out", str(out)]) == 0
    check_outputs(out)
    d = figures.load(res, res / "grid.json")
    assert "qk_norm" in figures.fig_attn_logits(d)._suptitle.get_text()
    title = figures.fig_activations(d)._suptitle.get_text()
    assert "post-norm" in title and "no-residual" in title


def test_no_layer_statistics_and_only(tmp_path):
    grid = make_grid({k: FULL[k] for k in ("baseline", "qk_norm")}, stats_every=0)
    res = write_results(tmp_path / "res", grid, {}, stats=False)
    out = tmp_path / "fig"
    names = ["activations", "grad_norms", "attn_logits", "loss_curves"]
    assert figures.main(["--results", str(res), "--out", str(out), "--only", *names]) == 0
    check_outputs(out, names)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{f}" for n in names for f in figures.FORMATS)


def test_palette_is_one_mapping_with_the_baseline_highlighted():
    grid = make_grid({**FULL, **{k: v for k, v in REDUCED.items() if k != "baseline"}})
    pal = figures.palette(grid)
    assert pal == figures.palette(json.loads(json.dumps(grid)))
    assert set(pal) == set(grid["order"])
    assert pal["baseline"] == figures.BASELINE_COLOR
    others = [c for v, c in pal.items() if v != "baseline"]
    assert len(set(others)) == len(others) and figures.BASELINE_COLOR not in others
    # a variant's colour depends on the grid order only, not on which runs exist
    assert figures.variant_order(grid, {"qk_norm", "baseline"}) == ["baseline", "qk_norm"]


@pytest.mark.parametrize("n", [1, 9, 27, 40])
def test_distinct_colors(n):
    cols = figures._distinct_colors(n)
    assert len(cols) == n and len(set(cols)) == n


def test_rule_declares_every_figure_with_a_caption():
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "workflows"
    smk = (root / "rules" / "figures.smk").read_text()
    names = ast.literal_eval(re.search(r"FIGURE_NAMES = (\[.*?\])", smk, re.S).group(1))
    assert names == list(figures.FIGURES)
    for name in names:
        assert (root / "report" / f"{name}.rst").read_text().strip(), name
    assert (root / "report" / "workflow.rst").exists()
