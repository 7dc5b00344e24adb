"""Figures from small synthetic tables: every figure is written (PNG + PDF, non-empty, PNG readable),
also for grids lacking the variants a figure compares (qk_norm, no_residual, post_norm), with a
variant whose runs all diverged, and without per-layer statistics."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from workflows import claims
from workflows.analysis import scale
from workflows.analysis.aggregate import summarise
from workflows.analysis.flags import FLAGS
from workflows.plots import claims as claim_plots
from workflows.plots import layers, registry, render, runs, style, sweeps, tables

L0 = math.log(256)
UNIGRAM = 2.66  # the synthetic training split's unigram entropy (nats/token)
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
        tau = 6 if v in ("baseline", "post_norm") else 3  # the others have converged by the end (flags differ)
        val = 2.55 + quality + (L0 - 2.5) * math.exp(-step / tau) if step < end or diverge_at is None else float("nan")
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
                             "mfu": 0.1, "params": 1000 if v == "baseline" else 1000 + 10 * len(v),
                             "nonembed_params": 800, "device": "synthetic CPU", "steps": STEPS,
                             "tokens_seen": 64 * (dv or STEPS)})
    runs = pd.DataFrame(rows)
    hist = pd.concat(hists, ignore_index=True)
    root.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(root / "runs.parquet", index=False)
    hist.to_parquet(root / "history.parquet", index=False)
    summarise(runs, grid, hist, UNIGRAM).to_csv(root / "summary.csv", index=False)
    (root / "grid.json").write_text(json.dumps(grid))
    return root


def check_outputs(out, names=None):
    names = names or list(render.FIGURES)
    for name in names:
        for fmt in registry.FORMATS:
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
    assert render.main(["--results", str(res), "--grid", str(res / "grid.json"), "--out", str(out)]) == 0
    check_outputs(out)
    d = tables.load(res, res / "grid.json")
    assert "not in this grid" not in layers.fig_attn_logits(d)._suptitle.get_text()
    assert "not in this grid" not in layers.fig_activations(d)._suptitle.get_text()


def test_reduced_grid_and_an_all_diverged_variant(tmp_path):
    """No qk_norm / no_residual / post_norm; every no_norm run diverges (one before timing starts)."""
    grid = make_grid(REDUCED)
    res = write_results(tmp_path / "res", grid, {"no_norm": 3})
    summary = pd.read_csv(res / "summary.csv")
    assert summary.set_index("variant").final_loss.isna()["no_norm"]
    out = tmp_path / "fig"
    assert render.main(["--results", str(res), "--grid", str(res / "grid.json"), "--out", str(out)]) == 0
    check_outputs(out)
    d = tables.load(res, res / "grid.json")
    assert "qk_norm" in layers.fig_attn_logits(d)._suptitle.get_text()
    title = layers.fig_activations(d)._suptitle.get_text()
    assert "post-norm" in title and "no-residual" in title


def test_no_layer_statistics_and_only(tmp_path):
    grid = make_grid({k: FULL[k] for k in ("baseline", "qk_norm")}, stats_every=0)
    res = write_results(tmp_path / "res", grid, {}, stats=False)
    out = tmp_path / "fig"
    names = ["activations", "grad_norms", "attn_logits", "loss_curves"]
    assert render.main(["--results", str(res), "--out", str(out), "--only", *names]) == 0
    check_outputs(out, names)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{f}" for n in names for f in registry.FORMATS)


def test_palette_is_one_mapping_with_the_baseline_highlighted():
    grid = make_grid({**FULL, **{k: v for k, v in REDUCED.items() if k != "baseline"}})
    pal = style.palette(grid)
    assert pal == style.palette(json.loads(json.dumps(grid)))
    assert set(pal) == set(grid["order"])
    assert pal["baseline"] == style.BASELINE_COLOR
    others = [c for v, c in pal.items() if v != "baseline"]
    assert len(set(others)) == len(others) and style.BASELINE_COLOR not in others
    # a variant's colour depends on the grid order only, not on which runs exist
    assert style.variant_order(grid, {"qk_norm", "baseline"}) == ["baseline", "qk_norm"]


@pytest.mark.parametrize("n", [1, 9, 27, 40])
def test_distinct_colors(n):
    cols = style.distinct_colors(n)
    assert len(cols) == n and len(set(cols)) == n


def test_rule_declares_every_figure_with_a_caption():
    root = Path(__file__).resolve().parents[2] / "workflows"
    smk = (root / "rules" / "figures.smk").read_text()
    assert 'FIGURE_NAMES = plots_registry.names("grid")' in smk  # the rule reads the registry's names
    names = registry.names("grid")
    assert names == list(render.FIGURES)
    for name in names:
        assert (root / "report" / f"{name}.rst").read_text().strip(), name
    assert (root / "report" / "workflow.rst").exists()


# ------------------------------------------------------------------------------------------------
# the scale subtitle, the unigram reference line and the flag marks
# ------------------------------------------------------------------------------------------------
def test_scale_line():
    runs = pd.DataFrame({"variant": ["baseline", "baseline", "wide", "wide"], "params": [1000, 1000, 900, 1200],
                         "tokens_seen": [5120, 2048, 5120, 5120], "seed": [0, 1, 0, 2], "device": ["X"] * 4})
    assert scale.scale_line(runs, "baseline") == ("scale: 1k params (baseline; 900–1.2k over variants) · "
                                                  "5.12k training tokens per run · 2 seeds · device: X")  # per variant
    # arms with their own seed counts (the default grid: 4 to 9): the range, and the baseline's
    more = pd.concat([runs, runs.iloc[[0]].assign(seed=5), runs.iloc[[0]].assign(seed=6)])
    assert "· 2–4 seeds per variant (baseline 4) ·" in scale.scale_line(more, "baseline")
    assert "· 2–4 seeds per variant ·" in scale.scale_line(more, "nope")
    one = runs[runs.variant == "baseline"].drop(columns="device")
    assert scale.scale_line(one, "baseline") == ("scale: 1k params (baseline) · 5.12k training tokens per run · "
                                                 "2 seeds · device: unknown")
    assert scale.scale_line(runs, "nope").startswith("scale: 900–1.2k params ·")
    assert scale.scale_line(None) == "scale: no training runs"
    assert scale.scale_of(runs) == ("900–1.2k", "5.12k")
    # runs planned at different lengths (a ladder's horizon arms): the baseline's, with the range over runs
    planned = runs.assign(steps=[10, 10, 5, 15], batch_size=8, context_length=64)
    assert "· 5.12k training tokens per run (baseline; 2.56k–7.68k over runs) ·" in scale.scale_line(planned, "baseline")
    assert "· 2.56k–7.68k training tokens per run ·" in scale.scale_line(planned, "nope")
    same = runs.assign(steps=10, batch_size=8, context_length=64)  # one planned length: as before
    assert scale.scale_line(same, "baseline") == scale.scale_line(runs, "baseline")


def _subtitle(fig):
    subs = [t for t in fig.texts if t.get_gid() == style.SUBTITLE_GID]
    assert len(subs) == 1
    return subs[0]


def _assert_below_title_above_axes(fig, sub):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = sub.get_window_extent(r)
    if fig._suptitle is not None:
        assert box.y1 <= fig._suptitle.get_window_extent(r).y0 + 0.5, "subtitle overlaps the title"
    for ax in fig.axes:
        if ax.get_visible():
            assert box.y0 >= ax.get_tightbbox(r).y1 - 0.5, "subtitle overlaps an axes"


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Data of a full synthetic grid with the unigram entropy known."""
    res = write_results(tmp_path_factory.mktemp("res"), make_grid(FULL), {("post_norm", 0.1): 12})
    d = tables.load(res, res / "grid.json")
    d.unigram_entropy = UNIGRAM
    return d


