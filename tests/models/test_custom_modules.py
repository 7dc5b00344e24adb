"""User modules as axis values (models/custom.py): resolution and its errors, parity against the built-ins
(exact for faithful copies, measured for the lecture notes' LayerNorm), and a custom variant training
(build, reset between runs, optimizer groups, metrics report)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import ConfigError, ModelConfig
from models.parity import copy_params, parity, report
from models.init import reset_parameters

M = "tests.usermods.modules"
LECTURE = "examples.lecture_norms:LectureLayerNorm"
SMALL = ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4)


# ---- resolution and its errors, all before anything is built ---------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("norm", "tests.usermods.nope:X", "cannot import module 'tests.usermods.nope'"),
    ("norm", f"{M}:Nope", f"module '{M}' has no class 'Nope'"),
    ("norm", f"{M}:NOT_A_CLASS", "is a int, not a torch.nn.Module subclass"),
    ("norm", f"{M}:NotAModule", "not a torch.nn.Module subclass"),
    ("norm", f"{M}:WrongInit", "does not take the norm interface's arguments (dim, eps, bias)"),
    ("norm", f"{M}:WrongForward", "does not match the interface's forward(x)"),
    ("norm", f"{M}:WrongShape", "must return a tensor of its input's shape (2, 3, 32), got (2, 3, 1)"),
    ("norm", f"{M}:NoReset", "no reset_parameters() method"),
    ("norm", f"{M}:", "a user module is named 'module.path:ClassName'"),
    ("ffn", f"{M}:FFNWithoutDown", "output projection nn.Linear 'down'"),
    ("ffn", f"{M}:WrongInit", "does not take the ffn interface's arguments (d_model, d_ff, bias)"),
    ("attention_module", f"{M}:ExactLayerNorm", "does not take the attention_module interface's arguments (cfg)"),
    ("attention_module", "naive", "must be null (the built-in attention) or a class 'module.path:ClassName'"),
    ("norm", "groupnorm", "or your own class as 'module.path:ClassName'"),
])
def test_bad_user_module_names_the_field(field, value, message):
    with pytest.raises(ConfigError) as e:
        SMALL.replace(**{field: value})
    assert f"{field}={value!r}" in str(e.value) and message in str(e.value), str(e.value)


def test_custom_ffn_and_attention_need_a_serial_block():
    for field, value in (("ffn", f"{M}:ReluMLP"), ("attention_module", f"{M}:NaiveAttention")):
        with pytest.raises(ConfigError, match=f"{field}=.*needs block='serial'"):
            SMALL.replace(block="parallel", **{field: value})


def test_custom_norm_checked_per_head_with_qk_norm():
    cfg = SMALL.replace(norm=f"{M}:ExactLayerNorm", qk_norm=True)
    assert models.build(cfg).blocks[0].sublayers[0].f.q_norm.weight.shape == (cfg.dim_head,)


def test_grid_stops_on_a_bad_user_module():
    from workflows.grid.grid import Grid

    base = {"name": "t", "seeds": [0], "lrs": [0.01], "baseline": "base", "data": {"source": "shakespeare"},
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2}, "train": {"steps": 2},
            "variants": {"base": {}, "mine": {"model": {"norm": f"{M}:Nope"}}}}
    with pytest.raises(ConfigError, match=f"variant 'mine'.*norm='{M}:Nope': module '{M}' has no class 'Nope'"):
        Grid.from_config(base)


def test_names_and_fingerprints():
    cfg = SMALL.replace(norm=LECTURE)
    assert cfg.short_name().startswith("pre-LectureLayerNorm-swiglu-") and ":" not in cfg.short_name()
    assert ModelConfig.from_yaml(cfg.to_yaml()) == cfg
    # the new fields at their default leave the fingerprint of every earlier config unchanged ...
    import hashlib
    import json
    d = {k: v for k, v in SMALL.to_dict().items() if k not in ("final_norm", "attention_module")}
    assert SMALL.fingerprint() == hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"))
                                                 .encode()).hexdigest()
    # ... and set, they change it
    assert len({SMALL.fingerprint(), SMALL.replace(final_norm=True).fingerprint(),
                SMALL.replace(attention_module=f"{M}:NaiveAttention", position="learned").fingerprint()}) == 3


# ---- parity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, builtin, cfg", [
    ("norm", f"{M}:ExactLayerNorm", "layernorm", SMALL.replace(bias=True)),
    ("ffn", f"{M}:ReluMLP", "relu", SMALL.replace(bias=True)),
    ("attention_module", f"{M}:SubclassedAttention", None, SMALL),
])
def test_parity_exact_for_a_faithful_copy(field, value, builtin, cfg):
    for scale in (1.0, 1e-3):
        r = parity(field, value, builtin, cfg, scale=scale)
        assert r["params_copied"] == "name" and r["max_abs_diff"] == 0.0 and r["max_abs_grad_diff"] == 0.0, r
        assert r["max_abs_builtin"] > 0.1 * scale


def test_parity_measures_a_difference():
    """Parity against a different built-in is reported, not hidden: ScaledRMSNorm = 2 × rmsnorm."""
    r = parity("norm", f"{M}:ScaledRMSNorm", None, SMALL)
    assert r["builtin"] == "rmsnorm" and r["params_copied"] == "none"
    # recompute it: the built-in's gain drawn from the seed, the user's at its init (1), then the input
    from models.parity import _draw
    from models.norms import RMSNorm

    ref, g = RMSNorm(32, 1e-5), torch.Generator().manual_seed(0)
    _draw(ref, g)
    x = torch.randn(4, 16, 32, generator=g)
    expected = (2 * F.rms_norm(x, (32,), None, 1e-5) - ref(x)).abs().max().item()
    assert r["max_abs_diff"] == pytest.approx(expected, rel=1e-5) and expected > 1.0
    ref = nn.Linear(4, 3)
    assert copy_params(ref, nn.Linear(3, 4)) == "none"


def naive_lecture_norm(x, g, b, eps):
    """The notes' formula written independently: unbiased std via the variance with correction=1."""
    mu = x.sum(-1, keepdim=True) / x.shape[-1]
    sd = ((x - mu) ** 2).sum(-1, keepdim=True).div(x.shape[-1] - 1).sqrt()
    return (x - mu) / (sd + eps) * g + b


