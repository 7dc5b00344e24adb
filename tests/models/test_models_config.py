"""ModelConfig validation and serialisation, derived sizes, parameter/FLOP/KV-cache accounting,
and the instrumentation (``stats=True``) output."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models import CHOICES, STAT_FIELDS, ConfigError, ModelConfig  # noqa: E402


# ------------------------------------------------------------------------------------------------
# validation: every invalid value names the field and what is allowed
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", list(CHOICES))
@pytest.mark.parametrize("bad", ["bogus", "PRE", ""])
def test_unknown_axis_value_names_field_and_allowed(axis, bad):
    with pytest.raises(ConfigError) as e:
        ModelConfig(**{axis: bad})
    msg = str(e.value)
    assert axis in msg
    for allowed in CHOICES[axis]:
        assert repr(allowed) in msg, f"{allowed!r} missing from: {msg}"


INVALID = [
    # (kwargs, substrings the message must contain)
    (dict(n_heads=4, n_kv_heads=3), ["n_kv_heads=3", "n_heads=4", "[1, 2, 4]"]),
    (dict(n_heads=6, d_model=36, n_kv_heads=4), ["n_kv_heads=4", "[1, 2, 3, 6]"]),
    (dict(n_heads=4, n_kv_heads=8), ["n_kv_heads=8", "n_heads=4"]),
    (dict(d_model=30, n_heads=4), ["d_model=30", "n_heads=4", "head_dim"]),
    (dict(qk_norm=True, norm="none"), ["qk_norm", "norm='none'", "layernorm", "rmsnorm"]),
    (dict(d_model="64"), ["d_model", "int"]),
    (dict(n_layers=2.0), ["n_layers", "int"]),
    (dict(n_layers=True), ["n_layers", "int"]),
    (dict(bias=1), ["bias", "bool"]),
    (dict(tie_embeddings="yes"), ["tie_embeddings", "bool"]),
    (dict(norm=None), ["norm", "null"]),
    (dict(norm=3), ["norm", "str"]),
    (dict(attn_softcap="big"), ["attn_softcap", "float", "null"]),
    (dict(n_kv_heads=2.5), ["n_kv_heads", "int", "null"]),
    (dict(dropout=float("nan")), ["dropout", "finite"]),
    (dict(rope_theta=float("inf")), ["rope_theta", "finite"]),
    (dict(dropout=1.0), ["dropout", "[0, 1)"]),
    (dict(dropout=-0.1), ["dropout", "[0, 1)"]),
    (dict(attn_softcap=0.0), ["attn_softcap", "positive"]),
    (dict(final_softcap=-1.0), ["final_softcap", "positive"]),
    (dict(d_model=0), ["d_model", "positive"]),
    (dict(vocab_size=-1), ["vocab_size", "positive"]),
    (dict(n_kv_heads=0), ["n_kv_heads", "positive"]),
    (dict(d_ff=0), ["d_ff", "positive"]),
    (dict(head_dim=7, position="rope"), ["head_dim=7", "rope", "even"]),
    (dict(d_model=36, n_heads=4, position="sinusoidal", head_dim=None), []),  # valid control, see below
    (dict(d_model=33, n_heads=3, position="sinusoidal"), ["d_model=33", "sinusoidal", "even"]),
    (dict(norm_eps=0.0), ["norm_eps"]),
    (dict(rope_theta=-1.0), ["rope_theta"]),
    (dict(init_std=0.0), ["init_std"]),
]


@pytest.mark.parametrize("kw,needles", INVALID, ids=[",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _ in INVALID])
def test_invalid_config_raises_config_error(kw, needles):
    if not needles:  # a valid neighbour of the invalid cases: must construct
        ModelConfig(**kw)
        return
    with pytest.raises(ConfigError) as e:
        ModelConfig(**kw)
    for needle in needles:
        assert needle in str(e.value), f"{needle!r} missing from: {e.value}"
    # the same error comes through from_dict and build(dict)
    with pytest.raises(ConfigError):
        ModelConfig.from_dict(kw)
    with pytest.raises(ConfigError):
        models.build(kw)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict({"d_modle": 64, "n_layers": 2})
    assert "d_modle" in str(e.value) and "d_model" in str(e.value)  # names the typo and the allowed fields
    with pytest.raises(ConfigError):
        models.build({"ffn_type": "swiglu"})
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict([("d_model", 64)])
    assert "mapping" in str(e.value)


def test_from_yaml_rejects_wrong_types():
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_yaml("d_model: sixty-four\n")
    assert "d_model" in str(e.value)
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_yaml("bias: maybe\n")
    assert "bias" in str(e.value)


# ------------------------------------------------------------------------------------------------
# serialisation and names
# ------------------------------------------------------------------------------------------------
ROUND_TRIP = [
    ModelConfig(),
    ModelConfig(d_model=96, n_heads=6, n_kv_heads=2, ffn="geglu", norm="layernorm", bias=True, qk_norm=True,
                attn_softcap=50.0, final_softcap=30.0, position="learned", tie_embeddings=False, dropout=0.1,
                init="xavier", norm_position="sandwich", block="parallel", rope_theta=5e5, norm_eps=1e-6),
    ModelConfig(head_dim=24, d_ff=100, ffn="relu", norm="none", residual=False, position="none", init="kaiming",
                init_std=0.01, ffn_multiple_of=64),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP, ids=lambda c: c.short_name())
def test_round_trip(cfg):
    d = cfg.to_dict()
    assert set(d) == {f.name for f in __import__("dataclasses").fields(ModelConfig)}
    assert ModelConfig.from_dict(d) == cfg
    text = cfg.to_yaml()
    back = ModelConfig.from_yaml(text)
    assert back == cfg and back.to_dict() == d
    assert back.fingerprint() == cfg.fingerprint() and back.short_name() == cfg.short_name()
    assert ModelConfig.from_yaml(back.to_yaml()).to_yaml() == text


def test_yaml_floats_written_without_dot_are_read():
    """YAML 1.1 reads 1e-6 (no dot) as a string; float fields accept it."""
    cfg = ModelConfig.from_yaml("norm_eps: 1e-6\nrope_theta: 5e5\n")
    assert cfg.norm_eps == 1e-6 and cfg.rope_theta == 5e5


def test_equal_configs_have_equal_names():
    """An int given for a float field is the same config as the float (e.g. from YAML)."""
    a = ModelConfig(final_softcap=30, rope_theta=10000, dropout=0)
    b = ModelConfig(final_softcap=30.0, rope_theta=10000.0, dropout=0.0)
    assert a == b
    assert a.fingerprint() == b.fingerprint() and a.short_name() == b.short_name()
    assert ModelConfig.from_yaml("final_softcap: 30\n").short_name() == ModelConfig(final_softcap=30.0).short_name()


PATH_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def test_short_name_path_safe_and_distinct():
    names = set()
    for axis, values in CHOICES.items():
        for v in values:
            cfg = ModelConfig(**{axis: v})
            name = cfg.short_name()
            assert PATH_SAFE.match(name) and len(name) < 100, name
            assert name == cfg.short_name() == ModelConfig(**{axis: v}).short_name()
            names.add(name)
    assert len(names) == sum(len(v) for v in CHOICES.values()) - (len(CHOICES) - 1)  # defaults coincide
    # any field change, even one not spelled out in the words, changes the name
    base = ModelConfig()
    for change in (dict(dropout=0.1), dict(init_std=0.01), dict(qk_norm=True), dict(attn_softcap=30.0),
                   dict(tie_embeddings=False), dict(norm_eps=1e-6)):
        assert base.replace(**change).short_name() != base.short_name(), change
    for cfg in ROUND_TRIP:
        assert PATH_SAFE.match(cfg.short_name())


def test_short_name_stable_across_sessions():
    cfgs = "[ModelConfig(), ModelConfig(ffn='geglu', n_kv_heads=1, attn_softcap=30.0, dropout=0.1)]"
    code = f"from models import ModelConfig; print(' '.join(c.short_name() for c in {cfgs}))"
    here = " ".join(c.short_name() for c in [ModelConfig(), ModelConfig(ffn="geglu", n_kv_heads=1,
                                                                      attn_softcap=30.0, dropout=0.1)])
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == here
    assert ModelConfig().short_name().startswith("pre-rmsnorm-swiglu-serial-mha4x4-rope-d128L4-")


# ------------------------------------------------------------------------------------------------
# derived sizes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d_model,multiple,expected", [
    (96, 8, 256),  # 8/3 * 96 = 256 exactly
    (64, 8, 176),  # 170.67 -> 176
    (100, 8, 272),  # 266.67 -> 272
    (128, 8, 344),  # 341.33 -> 344
    (100, 1, 267),  # ceil(266.67)
    (128, 64, 384),  # 341.33 -> 384
])
@pytest.mark.parametrize("ffn", ["swiglu", "geglu", "reglu"])
def test_gated_d_ff_is_eight_thirds_rounded_up(d_model, multiple, expected, ffn):
    cfg = ModelConfig(d_model=d_model, n_heads=2, ffn=ffn, ffn_multiple_of=multiple)
    assert cfg.ffn_dim == expected
    assert cfg.replace(d_ff=100).ffn_dim == 100


@pytest.mark.parametrize("ffn", ["relu", "gelu", "gelu_tanh", "silu"])
def test_plain_d_ff_is_four_d(ffn):
    assert ModelConfig(d_model=96, n_heads=4, ffn=ffn).ffn_dim == 384
    assert ModelConfig(d_model=96, n_heads=4, ffn=ffn, d_ff=100).ffn_dim == 100


@pytest.mark.parametrize("block", ["serial", "parallel"])
@pytest.mark.parametrize("gated", ["swiglu", "geglu", "reglu"])
@pytest.mark.parametrize("plain", ["relu", "gelu", "gelu_tanh", "silu"])
def test_gated_and_plain_ffn_are_parameter_matched(gated, plain, block):
    base = dict(vocab_size=256, context_length=64, d_model=96, n_layers=2, n_heads=4, block=block)
    n_g = models.count_params(models.build(ModelConfig(ffn=gated, **base)))["nonembed"]
    n_p = models.count_params(models.build(ModelConfig(ffn=plain, **base)))["nonembed"]
    assert abs(n_g - n_p) / n_p <= 0.02, (n_g, n_p)


# ------------------------------------------------------------------------------------------------
# accounting
# ------------------------------------------------------------------------------------------------
def test_count_params_hand_computed():
    # V=100, d=32, L=2, H=4, G=2, Q=8, relu d_ff=128, no bias, rmsnorm, pre, rope, tied
    cfg = ModelConfig(vocab_size=100, context_length=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      ffn="relu", d_ff=128)
    per_layer = 32 * (4 + 2 + 2) * 8 + 32 * 32 + 2 * 32 * 128 + 2 * 32  # qkv, out, ffn, 2 norms = 11328
    nonembed = 2 * per_layer + 32  # + final norm = 22688
    counts = models.count_params(models.build(cfg))
    assert counts == {"total": nonembed + 100 * 32, "nonembed": nonembed} == {"total": 25888, "nonembed": 22688}


@pytest.mark.parametrize("kw", [
    dict(position="learned", tie_embeddings=True, bias=True),
    dict(position="learned", tie_embeddings=False, bias=True, norm="layernorm", qk_norm=True),
    dict(position="rope", tie_embeddings=False, block="parallel", n_kv_heads=1),
    dict(position="sinusoidal", tie_embeddings=True, norm="none", norm_position="sandwich"),
], ids=["learned-tied", "learned-untied-bias", "rope-untied-parallel", "sinusoidal-none"])
def test_count_params_matches_manual_sum(kw):
    cfg = ModelConfig(vocab_size=100, context_length=16, d_model=32, n_layers=2, n_heads=4, **kw)
    model = models.build(cfg)
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embed = model.tok_emb.weight.numel()
    if isinstance(model.pos, nn.Module) and isinstance(getattr(model.pos, "weight", None), nn.Parameter):
        embed += model.pos.weight.numel()
    if not cfg.tie_embeddings:
        embed += sum(p.numel() for p in model.head.parameters())
    else:
        assert model.head.weight is model.tok_emb.weight
    assert models.count_params(model) == {"total": total, "nonembed": total - embed}
    # sinusoidal positions are a buffer, not parameters
    assert cfg.position != "sinusoidal" or not list(model.pos.parameters())


def test_flops_per_token_hand_computed():
    # V=256, d=64, L=2, H=4, G=2, Q=16, swiglu d_ff=176, T=128
    cfg = ModelConfig(vocab_size=256, context_length=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)
    assert cfg.ffn_dim == 176
    N = 2 * (64 * 8 * 16 + 4 * 16 * 64 + 3 * 64 * 176) + 64 * 256  # = 108544
    assert models.matmul_params(cfg) == N == 108544
    assert models.flops_per_token(cfg) == 6 * 108544 + 12 * 2 * 4 * 16 * 128 == 847872
    assert models.flops_per_token(cfg, seq_len=64) == 6 * 108544 + 12 * 2 * 4 * 16 * 64 == 749568


@pytest.mark.parametrize("kw", [dict(), dict(ffn="gelu", block="parallel", tie_embeddings=False, bias=True),
                                dict(n_kv_heads=1, head_dim=12, ffn="reglu", d_ff=50)])
def test_matmul_params_equals_linear_weights_of_built_model(kw):
    cfg = ModelConfig(vocab_size=100, context_length=16, d_model=32, n_layers=3, n_heads=4, **kw)
    model = models.build(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert models.matmul_params(cfg) == linear  # the (possibly tied) head counted once, as d*V


def test_kv_cache_ratio_heads_kv_one():
    sizes = {g: models.kv_cache_bytes_per_token(ModelConfig(d_model=64, n_layers=3, n_heads=8, n_kv_heads=g))
             for g in (8, 2, 1)}
    assert sizes[8] == 8 * sizes[1] and sizes[2] == 2 * sizes[1]
    assert sizes[1] == 2 * 3 * 1 * 8 * 2  # K and V, L layers, 1 head, head_dim 8, bf16
    assert models.kv_cache_bytes_per_token(ModelConfig(d_model=64, n_layers=3, n_heads=8), 4) == 2 * sizes[8]


# ------------------------------------------------------------------------------------------------
# instrumentation
# ------------------------------------------------------------------------------------------------
def _moments(x: torch.Tensor) -> list[float]:
    x = x.double()
    return [x.mean().item(), x.std().item(), x.pow(2).mean().sqrt().item(), x.min().item(), x.max().item()]


@pytest.mark.parametrize("block,position", [("serial", "learned"), ("parallel", "rope"), ("serial", "none")])
def test_stats_shape_keys_and_values(block, position):
    L = 3
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=L, n_heads=4, block=block,
                      position=position, attn_softcap=5.0 if block == "parallel" else None)
    torch.manual_seed(0)
    model = models.build(cfg).eval()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for b in model.blocks]
    with torch.no_grad():
        plain = model(tokens)
        logits, stats = model(tokens, stats=True)
    for h in hooks:
        h.remove()
    assert torch.equal(plain, logits), "stats=True must not change the logits"
    assert set(stats) == {"residual", "attn_logit_max", "logz_mean", "logz_max"}
    assert STAT_FIELDS == ("mean", "std", "rms", "min", "max")

    sites = ["attn+ffn"] if block == "parallel" else ["attn", "ffn"]
    rows = stats["residual"]
    assert [(r["layer"], r["site"]) for r in rows] == [(-1, "embed")] + [(i, s) for i in range(L) for s in sites]
    for r in rows:
        assert set(r) == {"layer", "site", *STAT_FIELDS}
        assert r["min"] <= r["mean"] <= r["max"] and r["std"] >= 0 and r["rms"] >= abs(r["mean"])
    # embedding row = token (+ additive position) embedding; last row of each layer = block output
    emb = model.tok_emb(tokens) + (model.pos(16) if model.pos is not None else 0)
    assert [rows[0][f] for f in STAT_FIELDS] == pytest.approx(_moments(emb), rel=1e-5, abs=1e-6)
    for i in range(L):
        row = rows[(i + 1) * len(sites)]
        assert [row[f] for f in STAT_FIELDS] == pytest.approx(_moments(seen[L + i]), rel=1e-5, abs=1e-6)

    assert len(stats["attn_logit_max"]) == L
    assert all(isinstance(v, float) and v == v for v in stats["attn_logit_max"])
    logz = torch.logsumexp(logits.double(), dim=-1)
    assert stats["logz_mean"] == pytest.approx(logz.mean().item(), rel=1e-5)
    assert stats["logz_max"] == pytest.approx(logz.max().item(), rel=1e-5)


def test_stats_do_not_change_logits_in_training_mode():
    cfg = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, dropout=0.2)
    torch.manual_seed(0)
    model = models.build(cfg).train()
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = model(tokens)
    torch.manual_seed(1)
    b, _ = model(tokens, stats=True)
    assert torch.equal(a, b)
