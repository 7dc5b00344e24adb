"""archbench's variant zoo: one decoder-only Transformer whose every architecture axis is a
``ModelConfig`` field. ``build(cfg)`` is the only constructor the rest of the project uses.

The package's names are imported on first use, so ``import models.config`` (the grid, parsed by Snakemake)
does not import torch; ``models.Transformer``, ``build`` and the accounting functions do."""
from __future__ import annotations

__all__ = [
    "CHOICES", "ConfigError", "ModelConfig", "STAT_FIELDS", "Transformer", "build",
    "count_params", "flops_per_token", "kv_cache_bytes_per_token", "matmul_params",
]


def build(cfg):
    """The ``Transformer`` of ``cfg`` (a ``ModelConfig`` or its dict)."""
    from .config import ModelConfig
    from .transformer import Transformer

    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return Transformer(cfg)


def __getattr__(name: str):
    if name == "ConfigError":
        from . import checks as module
    elif name in ("CHOICES", "ModelConfig"):
        from . import config as module
    elif name in ("STAT_FIELDS", "Transformer"):
        from . import transformer as module
    elif name in ("count_params", "flops_per_token", "kv_cache_bytes_per_token", "matmul_params"):
        from . import accounting as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
