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

Parity against the built-in a module replaces (what every run with a user module reports): models/parity.py.
"""
from __future__ import annotations

import importlib
import inspect
from functools import lru_cache

import torch
from torch import nn

from .checks import ConfigError
from .choices import USER_FIELDS as FIELDS, is_custom  # noqa: F401  (FIELDS: the fields a user class may fill)
from .statistics import ATTN_LOGIT_MAX

SIGNATURES = {"norm": "(dim, eps, bias)", "ffn": "(d_model, d_ff, bias)", "attention_module": "(cfg)"}
FORWARDS = {"norm": "forward(x)", "ffn": "forward(x)", "attention_module": "forward(x, rec=None)"}


def _error(field: str, value: str, msg: str):
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
        if rec is not None and ATTN_LOGIT_MAX.name not in rec:
            rec[ATTN_LOGIT_MAX.name] = torch.tensor(float("nan"), device=x.device)
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
