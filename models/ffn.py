"""Feed-forward axis: ``ffn`` ∈ {relu, gelu, gelu_tanh, silu, swiglu, geglu, reglu}, or your own class
(``"module.path:ClassName"``, constructed as ``cls(d_model, d_ff, bias)``: models/custom.py).

Plain FFNs are ``W2 φ(W1 x)``; gated (GLU) ones are ``W2 (φ(W_gate x) ⊙ W_up x)`` (Shazeer 2020),
with the gate and up projections fused into one matmul.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import choices
from .choices import FFNS, GATED, implements, is_gated  # noqa: F401  (declared in models/choices.py)

ACTIVATIONS = implements(choices.ACTIVATIONS, {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
})


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class GLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str, bias: bool):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.d_ff = d_ff
        self.up = nn.Linear(d_model, 2 * d_ff, bias=bias)  # [gate; up]
        self.up.split_sizes = (d_ff, d_ff)
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.up(x).split(self.d_ff, dim=-1)
        return self.down(self.act(gate) * up)


def make_ffn(cfg) -> nn.Module:
    if ":" in cfg.ffn:  # a user class "module.path:ClassName" (models/custom.py)
        from .custom import build_ffn

        return build_ffn(cfg)
    if is_gated(cfg.ffn):
        return GLU(cfg.d_model, cfg.ffn_dim, GATED[cfg.ffn], cfg.bias)
    return MLP(cfg.d_model, cfg.ffn_dim, cfg.ffn, cfg.bias)
