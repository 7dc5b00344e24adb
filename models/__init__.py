"""archbench's variant zoo: one decoder-only Transformer whose every architecture axis is a
``ModelConfig`` field. ``build(cfg)`` is the only constructor the rest of the project uses."""
from .accounting import count_params, flops_per_token, kv_cache_bytes_per_token, matmul_params
from .config import CHOICES, ConfigError, ModelConfig
from .transformer import STAT_FIELDS, Transformer


def build(cfg: ModelConfig | dict) -> Transformer:
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return Transformer(cfg)


__all__ = [
    "CHOICES", "ConfigError", "ModelConfig", "STAT_FIELDS", "Transformer", "build",
    "count_params", "flops_per_token", "kv_cache_bytes_per_token", "matmul_params",
]
