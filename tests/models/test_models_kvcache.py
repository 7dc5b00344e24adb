"""KV-cached incremental decoding (models/kvcache.py) against full recomputation: for every value of every
categorical axis of the registries (``models.CHOICES``: positions, norm positions, norms, FFNs, blocks, ...)
and every attention variant (MHA / GQA / MQA, QK-norm, soft-caps, bias), the logits of a prefill followed by
one-token (and multi-token) cached steps equal those of one forward over the whole sequence, in fp32 to
1e-5; the cache holds n_kv_heads heads (its bytes are 2·L·B·T·n_kv_heads·head_dim·bytes); generate equals a
naive greedy / sampled loop without a cache; and a cache that would exceed context_length raises first."""
from __future__ import annotations

import pytest
import torch

from models import CHOICES, ModelConfig, build, kv_cache_bytes_per_token
from models.kvcache import KVCache, generate, kv_cache_bytes, next_token

BASE = dict(vocab_size=61, context_length=24, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_multiple_of=8)
ATOL = RTOL = 1e-5

# every value of every registry axis (a value added to a registry is covered automatically) ...
AXIS_CASES = [(f"{axis}={value}", {axis: value}) for axis, values in CHOICES.items() for value in values]
# ... and the attention variants, the other axes decoding touches, and some combinations
ATTN_CASES = [
    ("mha", {"n_kv_heads": None}), ("gqa", {"n_kv_heads": 2}), ("mqa", {"n_kv_heads": 1}),
    ("qk_norm", {"qk_norm": True}), ("attn_softcap", {"attn_softcap": 2.0}), ("final_softcap", {"final_softcap": 3.0}),
    ("bias", {"bias": True}), ("no_residual", {"residual": False}), ("untied", {"tie_embeddings": False}),
    ("head_dim", {"head_dim": 6}),
    ("mqa_parallel_softcap_qk", {"n_kv_heads": 1, "block": "parallel", "attn_softcap": 2.0, "qk_norm": True}),
    ("mha_post_learned_bias", {"n_kv_heads": None, "norm_position": "post", "position": "learned", "bias": True}),
    ("gqa_sandwich_sinusoidal", {"norm_position": "sandwich", "position": "sinusoidal", "norm": "layernorm"}),
    ("mqa_reordered_nope_softcap", {"n_kv_heads": 1, "norm_position": "reordered", "position": "none",
                                    "attn_softcap": 1.5}),
]
CASES = AXIS_CASES + ATTN_CASES