@pytest.mark.parametrize("name", list(render.FIGURES))
def test_every_figure_has_a_scale_subtitle(drawn, name):
    import matplotlib.pyplot as plt

    fig = render.draw(name, drawn)
    sub = _subtitle(fig)
    text = sub.get_text()
    assert text == scale.scale_line(drawn.runs, "baseline")
    assert "1k params (baseline; 1k–1.11k over variants)" in text and "2.56k training tokens per run" in text
    assert "2 seeds" in text and "device: synthetic CPU" in text
    _assert_below_title_above_axes(fig, sub)
    plt.close(fig)


def _unigram_lines(ax):
    return [ln for ln in ax.get_lines() if ln.get_gid() == style.UNIGRAM_GID]


@pytest.mark.parametrize("name", ["loss_vs_lr", "loss_curves"])
def test_loss_figures_draw_the_unigram_entropy(drawn, name):
    import matplotlib.pyplot as plt

    fig = render.FIGURES[name](drawn)
    facets = [ax for ax in fig.axes if ax.get_visible()]
    for ax in facets:
        (line,) = _unigram_lines(ax)
        assert np.allclose(line.get_ydata(), UNIGRAM)  # horizontal, at H₁
        lo, hi = ax.get_ylim()
        assert lo < UNIGRAM < hi
        assert any(t.get_gid() == style.UNIGRAM_GID and "2.66" in t.get_text() for t in ax.texts)  # labelled
    legend_texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert any("unigram entropy" in t and "2.66" in t for t in legend_texts)
    plt.close(fig)
    drawn.unigram_entropy = math.nan  # unknown: no line, no legend entry
    try:
        fig = render.FIGURES[name](drawn)
        assert not any(_unigram_lines(ax) for ax in fig.axes)
        assert not any("unigram" in t.get_text() for leg in fig.legends for t in leg.get_texts())
        plt.close(fig)
    finally:
        drawn.unigram_entropy = UNIGRAM


