"""Parity of a user module (models/custom.py) with the built-in it replaces (``parity``): the user's module
and that built-in — the class attribute ``replaces = "<built-in name>"`` if it has one, else the field's
ModelConfig default — get identical parameters (drawn once from a fixed seed, copied by name or, failing that,
in order when the shapes agree) and one fixed seeded input; it reports the max abs difference of the outputs
and of the gradients with respect to the input. It measures, it does not assert: every run of a variant with a
custom module writes its report (``report``) into metrics.json (``custom_modules``), whatever the numbers are.

It builds both modules, so it imports the ``nn`` modules and ``ModelConfig``; models/custom.py, which the ``nn``
modules import to build a user's class, does not import this module.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .config import ModelConfig
from .custom import FIELDS, _ctor_args, _error, build_ffn, build_norm, instantiate, is_custom, resolve
from .ffn import make_ffn
from .norms import make_norm


def builtin_of(field: str, value: str) -> str | None:
    """The built-in ``value`` replaces: its class attribute ``replaces``, else the field's default."""
    default = {"norm": ModelConfig.norm, "ffn": ModelConfig.ffn, "attention_module": None}[field]
    return getattr(resolve(field, value), "replaces", default)


@torch.no_grad()
def _draw(module: nn.Module, g: torch.Generator) -> None:
    """Parameters away from their init (so a swapped gain and shift show): 1-D weights 1 + 0.1·N,
    other 1-D 0.1·N, matrices N(0, 1/fan_in)."""
    for name, p in module.named_parameters():
        r = torch.randn(p.shape, generator=g)
        if p.ndim == 1:
            p.copy_(1 + 0.1 * r if name.endswith("weight") else 0.1 * r)
        else:
            p.copy_(r / p.shape[-1] ** 0.5)


@torch.no_grad()
def copy_params(src: nn.Module, dst: nn.Module) -> str:
    """Copy src's parameters into dst: by name when names and shapes agree ("name"), else in order when
    the shapes agree ("order"); "none" when neither (dst keeps its own)."""
    a, b = dict(src.named_parameters()), dict(dst.named_parameters())
    if a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a):
        for k in a:
            b[k].copy_(a[k])
        return "name"
    if len(a) == len(b) and all(p.shape == q.shape for p, q in zip(a.values(), b.values())):
        for p, q in zip(a.values(), b.values()):
            q.copy_(p)
        return "order"
    return "none"


def _pair(field: str, value: str, builtin: str | None, cfg) -> tuple[nn.Module, nn.Module]:
    if field == "norm":
        args = _ctor_args("norm", cfg)
        return build_norm(value, *args), make_norm(builtin, *args)
    if field == "ffn":
        user_cfg = cfg.replace(ffn=value, block="serial")
        return build_ffn(user_cfg), make_ffn(cfg.replace(ffn=builtin, d_ff=user_cfg.ffn_dim, block="serial"))
    if builtin is not None:
        raise _error(field, value, f"attention has one built-in; replaces={builtin!r} must be None")
    user = instantiate("attention_module", value, (cfg.replace(attention_module=value, block="serial"),))
    return user, Attention(cfg.replace(attention_module=None))


def parity(field: str, value: str, builtin: str | None = None, cfg=None, seed: int = 0, scale: float = 1.0,
           batch: int = 4, seq: int = 16) -> dict:
    """Max abs difference between ``value``'s module and the built-in ``builtin`` (default ``builtin_of``)
    with identical parameters, on one input scale · N(0, 1) of shape (batch, seq, d_model) from ``seed``:
    of the outputs, and of the gradients w.r.t. the input for one fixed random cotangent. Both modules in
    training mode. Reported, never asserted."""
    cfg = ModelConfig() if cfg is None else cfg
    builtin = builtin_of(field, value) if builtin is None else builtin
    user, ref = _pair(field, value, builtin, cfg)
    g = torch.Generator().manual_seed(seed)
    _draw(ref, g)
    copied = copy_params(ref, user)
    seq = min(seq, cfg.context_length)
    x = scale * torch.randn(batch, seq, cfg.d_model, generator=g)
    cot = torch.randn(batch, seq, cfg.d_model, generator=g)
    outs, grads = [], []
    for module in (user, ref):
        module.train()
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        (y * cot).sum().backward()
        outs.append(y.detach())
        grads.append(xi.grad)
    return {"field": field, "value": value, "builtin": builtin if builtin is not None else "attention",
            "params_copied": copied, "seed": seed, "input_scale": scale, "shape": [batch, seq, cfg.d_model],
            "max_abs_diff": (outs[0] - outs[1]).abs().max().item(),
            "max_abs_grad_diff": (grads[0] - grads[1]).abs().max().item(),
            "max_abs_builtin": outs[1].abs().max().item()}


PARITY_SCALES = (1.0, 1e-3)  # an N(0, 1) input, and a low-variance one where eps placement matters


def report(cfg) -> list[dict]:
    """``parity`` of every custom module of ``cfg`` at each of PARITY_SCALES (what a run's metrics.json holds)."""
    rows = []
    for field in FIELDS:
        value = getattr(cfg, field)
        if is_custom(value):
            for scale in PARITY_SCALES:
                try:
                    rows.append(parity(field, value, cfg=cfg, scale=scale))
                except Exception as e:  # a report, not a gate: the run trains either way
                    rows.append({"field": field, "value": value, "input_scale": scale, "error": repr(e)})
    return rows
