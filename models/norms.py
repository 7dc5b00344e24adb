"""Normalisation axis: ``norm`` ∈ {layernorm, rmsnorm, none}.

LayerNorm uses the biased variance with eps inside the square root, exactly like
``torch.nn.LayerNorm``; RMSNorm is ``x / sqrt(mean(x²) + eps) * g`` like ``torch.nn.RMSNorm``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, bias: bool = False):  # RMSNorm has no shift
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)


class NoNorm(nn.Identity):
    def __init__(self, dim: int, eps: float, bias: bool = False):
        super().__init__()


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm, "none": NoNorm}


def make_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    return NORMS[kind](dim, eps, bias)
