"""``ModelConfig``: the single source of truth for a variant's architecture.

Every architecture axis is one field. Allowed values are declared in models/choices.py (``NORMS``, ``FFNS``,
...), which the module implementing each axis reads too, so adding a value is a change there and in that module.
Invalid values and combinations are rejected at construction with a ``ConfigError`` naming the
field and the allowed values. ``norm``, ``ffn`` and ``attention_module`` also take a user's class,
``"module.path:ClassName"``: it is imported and tried on a small input here (models/custom.py), so a bad
one fails when the grid is built, before any job runs.

Without a user class this module imports no torch (the grid, parsed by Snakemake, builds every run's config):
models/custom.py, and with it torch, is imported only when a config names a user class.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any

import yaml

from .checks import ConfigError, check_types, from_mapping  # noqa: F401  (models.config.ConfigError: the same class)
from .choices import CHOICES, FINAL_NORM, USER_FIELDS, is_custom, is_gated

CUSTOM_FIELDS = ("norm", "ffn")  # categorical axes that also take a user class "module.path:ClassName"
# fields added after results were published: left out of the fingerprint at their default (None), so
# every earlier variant keeps its fingerprint and short name
UNHASHED_DEFAULTS = ("final_norm", "attention_module")


def _label(value: str) -> str:
    """A path-safe word for an axis value: a user class "pkg.mod:Class" -> "Class"."""
    return value.rsplit(":", 1)[1] if is_custom(value) else value


@dataclass(frozen=True)
class ModelConfig:
    # shape
    vocab_size: int = 256
    context_length: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None -> n_heads (MHA); 1 < g < n_heads: GQA; 1: MQA
    head_dim: int | None = None  # None -> d_model // n_heads
    d_ff: int | None = None  # None -> 4 d (plain) or 8/3 d rounded up to ffn_multiple_of (gated)
    ffn_multiple_of: int = 8
    # architecture axes
    norm_position: str = "pre"  # pre | post | sandwich | reordered
    norm: str = "rmsnorm"  # layernorm | rmsnorm | none
    norm_eps: float = 1e-5
    bias: bool = False
    ffn: str = "swiglu"
    block: str = "serial"  # serial | parallel
    position: str = "rope"  # rope | learned | sinusoidal | none
    rope_theta: float = 10000.0
    qk_norm: bool = False
    attn_softcap: float | None = None
    attn_scale: str = "inv_sqrt_d"  # inv_sqrt_d (1/√d_k) | inv_d (1/d_k) | none (1): the factor on q·kᵀ
    final_softcap: float | None = None
    residual: bool = True
    init: str = "gpt2"  # gpt2 | gpt2_unscaled | xavier | kaiming (models/init.py)
    init_std: float = 0.02
    tie_embeddings: bool = True
    final_norm: bool | None = None  # None: as norm_position implies (pre/sandwich/reordered on, post off)
    attention_module: str | None = None  # None: the built-in; "module.path:ClassName" (models/custom.py)
    dropout: float = 0.0

    def __post_init__(self):
        check_types(self)
        for f in fields(self):  # store ints given for float fields as floats: equal configs
            value = getattr(self, f.name)  # (30 == 30.0) must have equal fingerprints/short names
            if f.type.startswith("float") and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed and not (name in CUSTOM_FIELDS and is_custom(value)):
                own = " or your own class as 'module.path:ClassName'" if name in CUSTOM_FIELDS else ""
                raise ConfigError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}{own}")
        if self.attention_module is not None and not is_custom(self.attention_module):
            raise ConfigError(f"attention_module={self.attention_module!r} must be null (the built-in attention) "
                              "or a class 'module.path:ClassName'")
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "ffn_multiple_of"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("n_kv_heads", "head_dim", "d_ff"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be a positive integer or null (derived)")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "change one of them or set head_dim explicitly"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                f"(allowed: {[g for g in range(1, self.n_heads + 1) if self.n_heads % g == 0]})"
            )
        if self.kv_heads > self.n_heads:
            raise ConfigError(f"n_kv_heads={self.n_kv_heads} must be <= n_heads={self.n_heads}")
        if self.position == "rope" and self.dim_head % 2:
            raise ConfigError(f"position='rope' needs an even head_dim, got head_dim={self.dim_head}")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"position='sinusoidal' needs an even d_model, got d_model={self.d_model}")
        if self.qk_norm and self.norm == "none":
            raise ConfigError("qk_norm=True normalises q and k with the configured norm, but norm='none'; "
                              "set norm to one of ['layernorm', 'rmsnorm'] or qk_norm=False")
        if self.qk_norm and self.norm == "batchnorm":
            raise ConfigError("qk_norm=True with norm='batchnorm' would pool q and k statistics over batch, heads "
                              "and positions; set norm to one of ['layernorm', 'rmsnorm'] or qk_norm=False")
        for name in ("ffn", "attention_module"):
            if self.block == "parallel" and is_custom(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)!r}: a custom module needs block='serial' (the "
                                  "parallel block fuses the built-in projections); allowed: ['serial']")
        for name in ("attn_softcap", "final_softcap"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value} must be a positive number or null (off)")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps={self.norm_eps} must be > 0")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta={self.rope_theta} must be > 0")
        if not self.init_std > 0:
            raise ConfigError(f"init_std={self.init_std} must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if any(is_custom(getattr(self, name)) for name in USER_FIELDS):
            from . import custom  # torch: only for a config that names a user class

            custom.check(self)  # import and try the user's classes (models/custom.py)

    # ---- derived quantities -------------------------------------------------------------------
    # kv_heads, dim_head and ffn_dim are the sizes the model is built with; the fields n_kv_heads, head_dim
    # and d_ff are what the config wrote, None meaning "derive it". They are not synonyms: the fields (None
    # included) are what fingerprints and short names hash, so a run keeps its identity when a default changes.
    @property
    def has_final_norm(self) -> bool:
        return FINAL_NORM[self.norm_position] if self.final_norm is None else self.final_norm

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def dim_head(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if is_gated(self.ffn):
            m = self.ffn_multiple_of
            return m * math.ceil(8 * self.d_model / 3 / m)
        return 4 * self.d_model

    @property
    def attention_kind(self) -> str:
        g = self.kv_heads
        return "mha" if g == self.n_heads else ("mqa" if g == 1 else "gqa")

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return from_mapping(cls, d, ConfigError, "model config")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "ModelConfig":
        return cls.from_dict(yaml.safe_load(text) or {})

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of every field (stable across Python sessions); the fields of
        UNHASHED_DEFAULTS are left out while they are None."""
        d = {k: v for k, v in self.to_dict().items() if not (k in UNHASHED_DEFAULTS and v is None)}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def short_name(self) -> str:
        """A stable, path-safe name: the main axes in words, then 8 hex digits of the fingerprint."""
        parts = [
            self.norm_position,
            _label(self.norm),
            _label(self.ffn),
            self.block,
            f"{self.attention_kind}{self.n_heads}x{self.kv_heads}",
            self.position,
            f"d{self.d_model}L{self.n_layers}",
        ]
        return "-".join(parts) + "-" + self.fingerprint()[:8]
