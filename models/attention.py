"""Causal self-attention: MHA (n_kv_heads = n_heads), GQA (1 < g < n_heads) and MQA (g = 1).

Query head h reads key/value head ``h // (n_heads / n_kv_heads)``. The fast path is
``F.scaled_dot_product_attention`` with ``enable_gqa`` (no repeated K/V is materialised). Soft-capped
logits (Gemma 2: ``cap · tanh(s / cap)``) take ``torch.nn.attention.flex_attention`` with the cap as its
score_mod and a causal block mask (no T×T score matrix is materialised) where it is available and
trains: CUDA, no attention dropout. Elsewhere (CPU: flex has no backward there, and its eager
fallback materialises the scores anyway) they take the explicit path, which is what CPU results use.
Optional per-head QK-norm (Dehghani et al. 2023; Wortsman et al. 2023) uses the configured norm.
The logit scale is the ``attn_scale`` axis (``ATTN_SCALES``): 1/√d_k (Vaswani et al. 2017, the default),
1/d_k (μP, Yang et al. 2022) or 1 (unscaled: the softmax saturates as d_k grows); every path takes it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import choices
from .norms import make_norm
from .positions import Rotary
from .statistics import ATTN_LOGIT_MAX


try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # older torch
    create_block_mask = flex_attention = None

# attn_scale -> the factor on q·kᵀ given the head dimension d_k
ATTN_SCALES = choices.implements(choices.ATTN_SCALES, {
    "inv_sqrt_d": lambda d: 1.0 / math.sqrt(d),
    "inv_d": lambda d: 1.0 / d,
    "none": lambda d: 1.0,
})

FLEX = "auto"  # auto: flex for soft-capped attention on CUDA without dropout | on | off (tests)
_compiled_flex = None


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def use_flex(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether soft-capped attention takes flex_attention (see the module docstring)."""
    if flex_attention is None or FLEX == "off":
        return False
    return FLEX == "on" or (q.is_cuda and dropout_p == 0.0)


def _flex_fn(q: torch.Tensor):
    """flex_attention itself inside a compiled model or on the CPU (eager reference, forward only);
    on CUDA outside torch.compile its compiled kernel (the eager one would materialise the scores)."""
    global _compiled_flex
    if torch.compiler.is_compiling() or not q.is_cuda:
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


class Attention(nn.Module):
    def __init__(self, cfg, fused_input: bool = False):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.kv_heads, cfg.dim_head
        self.split_sizes = (self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd)
        if not fused_input:  # a parallel block owns one fused input projection instead
            self.qkv = nn.Linear(cfg.d_model, sum(self.split_sizes), bias=cfg.bias)
            self.qkv.split_sizes = self.split_sizes
        self.out = nn.Linear(self.n_heads * self.hd, cfg.d_model, bias=cfg.bias)
        self.out.is_residual_projection = True
        if cfg.qk_norm:
            self.q_norm = make_norm(cfg.norm, self.hd, cfg.norm_eps, cfg.bias)
            self.k_norm = make_norm(cfg.norm, self.hd, cfg.norm_eps, cfg.bias)
        else:
            self.q_norm = self.k_norm = None
        self.rope = Rotary(self.hd, cfg.context_length, cfg.rope_theta) if cfg.position == "rope" else None
        self.cap = cfg.attn_softcap
        self.dropout = cfg.dropout
        self.scale = ATTN_SCALES[cfg.attn_scale](self.hd)

    def forward(self, x: torch.Tensor, rec: dict | None = None, cache=None) -> torch.Tensor:
        return self.attend(self.qkv(x), rec, cache)

    def heads(self, qkv: torch.Tensor, start: int = 0):
        """q (B, n_heads, T, hd), k and v (B, n_kv, T, hd) from the q/k/v projection's output: split into
        heads, QK-norm, RoPE at positions start … start + T - 1. The one place they are prepared (the probes
        recompute attention probabilities from it)."""
        B, T, _ = qkv.shape
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, start), self.rope(k, start)
        # one dtype for q, k, v: under CUDA autocast the norms run in fp32, so QK-norm gives fp32 q and k
        # beside a bf16 v, and flex_attention (not an autocast op; its compiled backward) rejects mixed
        # dtypes. A no-op when they agree (fp32 runs, CPU autocast).
        q, k = q.to(v.dtype), k.to(v.dtype)
        return q, k, v

    def attend(self, qkv: torch.Tensor, rec: dict | None = None, cache=None) -> torch.Tensor:
        B, T, _ = qkv.shape
        if cache is not None:  # incremental decoding (models/kvcache.py): new tokens at cache.start onwards
            q, k, v = self.heads(qkv, cache.start)
            y = self.cached(q, *cache.update(k, v))
            return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))
        q, k, v = self.heads(qkv)
        if rec is not None:
            rec[ATTN_LOGIT_MAX.name] = self.max_logit(q, k)
        p = self.dropout if self.training else 0.0
        if self.cap is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=self.scale,
                                               enable_gqa=self.n_kv != self.n_heads)
        elif use_flex(q, p):
            y = self.flex(q, k, v)
        else:
            y = self.explicit(q, k, v, p)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))

    def cached(self, q, k, v) -> torch.Tensor:
        """q: (B, n_heads, T, hd) of the last T of S positions; k, v: (B, n_kv, S, hd), the whole cache.

        The g = n_heads / n_kv query heads that share a K/V head are stacked along the query axis
        (Shazeer 2019's formulation), so each cached K/V head is read once per step and never repeated;
        query t sees keys 0 … S - T + t. No dropout: decoding is inference."""
        B, H, T, hd = q.shape
        G, S = k.shape[1], k.shape[2]
        q = q.reshape(B, G, (H // G) * T, hd)
        mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T).repeat(H // G, 1)
        if self.cap is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            s = softcap((q @ k.transpose(-2, -1)) * self.scale, self.cap)
            y = (s if mask is None else s.masked_fill(~mask, float("-inf"))).softmax(dim=-1) @ v
        return y.reshape(B, H, T, hd)

    def _repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(self.n_heads // self.n_kv, dim=1)

    def explicit(self, q, k, v, p: float) -> torch.Tensor:
        T = q.shape[-2]
        s = softcap((q @ self._repeat_kv(k).transpose(-2, -1)) * self.scale, self.cap)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        a = s.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return F.dropout(a, p) @ self._repeat_kv(v)

    def flex(self, q, k, v) -> torch.Tensor:
        """Soft-capped causal attention without materialising the scores (no dropout)."""
        cap, T = self.cap, q.shape[-2]

        def score_mod(score, b, h, q_idx, kv_idx):
            return cap * torch.tanh(score / cap)

        mask = create_block_mask(_causal, None, None, T, T, device=q.device)
        # contiguous inputs: with v a strided view of the fused qkv projection and RoPE'd q, k, inductor's
        # flex kernel (torch 2.13, CPU) returned wrong values; tests/train/test_gpu_path.py checks it compiled
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return _flex_fn(q)(q, k, v, score_mod=score_mod, block_mask=mask, scale=self.scale,
                           enable_gqa=self.n_kv != self.n_heads)

    @torch.no_grad()
    def max_logit(self, q, k) -> torch.Tensor:
        """Largest causal attention logit q·k·scale before any soft-cap (instrumentation only)."""
        T = q.shape[-2]
        s = (q @ self._repeat_kv(k).transpose(-2, -1)) * self.scale
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return s.float().masked_fill(~mask, float("-inf")).amax()
