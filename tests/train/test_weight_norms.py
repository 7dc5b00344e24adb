"""Per-layer weight norms: the groups of ``measure.weight_matrices`` (every weight matrix once, by layer and
site), the ``weight_norm`` rows a training run records at its statistics steps (equal to torch.linalg.norm
of the weights at that step), weight decay against norm growth, and the ``weight_norms`` figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from models import ModelConfig, build
from workflows.plots import layers, tables
from workflows.plots.save import save
from workflows.train import loop as T
from workflows.train.measure import weight_matrices, weight_norms


@pytest.mark.parametrize("kw", [{}, {"block": "parallel"},
                                {"tie_embeddings": False, "position": "learned", "bias": True, "qk_norm": True,
                                 "norm_position": "sandwich", "norm": "layernorm"}])
def test_weight_matrices_hold_every_matrix_once_by_layer_and_site(kw):
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=3, n_heads=4, **kw)
    m = build(cfg)
    groups = weight_matrices(m)
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters() if p.ndim >= 2}  # no norm gain, no bias, nothing missed
    sites = ("attn+ffn",) if cfg.block == "parallel" else ("attn", "ffn")
    expect = {(i, s) for i in range(3) for s in sites} | {(-1, "embed")}
    if not cfg.tie_embeddings:
        expect |= {(-1, "head"), (-1, "pos")}
    assert set(groups) == expect
    names = {id(p): n for n, p in m.named_parameters()}
    for (layer, site), ps in groups.items():
        for p in ps:
            n = names[id(p)]
            if layer >= 0:
                assert n.startswith(f"blocks.{layer}.sublayers.{sites.index(site)}.f."), (layer, site, n)
    assert [names[id(p)] for p in groups[(-1, "embed")]] == ["tok_emb.weight"]
    norms = weight_norms(groups)
    ref = torch.linalg.norm(torch.cat([p.detach().flatten() for p in groups[(0, sites[0])]])).item()
    assert norms[(0, sites[0])] == pytest.approx(ref, rel=1e-6)


def run_dict(corpus, **train):
    return {"variant": "t", "seed": 0, "data": {"source": str(corpus / "*.txt")},
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 16},
            "train": {"steps": 30, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "eval_every": 30,
                      "eval_windows": 4, "log_every": 5, "stats_every": 10, "checkpoint_every": 0, **train}}


def _reference_norm(state: dict, layer: int, site: str) -> float:
    """torch.linalg.norm of the named weight matrices of (layer, site), grouped by parameter name here."""
    prefix = {"attn": f"blocks.{layer}.sublayers.0.f.", "ffn": f"blocks.{layer}.sublayers.1.f.",
              "embed": "tok_emb.weight"}[site]
    ts = [t for n, t in state.items() if n.startswith(prefix) and t.ndim >= 2]
    return torch.linalg.norm(torch.cat([t.flatten() for t in ts])).item()


def test_recorded_weight_norm_equals_linalg_norm_at_that_step(corpus, work, tmp_path, monkeypatch):
    seen = []  # the weights at each statistics step, before its update
    real = T.train_step

    def spy(model, opt, x, y, tc, **k):
        if k.get("stats"):
            seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return real(model, opt, x, y, tc, **k)

    monkeypatch.setattr(T, "train_step", spy)
    T.train(T.RunConfig.from_dict(run_dict(corpus)), tmp_path / "run", work, threads=1)
    h = pd.read_parquet(tmp_path / "run" / "history.parquet")
    w = h[(h.kind == "layer") & (h.metric == "weight_norm")]
    assert sorted(w.step.unique()) == [0, 10, 20] and len(seen) == 3
    assert set(zip(w.layer, w.site)) == {(0, "attn"), (0, "ffn"), (1, "attn"), (1, "ffn"), (-1, "embed")}
    for r in w.itertuples():
        assert r.value == pytest.approx(_reference_norm(seen[r.step // 10], r.layer, r.site), rel=1e-6), r
    first, last = (w[w.step == s].set_index(["layer", "site"]).value for s in (0, 20))
    assert (first != last).all()  # the norms moved: the rows are not all the init value


def test_weight_decay_keeps_the_norms_below_no_decay(corpus, work, tmp_path):
    final = {}
    for wd in (0.0, 3.0):
        T.train(T.RunConfig.from_dict(run_dict(corpus, weight_decay=wd, steps=41, stats_every=20)),
                tmp_path / f"wd{wd}", work, threads=1)
        h = pd.read_parquet(tmp_path / f"wd{wd}" / "history.parquet")
        w = h[(h.metric == "weight_norm") & (h.layer >= 0)]
        final[wd] = w.pivot_table(index=["layer", "site"], columns="step", values="value")
    assert (final[0.0][0] == final[3.0][0]).all()  # same init
    assert (final[0.0][40] > final[0.0][0]).all()  # Adam without decay inflates every block's weights
    assert (final[3.0][40] < final[0.0][40]).all()


# ---- the figure ---------------------------------------------------------------------------------
def _data(with_rows: bool = True) -> tables.Data:
    wds = {"weight_decay_0": 0.0, "weight_decay_1": 1.0}
    grid = {"name": "t", "baseline": "baseline", "order": ["baseline", *wds], "seeds": [0, 1], "lrs": [1e-3],
            "variants": {"baseline": {"family": "baseline", "model": {}, "train": {}},
                         **{v: {"family": "weight_decay", "model": {}, "train": {"weight_decay": x}}
                            for v, x in wds.items()}},
            "model": {}, "train": {"steps": 20},
            "sweeps": {"weight_decay": {"x": "AdamW weight decay", "values": [
                {"variant": v, "value": x, "label": f"{x:g}"} for v, x in wds.items()]}}}
    runs = pd.DataFrame([{"variant": v, "seed": s, "lr": 1e-3, "diverged": False, "init_loss": 5.5,
                          "final_val_loss": 2.0, "params": 1000, "tokens_seen": 2000, "device": "cpu"}
                         for v in grid["order"] for s in (0, 1)])
    summary = pd.DataFrame({"variant": grid["order"], "best_lr": [1e-3] * 3})
    rows = []
    if with_rows:
        for v in grid["order"]:
            grow = 0.0 if v == "weight_decay_1" else 0.05
            for s in (0, 1):
                for step in (0, 10, 20):
                    for layer, site in ((-1, "embed"), (0, "attn"), (0, "ffn")):
                        rows.append((v, s, 1e-3, step, "layer", "weight_norm", layer, site,
                                     1.0 + grow * step + 0.1 * s + (layer + 1)))
    history = pd.DataFrame(rows, columns=["variant", "seed", "lr", "step", "kind", "metric", "layer", "site",
                                          "value"])
    return tables.Data(grid, runs, summary, history)


def test_weight_norms_figure_hue_is_the_weight_decay_and_lines_are_seed_means():
    d = _data()
    fig = layers.fig_weight_norms(d)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["token embedding", "layer 0 · attn", "layer 0 · ffn"]
    labels = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert labels == ["weight_decay = 0 (η=0.001)", "weight_decay = 1 (η=0.001)"]  # the sweep, not the baseline
    lines = [ln for ln in axes[1].get_lines() if len(ln.get_xdata()) == 3]
    assert len(lines) == 2
    h = d.history
    for ln, v in zip(lines, ["weight_decay_0", "weight_decay_1"]):
        ref = h[(h.variant == v) & (h.layer == 0) & (h.site == "attn")].groupby("step").value.mean()
        np.testing.assert_allclose(ln.get_ydata(), ref.to_numpy())
    plt.close(fig)


def test_weight_norms_figure_without_rows_says_so(tmp_path):
    fig = layers.fig_weight_norms(_data(with_rows=False))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no weight_norm rows" in t for t in texts)
    paths = save(fig, tmp_path / "weight_norms.png")
    assert [p.read_bytes()[:4] for p in paths] == [b"\x89PNG", b"%PDF"]