def _model(over: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build(ModelConfig(**{**BASE, **over})).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move off the init so that attention is far from uniform and positions matter
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _tokens(model, B: int, T: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, model.cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def _decode(model, tokens: torch.Tensor, prefill: int, chunk: int = 1) -> torch.Tensor:
    """Logits of ``tokens`` from a prefill of ``prefill`` tokens, then cached steps of ``chunk`` tokens."""
    B, T = tokens.shape
    cache = KVCache(model.cfg, B, dtype=next(model.parameters()).dtype)
    out = [model(tokens[:, :prefill], cache=cache)]
    for s in range(prefill, T, chunk):
        out.append(model(tokens[:, s:s + chunk], cache=cache))
    assert cache.length == T
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("over", [c[1] for c in CASES], ids=[c[0] for c in CASES])
@torch.no_grad()
def test_cached_decoding_equals_full_recomputation(over, dtype):
    """Tolerances relative to the logits' scale (norm='none' or eval-mode batchnorm reach |logits| ~ 1e4):
    fp32 1e-5, fp64 1e-12 — a wrong mask, position offset or K/V head is off by O(1)."""
    model = _model(over).to(dtype)
    tokens = _tokens(model, 3, model.cfg.context_length)
    full = model(tokens)
    tol = (ATOL if dtype == torch.float32 else 1e-12) * max(1.0, full.abs().max().item())
    for prefill in (1, 7, model.cfg.context_length):
        cached = _decode(model, tokens, prefill)
        torch.testing.assert_close(cached, full, atol=tol, rtol=0, msg=lambda m: f"prefill {prefill}: {m}")
    assert full[:, 1:].std() > 0.1  # the logits carry signal: a near-constant model would pass trivially


@pytest.mark.parametrize("over", [{"n_kv_heads": None}, {"n_kv_heads": 1}, {"attn_softcap": 2.0},
                                  {"position": "learned"}], ids=["mha", "mqa", "softcap", "learned"])
@torch.no_grad()
def test_multi_token_steps_see_the_cache_and_their_own_prefix(over):
    """Steps of T > 1 tokens after a prefill (speculative decoding's shape): query t of a step sees the
    cache and the step's tokens up to t, not beyond."""
    model = _model(over)
    tokens = _tokens(model, 2, model.cfg.context_length)
    torch.testing.assert_close(_decode(model, tokens, prefill=4, chunk=5), model(tokens), atol=ATOL, rtol=RTOL)


@torch.no_grad()
def test_positions_are_absolute_in_cached_steps():
    """A cached step at position p differs from the same token run at position 0 (a decoder that dropped the
    offset would pass the equality test only by luck on position-free variants, not here)."""
    for position in ("rope", "learned", "sinusoidal"):
        model = _model({"position": position})
        tokens = _tokens(model, 1, 6)
        cache = KVCache(model.cfg, 1)
        model(tokens[:, :5], cache=cache)
        shifted = model(tokens[:, 5:], cache=cache)
        torch.testing.assert_close(shifted, model(tokens[:, :6])[:, -1:], atol=ATOL, rtol=RTOL)
        alone = model(tokens[:, 5:])
        assert not torch.allclose(shifted, alone, atol=1e-3), position


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_cache_bytes_shrink_with_kv_heads(kv_heads):
    cfg = ModelConfig(**{**BASE, "n_kv_heads": kv_heads, "n_layers": 3})
    B, T = 5, 17
    cache = KVCache(cfg, B, T)
    expected = 2 * cfg.n_layers * B * T * kv_heads * cfg.dim_head * 4
    assert cache.nbytes == expected == kv_cache_bytes(cfg, B, T)
    assert cache.nbytes == kv_cache_bytes_per_token(cfg, 4) * B * T  # the accounting the kv_cache probe uses
    assert tuple(cache.layers[0].k.shape) == (B, kv_heads, T, cfg.dim_head)
    half = KVCache(cfg, B, T, dtype=torch.bfloat16)
    assert half.nbytes == expected // 2 == kv_cache_bytes(cfg, B, T, 2)
    mha = KVCache(ModelConfig(**{**BASE, "n_kv_heads": None, "n_layers": 3}), B, T)
    assert mha.nbytes / cache.nbytes == cfg.n_heads / kv_heads


@torch.no_grad()
def test_cache_overflow_raises_before_compute():
    model = _model({})
    ctx = model.cfg.context_length
    with pytest.raises(ValueError, match="context_length=24"):
        KVCache(model.cfg, 1, ctx + 1)
    with pytest.raises(ValueError, match="context_length=24"):
        generate(model, _tokens(model, 1, ctx - 2), max_new_tokens=3)
    cache = KVCache(model.cfg, 2)
    model(_tokens(model, 2, ctx - 1), cache=cache)
    before = cache.kv.clone()
    with pytest.raises(ValueError, match=r"2 new token\(s\) after 23 cached exceed .*context_length=24"):
        model(_tokens(model, 2, 2), cache=cache)
    assert cache.length == ctx - 1 and torch.equal(cache.kv, before)  # nothing was written
    model(_tokens(model, 2, 1), cache=cache)  # the last position still fits
    assert cache.length == ctx
    with pytest.raises(ValueError, match="batch_size=2"):
        model(_tokens(model, 3, 1), cache=KVCache(model.cfg, 2))
    with pytest.raises(ValueError, match="stats=True"):
        model(_tokens(model, 2, 1), stats=True, cache=KVCache(model.cfg, 2))


def _naive_generate(model, prompt, n, temperature=0.0, top_k=None, generator=None):
    x = prompt
    for _ in range(n):
        x = torch.cat([x, next_token(model(x)[:, -1], temperature, top_k, generator)], dim=1)
    return x


@pytest.mark.parametrize("over", [{"n_kv_heads": 1}, {"position": "learned", "block": "parallel"}], ids=["mqa", "learned"])
@torch.no_grad()
def test_generate_equals_naive_loop(over):
    model = _model(over)
    prompt = _tokens(model, 3, 1)
    greedy = generate(model, prompt, 15)
    assert greedy.shape == (3, 16) and torch.equal(greedy[:, :1], prompt)
    assert torch.equal(greedy, _naive_generate(model, prompt, 15))
    sampled = generate(model, prompt, 15, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(5))
    ref = _naive_generate(model, prompt, 15, 1.0, 20, torch.Generator().manual_seed(5))
    assert torch.equal(sampled, ref)
    assert not torch.equal(sampled, greedy)  # sampling at temperature 1 is not the argmax
    assert torch.equal(generate(model, prompt, 15, temperature=1.0, top_k=1), greedy)  # top-1 is greedy


def test_generate_restores_training_mode_and_rejects_bad_settings():
    model = _model({}).train()
    generate(model, _tokens(model, 1, 2), 2)
    assert model.training
    with pytest.raises(ValueError, match="temperature"):
        generate(model, _tokens(model, 1, 2), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, _tokens(model, 1, 2), 2, temperature=1.0, top_k=0)


def test_grouped_cached_attention_reads_no_repeated_kv(monkeypatch):
    """The cached path hands SDPA the cache's n_kv_heads K/V heads themselves (no repeat_interleave copy)."""
    model = _model({"n_kv_heads": 1})
    cache = KVCache(model.cfg, 2)
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape, k.shape, k.data_ptr()))
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(_tokens(model, 2, 3), cache=cache)
        model(_tokens(model, 2, 1), cache=cache)
    assert len(seen) == 2 * model.cfg.n_layers
    (q_shape, k_shape, ptr) = seen[-1]
    assert tuple(k_shape) == (2, 1, 4, model.cfg.dim_head) and tuple(q_shape) == (2, 1, 4, model.cfg.dim_head)
    assert ptr == cache.layers[-1].k.data_ptr()  # a view of the cache, not a copy
