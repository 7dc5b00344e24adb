"""Your own module as an axis value: ``norm``, ``ffn`` or ``attention_module`` = ``"module.path:ClassName"``.

The class is imported with importlib (never eval) when the ``ModelConfig`` is built and checked against its
axis's interface on a small input, so a bad value stops the grid with a ``ConfigError`` naming the field
before any job runs. The pipeline's jobs import it too: the repository root is on their PYTHONPATH, so a
module inside the repository works as is (``examples/lecture_norms.py`` is a worked example:
``model: {norm: "examples.lecture_norms:LectureLayerNorm"}``); anywhere else, put it on PYTHONPATH.

Interfaces (the constructor signatures of the built-in registries):

  field             constructor                 forward
  norm              cls(dim, eps, bias)         forward(x) -> x's shape (..., dim). Also the final norm and,
                                                with qk_norm, the per-head q/k norm (dim = head_dim, 4-D x)
  ffn               cls(d_model, d_ff, bias)    forward(x) -> (..., d_model); d_ff = ModelConfig.ffn_dim
                                                (4·d unless d_ff is set: set it for a gated FFN); its output
                                                projection is an nn.Linear named ``down`` (GPT-2's scaled
                                                init applies to it). Serial blocks only
  attention_module  cls(cfg)                    forward(x, rec=None) -> (B, T, d_model), causal (the tests'
                                                causality check is yours to run). Serial blocks only

Parameters: nn.Linear and nn.Embedding weights inside are initialised by ``init`` like the built-ins'. Any
other parameter is the class's own: the class must then define ``reset_parameters()`` (a training job
re-draws one model per run in place: models/init.py). A custom norm's parameters are not weight-decayed
(the ``norm`` group of train.no_decay). Accounting (FLOPs, MFU) counts a custom FFN as a plain
two-matrix FFN and a custom attention as the built-in one.

Parity (``parity``): the user's module and the built-in it replaces — the class attribute
``replaces = "<built-in name>"`` if it has one, else the field's ModelConfig default — get identical
parameters (drawn once from a fixed seed, copied by name or, failing that, in order when the shapes
agree) and one fixed seeded input; it reports the max abs difference of the outputs and of the gradients
with respect to the input. It measures, it does not assert: every run of a variant with a custom module
writes its report into metrics.json (``custom_modules``), whatever the numbers are.
"""
from __future__ import annotations

import importlib
import inspect
from functools import lru_cache

import torch
from torch import nn

FIELDS = ("norm", "ffn", "attention_module")
SIGNATURES = {"norm": "(dim, eps, bias)", "ffn": "(d_model, d_ff, bias)", "attention_module": "(cfg)"}
FORWARDS = {"norm": "forward(x)", "ffn": "forward(x)", "attention_module": "forward(x, rec=None)"}


def is_custom(value) -> bool:
    return isinstance(value, str) and ":" in value


def _error(field: str, value: str, msg: str):
    from .config import ConfigError

    return ConfigError(f"{field}={value!r}: {msg}")


