"""Initialisation axis: ``init`` ∈ {gpt2, gpt2_unscaled, xavier, kaiming}.

- ``gpt2``: every Linear/Embedding weight ~ N(0, init_std); residual output projections (attention
  output, FFN down) ~ N(0, init_std / √(2 L)) (Radford et al. 2019 §2.3).
- ``gpt2_unscaled``: ``gpt2`` without the 1/√(2 L) on residual projections (every weight N(0, init_std));
  the control arm of the residual-scaling claim (C17).
- ``xavier``: Glorot-uniform Linear weights (each logical piece of a fused projection separately).
- ``kaiming``: He-normal Linear weights, fan-in mode, ReLU gain √2.
Embeddings are N(0, init_std) in all schemes, biases zero, norm gains one.

``reset_parameters`` puts every parameter of a built model back to a fresh draw of this
initialisation in place (norm gains one and shifts zero included): a multi-run training job reuses
one module, and on CUDA its compiled graph, for all its runs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import choices


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


INITS = choices.implements(choices.INITS, {"gpt2": _gpt2, "gpt2_unscaled": _gpt2_unscaled, "xavier": _xavier,
                                            "kaiming": _kaiming})


@torch.no_grad()
def initialise(model: nn.Module, cfg) -> None:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in embeddings:
            continue  # an output head tied to the embedding keeps the embedding's initialisation
        if isinstance(module, nn.Linear):
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            INITS[cfg.init](module, cfg)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, cfg.init_std)
    pos = getattr(model, "pos", None)
    if pos is not None and isinstance(getattr(pos, "weight", None), nn.Parameter):
        nn.init.normal_(pos.weight, 0.0, cfg.init_std)


@torch.no_grad()
def reset_parameters(model: nn.Module, cfg) -> None:
    """Re-draw every parameter in place: norm gains 1 and shifts 0, then ``initialise``. Raises if the
    model holds a parameter this function does not know how to reset (a new module type must say)."""
    from .norms import NORMS

    norm_types = tuple(NORMS.values())
    covered = set()
    for module in model.modules():
        if isinstance(module, norm_types):
            for name, p in module.named_parameters(recurse=False):
                p.fill_(1.0 if name == "weight" else 0.0)
                covered.add(id(p))
            if hasattr(module, "reset_running_stats"):  # batchnorm: fresh running mean / variance
                module.reset_running_stats()
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            covered.update(id(p) for p in module.parameters(recurse=False))
        elif callable(getattr(module, "reset_parameters", None)):  # a user's module (models/custom.py)
            module.reset_parameters()
            covered.update(id(p) for p in module.parameters(recurse=False))
    pos = getattr(model, "pos", None)
    if pos is not None and isinstance(getattr(pos, "weight", None), nn.Parameter):
        covered.add(id(pos.weight))
    unknown = [n for n, p in model.named_parameters() if id(p) not in covered]
    if unknown:
        raise TypeError(f"reset_parameters does not know how to initialise {unknown}")
    initialise(model, cfg)
