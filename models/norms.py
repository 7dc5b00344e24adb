"""Normalisation axis: ``norm`` ∈ {layernorm, rmsnorm, batchnorm, none}, or your own class
(``"module.path:ClassName"``, see models/custom.py).

LayerNorm uses the biased variance with eps inside the square root, exactly like
``torch.nn.LayerNorm``; RMSNorm is ``x / sqrt(mean(x²) + eps) * g`` like ``torch.nn.RMSNorm``.

BatchNorm is ``torch.nn.BatchNorm1d`` over the channel (last) dimension: in training mode its mean and
variance are taken over the batch AND the sequence positions, and running estimates (momentum 0.1) are
used in eval mode. Batch statistics leak information across positions and across the sequences of a
batch: position t's output depends on tokens after t, so **a batchnorm model is not causal in training
mode** (its training loss can exploit the future; tests/models/test_norms_batchnorm.py shows it). It is here as
the lecture's counter-example, not as a usable language-model norm. It cannot normalise q and k
(``qk_norm``: ModelConfig rejects it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import choices


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


class BatchNorm(nn.Module):
    """``nn.BatchNorm1d(dim)`` applied to (..., dim): statistics over every leading dimension (batch and
    positions) in training mode, running estimates in eval mode. Not causal in training mode."""

    def __init__(self, dim: int, eps: float, bias: bool, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x.reshape(-1, x.shape[-1]), self.running_mean, self.running_var, self.weight,
                         self.bias, self.training, self.momentum, self.eps)
        return y.view(x.shape)


NORMS: dict[str, type[nn.Module]] = choices.implements(choices.NORMS, {
    "layernorm": LayerNorm, "rmsnorm": RMSNorm, "batchnorm": BatchNorm, "none": NoNorm})


def make_norm(kind: str, dim: int, eps: float, bias: bool) -> nn.Module:
    """The norm ``kind`` names: a built-in of NORMS, or a user class "module.path:ClassName"."""
    if ":" in kind:
        from .custom import build_norm

        return build_norm(kind, dim, eps, bias)
    return NORMS[kind](dim, eps, bias)