def resolve(field: str, value: str) -> type[nn.Module]:
    """The class ``value`` = "module.path:ClassName" names, imported with importlib."""
    mod_name, _, cls_name = value.partition(":")
    if not mod_name or not cls_name.isidentifier():
        raise _error(field, value, "a user module is named 'module.path:ClassName'")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or whatever the module raised while importing
        raise _error(field, value, f"cannot import module {mod_name!r} ({type(e).__name__}: {e}); it must be "
                     "importable from the repository root or PYTHONPATH") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise _error(field, value, f"module {mod_name!r} has no class {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise _error(field, value, f"{cls_name!r} is a {type(cls).__name__}, not a torch.nn.Module subclass")
    return cls


def _ctor_args(field: str, cfg, dim: int | None = None) -> tuple:
    if field == "norm":
        return (cfg.d_model if dim is None else dim, cfg.norm_eps, cfg.bias)
    if field == "ffn":
        return (cfg.d_model, cfg.ffn_dim, cfg.bias)
    return (cfg,)


def instantiate(field: str, value: str, args: tuple) -> nn.Module:
    cls = resolve(field, value)
    try:
        inspect.signature(cls).bind(*args)
    except TypeError as e:
        raise _error(field, value, f"{cls.__name__}{inspect.signature(cls)} does not take the {field} interface's "
                     f"arguments {SIGNATURES[field]} ({e})") from None
    try:
        return cls(*args)
    except Exception as e:
        raise _error(field, value, f"{cls.__name__}{SIGNATURES[field]} raised {type(e).__name__}: {e}") from None


def build_norm(value: str, dim: int, eps: float, bias: bool) -> nn.Module:
    module = instantiate("norm", value, (dim, eps, bias))
    module.is_norm = True  # its parameters join the no-decay "norm" group (workflows/train/loop.py)
    return module


def build_ffn(cfg) -> nn.Module:
    return instantiate("ffn", cfg.ffn, _ctor_args("ffn", cfg))


class UserAttention(nn.Module):
    """Adapter: the block's sublayer signature f(x, rec, cache) around a user's forward(x, rec=None).
    It has no KV cache (decoding with one raises) and records a NaN max attention logit unless the
    user's module records one (``rec["attn_logit_max"]``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, rec=None, cache=None):
        if cache is not None:
            raise NotImplementedError(f"{type(self.inner).__name__} (a custom attention_module) has no KV cache")
        y = self.inner(x, rec)
        if rec is not None and "attn_logit_max" not in rec:
            rec["attn_logit_max"] = torch.tensor(float("nan"), device=x.device)
        return y


def build_attention(cfg) -> nn.Module:
    return UserAttention(instantiate("attention_module", cfg.attention_module, (cfg,)))


def _own_params(module: nn.Module) -> list[str]:
    """Parameters not inside an nn.Linear / nn.Embedding (those ``init`` initialises)."""
    return [f"{m_name}.{p_name}".lstrip(".") for m_name, m in module.named_modules()
            if not isinstance(m, (nn.Linear, nn.Embedding)) for p_name, _ in m.named_parameters(recurse=False)]


def _check_one(field: str, value: str, cfg, args: tuple, x: torch.Tensor) -> None:
    module = instantiate(field, value, args)
    call = (x, None) if field == "attention_module" else (x,)
    try:
        inspect.signature(module.forward).bind(*call)
    except TypeError as e:
        raise _error(field, value, f"{type(module).__name__}.forward{inspect.signature(module.forward)} does not "
                     f"match the interface's {FORWARDS[field]} ({e})") from None
    try:
        with torch.no_grad():
            y = module(*call)
    except Exception as e:
        raise _error(field, value, f"{type(module).__name__}.{FORWARDS[field]} raised {type(e).__name__}: {e} on "
                     f"an input of shape {tuple(x.shape)}") from None
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise _error(field, value, f"forward must return a tensor of its input's shape {tuple(x.shape)}, got {got}")
    own = _own_params(module)
    if own and not callable(getattr(module, "reset_parameters", None)):
        raise _error(field, value, f"{type(module).__name__} has its own parameters {own} but no "
                     "reset_parameters() method (needed to re-initialise the model between runs)")
    if field == "ffn" and not isinstance(getattr(module, "down", None), nn.Linear):
        raise _error(field, value, "a custom FFN names its output projection nn.Linear 'down'")


@lru_cache(maxsize=256)
def check(cfg) -> None:
    """Import and try every custom module of ``cfg`` on a small input; raise ConfigError naming the field."""
    g = torch.Generator().manual_seed(0)
    T = min(3, cfg.context_length)
    x = torch.randn(2, T, cfg.d_model, generator=g)
    for field in FIELDS:
        value = getattr(cfg, field)
        if is_custom(value):
            _check_one(field, value, cfg, _ctor_args(field, cfg), x)
    if cfg.qk_norm and is_custom(cfg.norm):  # per-head q/k norm: (B, H, T, head_dim)
        _check_one("norm", cfg.norm, cfg, _ctor_args("norm", cfg, cfg.dim_head),
                   torch.randn(2, cfg.n_heads, T, cfg.dim_head, generator=g))


# ---- parity against the built-in a module replaces ---------------------------------------------------
def builtin_of(field: str, value: str) -> str | None:
    """The built-in ``value`` replaces: its class attribute ``replaces``, else the field's default."""
    from .config import ModelConfig

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
    from .attention import Attention
    from .ffn import make_ffn
    from .norms import make_norm

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
    from .config import ModelConfig

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
