"""Causal self-attention: MHA (n_kv_heads = n_heads), GQA (1 < g < n_heads) and MQA (g = 1).

Query head h reads key/value head ``h // (n_heads / n_kv_heads)``. The fast path is
``F.scaled_dot_product_attention`` with ``enable_gqa`` (no repeated K/V is materialised); the
explicit path is used only when logits are soft-capped (Gemma 2: ``cap · tanh(s / cap)``).
Optional per-head QK-norm (Dehghani et al. 2023; Wortsman et al. 2023) uses the configured norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .norms import make_norm
from .positions import Rotary


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


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
        self.scale = 1.0 / math.sqrt(self.hd)

    def forward(self, x: torch.Tensor, rec: dict | None = None) -> torch.Tensor:
        return self.attend(self.qkv(x), rec)

    def attend(self, qkv: torch.Tensor, rec: dict | None = None) -> torch.Tensor:
        B, T, _ = qkv.shape
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        if rec is not None:
            rec["attn_logit_max"] = self.max_logit(q, k)
        p = self.dropout if self.training else 0.0
        if self.cap is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True,
                                               enable_gqa=self.n_kv != self.n_heads)
        else:
            y = self.explicit(q, k, v, p)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))

    def _repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(self.n_heads // self.n_kv, dim=1)

    def explicit(self, q, k, v, p: float) -> torch.Tensor:
        T = q.shape[-2]
        s = softcap((q @ self._repeat_kv(k).transpose(-2, -1)) * self.scale, self.cap)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        a = s.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return F.dropout(a, p) @ self._repeat_kv(v)

    @torch.no_grad()
    def max_logit(self, q, k) -> torch.Tensor:
        """Largest causal attention logit q·k/√d before any soft-cap (instrumentation only)."""
        T = q.shape[-2]
        s = (q @ self._repeat_kv(k).transpose(-2, -1)) * self.scale
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return s.float().masked_fill(~mask, float("-inf")).amax()
