"""The ``attn_scale`` axis: every value on every attention path (SDPA, the explicit soft-capped path,
flex on the CPU) against a naive float64 softmax(q kᵀ · s) v written out here, with QK-norm and GQA; the
default is bit-identical to SDPA's own default scale 1/√d_k; a bad value is a ConfigError naming the field."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import CHOICES, ConfigError, ModelConfig, build
from models import attention as A

# the scales, written out independently of models.attention.ATTN_SCALES
SCALE = {"inv_sqrt_d": lambda d: d ** -0.5, "inv_d": lambda d: 1.0 / d, "none": lambda d: 1.0}


def test_registry_is_the_config_choices_and_bad_value_is_named():
    assert CHOICES["attn_scale"] == tuple(A.ATTN_SCALES) == tuple(SCALE)
    assert ModelConfig().attn_scale == "inv_sqrt_d"
    with pytest.raises(ConfigError, match=r"attn_scale='sqrt_d'.*\['inv_sqrt_d', 'inv_d', 'none'\]"):
        ModelConfig(attn_scale="sqrt_d")


def _heads(attn: A.Attention, x: torch.Tensor):
    """q, k, v exactly as Attention.attend prepares them (split, heads, QK-norm, RoPE)."""
    return attn.heads(attn.qkv(x))


def naive(attn: A.Attention, cfg: ModelConfig, x: torch.Tensor) -> torch.Tensor:
    """Per-head loop in float64: softmax(mask(cap(q kᵀ · s))) v, query head h reading kv head h // (H/G)."""
    q, k, v = (t.double() for t in _heads(attn, x))
    H, G, d, T = cfg.n_heads, cfg.kv_heads, cfg.dim_head, x.shape[1]
    s_factor = SCALE[cfg.attn_scale](d)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    heads = []
    for h in range(H):
        g = h // (H // G)
        s = q[:, h] @ k[:, g].transpose(-1, -2) * s_factor
        if cfg.attn_softcap is not None:
            s = cfg.attn_softcap * torch.tanh(s / cfg.attn_softcap)
        heads.append(torch.softmax(s.masked_fill(future, -math.inf), dim=-1) @ v[:, g])
    return torch.cat(heads, dim=-1) @ attn.out.weight.double().T


def _attention(cfg: ModelConfig, seed: int = 0) -> A.Attention:
    torch.manual_seed(seed)
    attn = A.Attention(cfg).eval()
    with torch.no_grad():  # large enough weights that the three scales give clearly different outputs
        attn.qkv.weight.normal_(0.0, 0.25)
        attn.out.weight.normal_(0.0, 0.25)
    return attn


@pytest.mark.parametrize("scale", list(SCALE))
@pytest.mark.parametrize("cap", [None, 4.0])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_each_scale_equals_naive_softmax(scale, cap, qk_norm, n_kv_heads):
    cfg = ModelConfig(vocab_size=32, context_length=16, d_model=64, n_layers=1, n_heads=4, n_kv_heads=n_kv_heads,
                      attn_scale=scale, attn_softcap=cap, qk_norm=qk_norm)
    attn = _attention(cfg)
    assert attn.scale == pytest.approx(SCALE[scale](16))
    x = torch.randn(2, 13, cfg.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = attn(x)  # cap None: SDPA with scale=; cap: the explicit path (CPU)
        torch.testing.assert_close(out.double(), naive(attn, cfg, x), rtol=1e-5, atol=1e-5)
        others = [s for s in SCALE if s != scale]  # the scale must matter for this test to mean anything
        for other in others:
            alt = naive(attn, cfg.replace(attn_scale=other), x)
            assert (alt - out.double()).abs().max() > 1e-3, (scale, other)


@pytest.mark.parametrize("scale", list(SCALE))
def test_flex_path_takes_the_scale(scale, monkeypatch):
    if A.flex_attention is None:
        pytest.skip("no torch.nn.attention.flex_attention in this torch")
    cfg = ModelConfig(vocab_size=32, context_length=16, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2,
                      attn_scale=scale, attn_softcap=4.0)
    attn = _attention(cfg)
    x = torch.randn(2, 16, cfg.d_model, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(A, "FLEX", "on")
    with torch.no_grad():  # CPU flex: forward only
        torch.testing.assert_close(attn(x).double(), naive(attn, cfg, x), rtol=1e-5, atol=1e-5)


def test_default_scale_is_bit_identical_to_sdpa_default():
    """The default's SDPA call with scale=1/√d_k returns exactly what SDPA's own default returned before."""
    for n_kv in (4, 1):
        cfg = ModelConfig(vocab_size=64, context_length=16, d_model=48, n_layers=2, n_heads=4, n_kv_heads=n_kv)
        torch.manual_seed(0)
        model = build(cfg).eval()
        attn = model.blocks[0].sublayers[0].f
        x = torch.randn(3, 16, cfg.d_model, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            q, k, v = _heads(attn, x)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=n_kv != 4)  # scale=None
            before = attn.out(y.transpose(1, 2).reshape(3, 16, -1))
            assert torch.equal(attn(x), before)