def test_loss_by_variant_marks_flags_and_draws_the_unigram_entropy(drawn):
    import matplotlib.pyplot as plt

    s = drawn.summary.set_index("variant")
    fig = render.FIGURES["loss_by_variant"](drawn)
    a1 = fig.axes[0]
    (line,) = _unigram_lines(a1)
    assert np.allclose(line.get_xdata(), UNIGRAM)  # the loss axis is x here
    labels = [t.get_text() for t in a1.get_yticklabels()]
    for v, label in zip(drawn.order, labels):
        want = "".join(m for c, m in FLAGS.items() if str(s.loc[v, c]) == "True")
        assert label == (f"{v} {want}" if want else v)
    assert any(label.endswith("†") or "†" in label for label in labels)  # best LR 0.01 = the grid's edge
    legend_texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    for mark in ("†", "↗", "≈"):
        assert any(t.startswith(mark) for t in legend_texts), legend_texts
    assert any("unigram entropy" in t for t in legend_texts)
    plt.close(fig)


def test_claims_figure_has_the_scale_subtitle(drawn):
    import matplotlib.pyplot as plt

    registry = Path(__file__).resolve().parents[2] / "config" / "claims.yaml"
    df = claims.evaluate(registry, claims.Evidence(drawn.runs, {}))
    fig = claim_plots.claims_forest(df, drawn.runs, "baseline")
    sub = _subtitle(fig)
    assert sub.get_text() == scale.scale_line(drawn.runs, "baseline")
    _assert_below_title_above_axes(fig, sub)
    plt.close(fig)
    fig = claim_plots.claims_forest(df, None)
    assert _subtitle(fig).get_text().startswith("scale: no training runs")
    plt.close(fig)


