"""Initialisation axis: ``init`` ∈ {gpt2, gpt2_unscaled, xavier, kaiming}.

- ``gpt2``: every Linear/Embedding weight ~ N(0, init_std); residual output projections (attention
  output, FFN down) ~ N(0, init_std / √(2 L)) (Radford et al. 2019 §2.3).
- ``gpt2_unscaled``: ``gpt2`` without the 1/√(2 L) on residual projections (every weight N(0, init_std));
  the control arm of the residual-scaling claim (C17).
- ``xavier``: Glorot-uniform Linear weights (each logical piece of a fused projection separately).
- ``kaiming``: He-normal Linear weights, fan-in mode, ReLU gain √2.
Embeddings are N(0, init_std) in all schemes, biases zero, norm gains one.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _pieces(weight: torch.Tensor, module: nn.Linear):
    sizes = getattr(module, "split_sizes", None)
    return weight.split(list(sizes), dim=0) if sizes else (weight,)


def _gpt2(module: nn.Linear, cfg):
    std = cfg.init_std
    if getattr(module, "is_residual_projection", False):
        std = std / math.sqrt(2 * cfg.n_layers)
    nn.init.normal_(module.weight, 0.0, std)


def _gpt2_unscaled(module: nn.Linear, cfg):
    nn.init.normal_(module.weight, 0.0, cfg.init_std)


def _xavier(module: nn.Linear, cfg):
    for w in _pieces(module.weight.data, module):
        nn.init.xavier_uniform_(w)


def _kaiming(module: nn.Linear, cfg):
    for w in _pieces(module.weight.data, module):
        nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")


INITS = {"gpt2": _gpt2, "gpt2_unscaled": _gpt2_unscaled, "xavier": _xavier, "kaiming": _kaiming}


@torch.no_grad()
def initialise(model: nn.Module, cfg) -> None:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            INITS[cfg.init](module, cfg)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
    pos = getattr(model, "pos", None)
    if pos is not None and isinstance(getattr(pos, "weight", None), nn.Parameter):
        nn.init.normal_(pos.weight, 0.0, cfg.init_std)
