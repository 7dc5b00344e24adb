"""A worked example of your own module as an axis value: the lecture notes' hand-written LayerNorm.

    model: {norm: "examples.lecture_norms:LectureLayerNorm", bias: true}

The notes write LayerNorm as ``(x - mean) / (x.std(-1, keepdim=True) + eps) * g + b``: the *unbiased*
standard deviation (``torch.std``'s default, correction=1) with eps added *outside* the square root.
``torch.nn.LayerNorm`` uses the biased variance with eps inside: ``(x - mean) / sqrt(var + eps)``. The two
differ by the factor sqrt((d - 1) / d) on an ordinary input (about 0.8% at d = 64) and by much more on a
low-variance input, where eps dominates differently; ``models.parity.parity`` measures both, and every run
of a variant using it writes that report into its metrics.json (``custom_modules``).

The interface of a norm (models/custom.py): ``cls(dim, eps, bias)``, ``forward(x)`` returns x's shape, and
a class with parameters of its own defines ``reset_parameters()``. ``replaces`` names the built-in the
parity check compares it with.
"""
from __future__ import annotations

import torch
from torch import nn


class LectureLayerNorm(nn.Module):
    replaces = "layernorm"

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(dim))
        self.b = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.g.fill_(1.0)
            if self.b is not None:
                self.b.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        y = (x - mean) / (x.std(-1, keepdim=True) + self.eps) * self.g
        return y if self.b is None else y + self.b
