"""User modules for tests/models/test_custom_modules.py and tests/pipeline/test_pipeline_custom.py: one per interface that
reproduces its built-in exactly (parity 0), and broken ones, one per error ModelConfig must name."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import Attention


class ExactLayerNorm(nn.Module):
    """torch's layer norm, parameters named like the built-in's: parity with 'layernorm' is exact."""
    replaces = "layernorm"

    def __init__(self, dim, eps, bias):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class ScaledRMSNorm(nn.Module):
    """RMSNorm times a learned scalar (no ``replaces``: compared with the default, rmsnorm)."""

    def __init__(self, dim, eps, bias):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.scale = nn.Parameter(torch.full((), 2.0))

    def reset_parameters(self):
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.scale.fill_(2.0)

    def forward(self, x):
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps) * self.scale


class ReluMLP(nn.Module):
    """The built-in relu FFN written out: parity with 'relu' is exact."""
    replaces = "relu"

    def __init__(self, d_model, d_ff, bias):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class NaiveAttention(nn.Module):
    """Causal MHA with an explicit softmax (no RoPE; used with position='learned')."""

    def __init__(self, cfg):
        super().__init__()
        self.h, self.hd = cfg.n_heads, cfg.dim_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.n_heads * cfg.dim_head, bias=cfg.bias)
        self.out = nn.Linear(cfg.n_heads * cfg.dim_head, cfg.d_model, bias=cfg.bias)

    def forward(self, x, rec=None):
        B, T, _ = x.shape
        q, k, v = (t.view(B, T, self.h, self.hd).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        s = (q @ k.transpose(-2, -1)) / self.hd ** 0.5
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return self.out((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))


class SubclassedAttention(Attention):
    """The built-in attention itself: parity exact."""

    def forward(self, x, rec=None):
        return super().forward(x, rec)


# ---- broken ones ---------------------------------------------------------------------------------
NOT_A_CLASS = 3


class NotAModule:
    def __init__(self, dim, eps, bias):
        pass


class WrongInit(nn.Module):
    def __init__(self, dim):
        super().__init__()


class WrongForward(nn.Module):
    def __init__(self, dim, eps, bias):
        super().__init__()

    def forward(self, x, mask):
        return x


class WrongShape(nn.Module):
    def __init__(self, dim, eps, bias):
        super().__init__()

    def forward(self, x):
        return x[..., :1]


class NoReset(nn.Module):
    def __init__(self, dim, eps, bias):
        super().__init__()
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.g


class FFNWithoutDown(nn.Module):
    def __init__(self, d_model, d_ff, bias):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x)
