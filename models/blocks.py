"""Block axes: ``norm_position`` ∈ {pre, post, sandwich, reordered}, ``block`` ∈ {serial, parallel},
and ``residual`` (False drops the skip connection: the "no residual" ablation).

Each sublayer f (attention, FFN, or their parallel sum) is wrapped by its norm position:
  pre        x + f(N(x))          GPT-2, LLaMA (final norm before the head)
  post       N(x + f(x))          Vaswani et al. 2017 (no final norm)
  sandwich   x + N₂(f(N₁(x)))     Gemma 2's "double norm" (final norm)
  reordered  x + N(f(x))          OLMo 2 (final norm)
A serial block is attention then FFN; a parallel block (GPT-J, PaLM) is one sublayer
f(h) = attn(h) + ffn(h) sharing one norm and one fused input projection.
Every sublayer takes f(x, rec, cache): ``cache`` is the layer's KV cache while decoding (models/kvcache.py),
which only attention reads.
"""
from __future__ import annotations

import torch
from torch import nn

from . import choices, statistics
from .attention import Attention
from .choices import BLOCKS, FINAL_NORM  # noqa: F401  (declared in models/choices.py)
from .custom import build_attention
from .ffn import GLU, make_ffn
from .norms import make_norm


class Skip(nn.Module):
    """The residual path: x, or nothing when ``residual=False``."""

    def __init__(self, residual: bool):
        super().__init__()
        self.residual = residual

    def forward(self, x):
        return x if self.residual else 0.0


class PreNorm(nn.Module):
    def __init__(self, f, cfg):
        super().__init__()
        self.f, self.skip = f, Skip(cfg.residual)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)

    def forward(self, x, rec=None, cache=None):
        return self.skip(x) + self.f(self.norm(x), rec, cache)


class PostNorm(nn.Module):
    def __init__(self, f, cfg):
        super().__init__()
        self.f, self.skip = f, Skip(cfg.residual)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)

    def forward(self, x, rec=None, cache=None):
        return self.norm(self.skip(x) + self.f(x, rec, cache))


class SandwichNorm(nn.Module):
    def __init__(self, f, cfg):
        super().__init__()
        self.f, self.skip = f, Skip(cfg.residual)
        self.norm_in = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.norm_out = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)

    def forward(self, x, rec=None, cache=None):
        return self.skip(x) + self.norm_out(self.f(self.norm_in(x), rec, cache))


class ReorderedNorm(nn.Module):
    def __init__(self, f, cfg):
        super().__init__()
        self.f, self.skip = f, Skip(cfg.residual)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)

    def forward(self, x, rec=None, cache=None):
        return self.skip(x) + self.norm(self.f(x, rec, cache))


NORM_POSITIONS = choices.implements(choices.NORM_POSITIONS, {"pre": PreNorm, "post": PostNorm, "sandwich": SandwichNorm,
                                                          "reordered": ReorderedNorm})


class FFN(nn.Module):
    """Adapter so FFNs share the sublayer signature f(x, rec)."""

    def __init__(self, cfg):
        super().__init__()
        self.ffn = make_ffn(cfg)
        self.ffn.down.is_residual_projection = True

    def forward(self, x, rec=None, cache=None):
        return self.ffn(x)


class ParallelAttnFFN(nn.Module):
    """f(h) = attn(h) + ffn(h), with q, k, v and the FFN input computed by one fused matmul."""

    def __init__(self, cfg):
        super().__init__()
        self.attn = Attention(cfg, fused_input=True)
        ffn = make_ffn(cfg)
        self.ffn_in = ffn.up.out_features
        self.gated = isinstance(ffn, GLU)
        self.act, self.d_ff = ffn.act, cfg.ffn_dim
        self.down = ffn.down
        self.down.is_residual_projection = True
        self.proj = nn.Linear(cfg.d_model, sum(self.attn.split_sizes) + self.ffn_in, bias=cfg.bias)
        self.proj.split_sizes = self.attn.split_sizes + ((self.d_ff, self.d_ff) if self.gated else (self.d_ff,))

    def forward(self, x, rec=None, cache=None):
        qkv, u = self.proj(x).split([sum(self.attn.split_sizes), self.ffn_in], dim=-1)
        if self.gated:
            gate, up = u.split(self.d_ff, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(u)
        return self.attn.attend(qkv, rec, cache) + self.down(h)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        wrap = NORM_POSITIONS[cfg.norm_position]
        if cfg.block == "parallel":
            self.sublayers = nn.ModuleList([wrap(ParallelAttnFFN(cfg), cfg)])
        else:
            attn = Attention(cfg) if cfg.attention_module is None else build_attention(cfg)  # models/custom.py
            self.sublayers = nn.ModuleList([wrap(attn, cfg), wrap(FFN(cfg), cfg)])
        self.sites = statistics.BLOCK_SITES[cfg.block]  # the residual stream's site after each sublayer

    def forward(self, x: torch.Tensor, rec: dict | None = None, cache=None) -> torch.Tensor:
        for site, sub in zip(self.sites, self.sublayers):
            x = sub(x, rec, cache)
            if rec is not None:
                rec.setdefault(statistics.RESIDUAL, []).append((site, x.detach()))
        return x