def test_sweep_figures(tmp_path):
    """One figure per sweep: numeric values on a log axis with the rule of thumb marked, and a sweep with
    an 'off' value on categorical positions; per-value mean and t interval at the best LR."""
    variants = {"baseline": ("baseline", {}), "ratio_1": ("ratio", {"d_ff": 32}), "ratio_4": ("ratio", {"d_ff": 128}),
                "ratio_8": ("ratio", {"d_ff": 256}), "clip_1": ("clip", {}), "clip_off": ("clip", {})}
    grid = make_grid(variants)
    grid["sweeps"] = {
        "ratio": {"x": "d_ff / d_model", "reference": 4, "scale": "log", "metric": "loss", "description": "",
                  "values": [{"variant": f"ratio_{x}", "value": x, "label": str(x)} for x in (1, 4, 8)]},
        "clip": {"x": "gradient clipping", "reference": 1, "scale": "linear", "metric": "loss", "description": "",
                 "values": [{"variant": "clip_1", "value": 1, "label": "1"},
                            {"variant": "clip_off", "value": None, "label": "off"}]},
    }
    res = write_results(tmp_path / "res", grid, {("ratio_8", 0.1): 12})
    out = tmp_path / "fig"
    assert render.main(["--results", str(res), "--grid", str(res / "grid.json"), "--out", str(out),
                         "--only", "sweep_ratio", "sweep_clip"]) == 0
    check_outputs(out, ["sweep_ratio", "sweep_clip"])
    d = tables.load(res, res / "grid.json")
    t = sweeps.sweep_table(d, "ratio")
    runs = d.runs[(d.runs.variant == "ratio_4") & np.isclose(d.runs.lr, t.set_index("variant").best_lr["ratio_4"])]
    m, lo, hi = stats_mean_ci(runs.final_val_loss)
    row = t.set_index("variant").loc["ratio_4"]
    assert (row["mean"], row.low, row.high) == pytest.approx((m, lo, hi))
    fig = sweeps.fig_sweep(d, "ratio")
    a1 = fig.axes[0]
    assert a1.get_xscale() == "log" and any(l.get_label().startswith("rule of thumb: 4") for l in a1.get_lines())
    assert [x.get_text() for x in a1.get_xticklabels()] == ["1", "4", "8"]
    fig = sweeps.fig_sweep(d, "clip")
    assert fig.axes[0].get_xscale() == "linear" and [x.get_text() for x in fig.axes[0].get_xticklabels()] == ["1", "off"]
    with pytest.raises(SystemExit):
        render.main(["--results", str(res), "--out", str(out), "--only", "sweep_nope"])


def stats_mean_ci(values):
    from workflows.analysis import stats

    return stats.mean_ci(list(values))


def test_throughput_figure_shows_the_side_by_side_ratios_beside_the_grid_jobs(drawn):
    """With a speed table the figure gets a second, judged panel: the geometric-mean ratio per variant over the
    reps (paired by rep), whose interval comes from the reps, not from the grid jobs."""
    import dataclasses

    import matplotlib.pyplot as plt

    rows = [{"variant": v, "rep": i, "tokens_per_s": base * (1 + 0.01 * ((i % 3) - 1))}
            for v, base in (("baseline", 1000.0), ("mqa", 1150.0)) for i in range(5)]
    ratios = runs.speed_ratios(pd.DataFrame(rows), "baseline").set_index("variant")
    assert ratios.loc["baseline", "ratio"] == pytest.approx(1.0)
    assert ratios.loc["mqa", "ratio"] == pytest.approx(1.15) and ratios.loc["mqa", "low"] <= 1.15 <= ratios.loc["mqa", "high"]
    fig = runs.fig_throughput(dataclasses.replace(drawn, speed=pd.DataFrame(rows)))
    titles = [a.get_title() for a in fig.axes]
    assert len(fig.axes) == 2 and "not judged" in titles[0] and "judged (speed claims)" in titles[1]
    plt.close(fig)
    fig = runs.fig_throughput(drawn)  # no speed table: one panel, still labelled as not judged
    assert len(fig.axes) == 1 and "not judged" in fig.axes[0].get_title()
    plt.close(fig)
