"""Position axis: ``position`` ∈ {rope, learned, sinusoidal, none}.

``learned`` and ``sinusoidal`` are added to the token embeddings (GPT-2 / Vaswani et al.);
``rope`` rotates q and k inside attention (Su et al. 2021, the half-split layout used by LLaMA);
``none`` is NoPE (causal masking alone carries order).
Each takes the position of its first token (``start``, default 0), so a KV-cached decoding step
(models/kvcache.py) embeds or rotates its tokens at their absolute positions.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .choices import POSITIONS


class LearnedPositions(nn.Module):
    def __init__(self, context_length: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(context_length, dim))

    def forward(self, T: int, start: int = 0) -> torch.Tensor:
        return self.weight[start:start + T]


class SinusoidalPositions(nn.Module):
    def __init__(self, context_length: int, dim: int):
        super().__init__()
        pos = torch.arange(context_length, dtype=torch.float64)[:, None]
        inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        table = torch.zeros(context_length, dim, dtype=torch.float64)
        table[:, 0::2] = torch.sin(pos * inv)
        table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
        self.register_buffer("table", table.float(), persistent=False)

    def forward(self, T: int, start: int = 0) -> torch.Tensor:
        return self.table[start:start + T]


ADDITIVE_POSITIONS: dict[str, type[nn.Module]] = {
    "learned": LearnedPositions,
    "sinusoidal": SinusoidalPositions,
}
assert set(ADDITIVE_POSITIONS) < set(POSITIONS)  # rope rotates q and k in attention; none adds nothing


class Rotary(nn.Module):
    """RoPE with the half-split ("rotate_half") layout: pairs are (i, i + head_dim/2)."""

    def __init__(self, head_dim: int, context_length: int, theta: float):
        super().__init__()
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(context_length, dtype=torch.float64), inv)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x: (B, heads, T, head_dim) at positions start … start + T - 1."""
        T = x.shape[-2]
        cos, sin = self.cos[start:start + T].to(x.dtype), self.sin[start:start + T].to(x.dtype)
        return x * cos + self._rotate_half(x) * sin