def test_lecture_norm_is_the_notes_formula_and_differs_from_torch():
    from examples.lecture_norms import LectureLayerNorm

    torch.manual_seed(0)
    m = LectureLayerNorm(64, 1e-5, True)
    with torch.no_grad():
        m.g.normal_(1, 0.1), m.b.normal_(0, 0.1)
    x = torch.randn(4, 16, 64)
    torch.testing.assert_close(m(x), naive_lecture_norm(x, m.g, m.b, 1e-5), rtol=1e-5, atol=1e-6)
    cfg = ModelConfig(d_model=64, norm_eps=1e-5, bias=True, norm=LECTURE)
    normal, low = (parity("norm", LECTURE, None, cfg, scale=s) for s in (1.0, 1e-3))
    assert normal["builtin"] == "layernorm" and normal["params_copied"] == "order"
    # on N(0, 1) the unbiased std scales the output by sqrt(63/64): |Δ| ≤ (1 - sqrt(63/64))·max|x̂|·max|g| + ...
    assert 1e-3 < normal["max_abs_diff"] < 0.1, normal
    # at std 1e-3 eps (1e-5) is 10× the variance: torch's output shrinks to ~σ/√(σ²+eps) ≈ 0.3 of the lecture's
    assert low["max_abs_diff"] > 1.0 and low["max_abs_diff"] > 20 * normal["max_abs_diff"], low


# ---- a custom variant trains like any other ------------------------------------------------------
def test_custom_variant_builds_trains_and_resets():
    from workflows.train.loop import TrainConfig, param_groups

    cfg = SMALL.replace(norm=LECTURE, bias=True, ffn=f"{M}:ReluMLP", attention_module=f"{M}:NaiveAttention",
                        position="learned")
    torch.manual_seed(0)
    model = models.build(cfg)
    lecture = [m for m in model.modules() if type(m).__name__ == "LectureLayerNorm"]
    assert len(lecture) == 2 * cfg.n_layers + 1  # two pre-norms per block + the final norm
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context_length))
    logits, stats = model(tokens, stats=True)
    assert math.isnan(stats["attn_logit_max"][0])  # the user's attention records no logit
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    groups = param_groups(model, TrainConfig())
    no_decay = {id(p) for p in groups[1]["params"]}
    assert all(id(m.g) in no_decay and id(m.b) in no_decay for m in lecture)
    with torch.no_grad():
        for m in lecture:
            m.g.add_(1.0)
    reset_parameters(model, cfg)
    assert all(torch.equal(m.g, torch.ones(cfg.d_model)) for m in lecture)
    with pytest.raises(NotImplementedError, match="no KV cache"):
        model.blocks[0].sublayers[0].f(torch.zeros(1, 2, cfg.d_model), None, object())


def test_custom_attention_is_causal():
    cfg = SMALL.replace(attention_module=f"{M}:NaiveAttention", position="learned")
    torch.manual_seed(0)
    model = models.build(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.context_length))
    changed = tokens.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=1e-6)
    assert (a[:, 9:] - b[:, 9:]).abs().max() > 1e-3


def test_report_lists_every_custom_module():
    cfg = SMALL.replace(norm=LECTURE, ffn=f"{M}:ReluMLP")
    rows = report(cfg)
    assert [(r["field"], r["input_scale"]) for r in rows] == [("norm", 1.0), ("norm", 1e-3), ("ffn", 1.0), ("ffn", 1e-3)]
    assert all(math.isfinite(r["max_abs_diff"]) for r in rows)
    assert report(SMALL) == []
