"""The lecture probes (workflows/bench/probes.py): ``attn_saturation`` (the recomputed attention probabilities
against the model's own attention output, the row statistics against numpy/scipy references, the √d_k
relation of the logits at init) and ``feature_corr`` (the statistic against numpy.corrcoef on features of
known correlation, its noise floor against a simulation, the hooks against an independent read of the
residual stream); tiny models on real text from the corpus fixture, trained a few steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from models import ConfigError, ModelConfig, build
from workflows.bench import probes as P

TINY = {"seeds": [0], "batch_size": 4, "model": {"d_model": 32, "n_heads": 2, "n_kv_heads": None,
                                                 "context_length": 16},
        "train_steps": 12, "train_lr": 3e-3, "measure_batches": 2, "saturation_depth": 2, "corr_depth": 2}


@pytest.fixture(scope="module")
def probe(corpus, work):
    grid_model = {"norm_position": "pre", "norm": "rmsnorm", "ffn": "swiglu", "position": "rope"}
    data = {"source": str(corpus / "*.txt"), "tokenizer": "bytes"}

    def run(name, arms, **settings):
        torch.set_num_threads(1)
        return P.run_probe(name, arms, {**TINY, **settings}, grid_model, data, work)

    return run


# ---- attention probabilities: the probe's recomputation equals the model's attention -------------------
CASES = [dict(), dict(block="parallel"), dict(n_kv_heads=1, qk_norm=True), dict(attn_softcap=2.0, position="none"),
         dict(attn_scale="none", block="parallel", n_kv_heads=2), dict(attn_scale="inv_d", attn_softcap=5.0)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_recomputed_probabilities_give_the_models_attention_output(kw):
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, init="xavier", **kw)
    torch.manual_seed(0)
    model = build(cfg).eval()
    projs = P._qkv_projections(model)
    assert [layer for layer, _, _ in projs] == [0, 1]
    qkv, y = {}, {}
    hooks = [proj.register_forward_hook(lambda m, i, o, layer=layer: qkv.__setitem__(layer, o))
             for layer, _, proj in projs]
    hooks += [attn.out.register_forward_pre_hook(lambda m, i, layer=layer: y.__setitem__(layer, i[0]))
              for layer, attn, _ in projs]
    tokens = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(tokens)
        for layer, attn, _ in projs:
            q, k, v = P.attention_heads(attn, qkv[layer][..., :sum(attn.split_sizes)])
            probs, logits, mask = P.attention_probs(attn, q, k)
            assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6) and (probs[..., ~mask] == 0).all()
            out = (probs @ attn._repeat_kv(v)).transpose(1, 2).reshape(3, 16, -1)
            torch.testing.assert_close(out, y[layer], rtol=1e-5, atol=1e-5)
    for h in hooks:
        h.remove()


def test_saturation_stats_against_scipy_entropy():
    T = 9
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, T, T, generator=g) * torch.tensor([0.1, 3.0, 30.0]).view(1, 3, 1, 1)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    probs = logits.masked_fill(~mask, -math.inf).softmax(-1)
    st = P.saturation_stats(probs, logits, mask)
    pn, ents, ratios, top = probs.double().numpy(), [], [], []
    for b in range(2):
        for h in range(3):
            for t in range(1, T):  # rows that see more than one key
                row = pn[b, h, t, : t + 1]
                ents.append(sps.entropy(row))
                ratios.append(sps.entropy(row) / math.log(t + 1))
                top.append(row.max() > 0.99)
    causal = logits.double().numpy()[:, :, mask.numpy()]
    assert st["attn_entropy"] == pytest.approx(np.mean(ents), rel=1e-6)  # float32 rows: sums 1 ± 1e-7
    assert st["attn_entropy_ratio"] == pytest.approx(np.mean(ratios), rel=1e-6)
    assert st["attn_saturated"] == pytest.approx(np.mean(top))
    assert 0 < st["attn_saturated"] < 1  # the 30x head saturates, the 0.1x head does not
    assert st["attn_entropy_uniform"] == pytest.approx(np.mean(np.log(np.arange(2, T + 1))))
    assert st["attn_logit_std"] == pytest.approx(causal.std(ddof=1), rel=1e-9)
    assert st["attn_logit_absmax"] == pytest.approx(np.abs(causal).max(), rel=1e-6)
    uniform = P.saturation_stats(torch.zeros(1, 1, T, T).masked_fill(~mask, -math.inf).softmax(-1),
                                 torch.zeros(1, 1, T, T), mask)
    assert uniform["attn_entropy_ratio"] == pytest.approx(1.0) and uniform["attn_saturated"] == 0.0
    assert uniform["attn_entropy"] == pytest.approx(uniform["attn_entropy_uniform"])


def test_attn_saturation_probe_logits_scale_with_sqrt_dk_at_init(probe):
    hd = 16
    arms = {s: {"attn_scale": s, "init": "xavier", "head_dim": hd} for s in ("inv_sqrt_d", "none", "inv_d")}
    df = probe("attn_saturation", arms)
    v = df.set_index(["arm", "layer", "metric"]).value
    # same seed, same weights: layer 0 sees the same q, k, so its logits differ by the scale alone
    std0 = {arm: v[arm, 0, "attn_logit_std_init"] for arm in arms}
    assert std0["none"] == pytest.approx(math.sqrt(hd) * std0["inv_sqrt_d"], rel=1e-4)
    assert std0["inv_sqrt_d"] == pytest.approx(math.sqrt(hd) * std0["inv_d"], rel=1e-4)
    for phase in P.PHASES:  # unscaled logits: less entropy than the scaled ones, per layer and phase
        for layer in (0, 1):
            assert v["none", layer, f"attn_entropy_{phase}"] < v["inv_sqrt_d", layer, f"attn_entropy_{phase}"]
    for arm in arms:
        assert v[arm, -1, "loss_trained"] < v[arm, -1, "loss_init"]  # it trained
        assert v[arm, -1, "mean_attn_entropy_init"] == pytest.approx(
            np.mean([v[arm, i, "attn_entropy_init"] for i in (0, 1)]))
        assert v[arm, -1, "train_steps"] == TINY["train_steps"]
    per_layer = {m for (a, la, m) in v.index if la == 0 and a == "none"}
    assert per_layer == {f"{m}_{ph}" for m in ("attn_entropy", "attn_entropy_ratio", "attn_saturated",
                                              "attn_logit_std", "attn_logit_absmax", "qkv_grad_norm")
                         for ph in P.PHASES}
    assert not any(m.startswith(("grad_", "resid_rms")) for m in df.metric)  # not floor-checked by the claims
    tokens = df.set_index(["arm", "layer", "metric"]).tokens
    assert tokens["none", 0, "attn_entropy_trained"] == TINY["train_steps"] * 4 * 16


# ---- feature correlation ------------------------------------------------------------------------------
def test_mean_abs_corr_against_numpy_and_the_known_correlation():
    rng = np.random.default_rng(0)
    n, a = 40000, np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    z, e = rng.standard_normal((n, 1)), rng.standard_normal((n, len(a)))
    x = z * a + e  # corr(x_i, x_j) = a_i a_j / sqrt((1 + a_i^2)(1 + a_j^2))
    r = np.corrcoef(x.T)
    off = ~np.eye(len(a), dtype=bool)
    got = P.mean_abs_corr(torch.from_numpy(x).reshape(200, 200, len(a)))  # every leading axis is a sample
    assert got == pytest.approx(np.abs(r[off]).mean(), rel=1e-9)
    c = a / np.sqrt(1 + a ** 2)
    known = np.abs(np.outer(c, c))[off].mean()
    assert got == pytest.approx(known, abs=0.01)
    # a constant feature has no correlation; it is left out, not a NaN
    with_const = np.concatenate([x, np.ones((n, 1))], axis=1)
    assert P.mean_abs_corr(torch.from_numpy(with_const)) == pytest.approx(got, rel=1e-9)
    assert math.isnan(P.mean_abs_corr(torch.ones(10, 3)))


def test_null_abs_corr_against_simulation():
    rng = np.random.default_rng(1)
    n = 30
    x, y = rng.standard_normal((2, 20000, n))
    x, y = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    r = (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))
    assert P.null_abs_corr(n) == pytest.approx(np.abs(r).mean(), abs=0.004)
    assert P.null_abs_corr(10 ** 6) == pytest.approx(math.sqrt(2 / math.pi / 10 ** 6), rel=1e-3)


def test_feature_corr_probe_hooks_read_the_residual_stream(probe, corpus, work):
    arms = {"layernorm": {"norm": "layernorm"}, "none": {"norm": "none"},
            "sandwich": {"norm": "rmsnorm", "norm_position": "sandwich"}}
    df = probe("feature_corr", arms, train_steps=5)
    v = df.set_index(["arm", "layer", "metric"]).value
    sites = {(la, m.removeprefix("corr_in_").removesuffix("_init")) for (a, la, m) in v.index
             if a == "sandwich" and m.startswith("corr_in_") and m.endswith("_init")}
    assert sites == {(0, "attn_in"), (0, "attn_out"), (0, "ffn_in"), (0, "ffn_out"),
                     (1, "attn_in"), (1, "attn_out"), (1, "ffn_in"), (1, "ffn_out"), (-1, "final")}
    for phase in P.PHASES:  # no norm: what comes out is what went in
        assert v["none", -1, f"corr_ratio_{phase}"] == 1.0
        assert v["layernorm", -1, f"corr_ratio_{phase}"] == pytest.approx(
            v["layernorm", -1, f"mean_corr_out_{phase}"] / v["layernorm", -1, f"mean_corr_in_{phase}"])
    # the first norm's input at init is the token embedding of the measurement batches: read it independently
    p = P.Probe("feature_corr", arms, P.ProbeSettings.from_dict(TINY | {"train_steps": 5}),
                {"norm_position": "pre", "norm": "rmsnorm", "ffn": "swiglu", "position": "rope"},
                {"source": str(corpus / "*.txt"), "tokenizer": "bytes"}, work)
    cfg, model = p.model("layernorm", TINY["corr_depth"], 0)
    with torch.no_grad():
        emb = torch.cat([model.tok_emb(p.batch(cfg, 0, b)[0]) for b in range(TINY["measure_batches"])])
    r = np.corrcoef(emb.reshape(-1, cfg.d_model).double().numpy().T)
    ref = np.abs(r[~np.eye(cfg.d_model, dtype=bool)]).mean()
    assert v["layernorm", 0, "corr_in_attn_init"] == pytest.approx(ref, rel=1e-9)
    n = TINY["measure_batches"] * TINY["batch_size"] * TINY["model"]["context_length"]
    assert v["none", -1, "corr_null"] == pytest.approx(P.null_abs_corr(n))


@pytest.mark.parametrize("field, value", [("train_lr", 0.0), ("train_steps", -1), ("measure_batches", 0),
                                          ("corr_depth", 0)])
def test_bad_probe_settings_are_named(field, value):
    with pytest.raises(ConfigError, match=f"claims.probes.{field}"):
        P.ProbeSettings.from_dict({field: value})


def test_registry_lists_the_lecture_probes_with_arms():
    from pathlib import Path

    import yaml

    from workflows.claims.registry import load_registry

    root = Path(__file__).resolve().parents[2]
    reg = load_registry(root / "config" / "claims.yaml")
    assert set(reg["probes"]["attn_saturation"]["arms"]) == {"inv_sqrt_d", "inv_d", "none"}
    assert set(reg["probes"]["feature_corr"]["arms"]) == {"layernorm", "rmsnorm", "none"}
    for name in ("attn_saturation", "feature_corr"):
        assert name in P.PROBES
        for arm in reg["probes"][name]["arms"].values():  # every arm is a valid probe model
            P.probe_model_config(yaml.safe_load((root / "config" / "config.yaml").read_text())["model"],
                                 P.ProbeSettings(), arm, 2, 256)
