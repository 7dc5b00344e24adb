"""The configuration of a run, without torch: ``DataConfig`` (the corpus and its tokenizer), ``TrainConfig``
(the optimisation and schedule) and ``RunConfig`` (variant, seed, model, data, train), which the grid builds for
every run when Snakemake parses the workflow. The modules that act on them import them from here
(``workflows.data.corpus``, ``workflows.train.loop``, where their names stay importable too).

Also here: ``deep_update`` (a variant's overrides over the base config) and the seeds of the probes
(``claims.probes.seeds``), which the grid shifts by ``seed_offset``.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.checks import ConfigError, check_types, from_mapping
from models.config import ModelConfig

TOKENIZERS = ("bytes", "bpe")
FILE_BUILDERS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json",
                 ".parquet": "parquet", ".csv": "csv"}
FORMAT_VERSION = 1


class DataError(RuntimeError):
    """Data cannot be fetched, parsed or read; the message says which file or field and what to do."""


@dataclass
class DataConfig:
    source: str = "shakespeare"
    tokenizer: str = "bytes"  # bytes | bpe
    bpe_vocab_size: int = 4096
    text_field: str = "text"
    val_fraction: float = 0.1  # files / hub sources without a validation split
    max_chars: int = 50_000_000  # hub sources: stop streaming after this many characters

    def __post_init__(self):
        check_types(self, DataError)
        if self.tokenizer not in TOKENIZERS:
            raise DataError(f"data.tokenizer={self.tokenizer!r} is not allowed; choose one of {list(TOKENIZERS)}")
        if not 256 < self.bpe_vocab_size <= 65535:
            raise DataError(f"data.bpe_vocab_size={self.bpe_vocab_size} must be in (256, 65535] (uint16 tokens)")
        if not 0 < self.val_fraction < 1:
            raise DataError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.max_chars < 1:
            raise DataError(f"data.max_chars={self.max_chars} must be positive")
        if not self.source:
            raise DataError("data.source is empty; use 'shakespeare', a local path/glob or 'hf:NAME'")
        if self.kind == "files" and not self.files():
            raise DataError(f"data.source={self.source!r} matches no file; allowed: 'shakespeare', "
                            f"'hf:NAME[:CONFIG]', or a path/glob of {sorted(FILE_BUILDERS)} files")
        if self.kind == "files":
            bad = sorted({Path(f).suffix for f in self.files()} - set(FILE_BUILDERS))
            if bad:
                raise DataError(f"data.source={self.source!r} has files of type {bad}; allowed: {sorted(FILE_BUILDERS)}")

    @classmethod
    def from_dict(cls, d) -> "DataConfig":
        return from_mapping(cls, d, DataError, "data config")

    @property
    def kind(self) -> str:
        if self.source == "shakespeare":
            return "shakespeare"
        return "hub" if self.source.startswith("hf:") else "files"

    @property
    def vocab_size(self) -> int:
        return 256 if self.tokenizer == "bytes" else self.bpe_vocab_size

    def files(self) -> list[str]:
        return sorted(glob.glob(os.path.expanduser(self.source), recursive=True))

    def key(self) -> str:
        """Folder name of the token files: readable prefix + hash of everything that shapes them."""
        ident = {"v": FORMAT_VERSION, "source": self.source, "tokenizer": self.tokenizer,
                 "vocab": self.vocab_size, "text_field": self.text_field,
                 "val_fraction": self.val_fraction, "max_chars": self.max_chars}
        if self.kind == "files":
            ident["files"] = [(f, os.path.getsize(f), int(os.path.getmtime(f))) for f in self.files()]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.source.removeprefix("hf:")).strip("-")[-40:] or "data"
        h = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        return f"{slug}-{self.tokenizer}{self.vocab_size}-{h}"


# ------------------------------------------------------------------------------------------------
NO_DECAY_GROUPS = ("norm", "bias", "embedding")


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    no_decay: list = field(default_factory=lambda: list(NO_DECAY_GROUPS))
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    z_loss: float = 0.0
    log_every: int = 10
    eval_every: int = 100
    eval_windows: int = 64  # the learning curve's fixed windows (evaluated every eval_every steps)
    final_eval_windows: int | None = None  # the final score's windows; None: the whole validation split
    stats_every: int = 50  # per-layer statistics; 0 = off
    checkpoint_every: int = 100  # 0 = off
    divergence_margin: float = 0.1  # nats above ln(vocab)
    divergence_patience: int = 5  # consecutive log checks
    divergence_ema: float = 0.9
    timing_warmup_steps: int = 10  # excluded from steady-state throughput
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 autocast on CUDA) | float32 | bfloat16
    compile: str = "auto"  # auto (on for CUDA, off for CPU) | on | off
    threads: int | None = None  # torch threads; None = the caller's (--threads) or torch's default

    def __post_init__(self):
        check_types(self, ConfigError)
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be a positive integer")
        for name in ("warmup_steps", "stats_every", "checkpoint_every", "timing_warmup_steps", "divergence_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("beta1", "beta2", "divergence_ema"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be in [0, 1)")
        if self.weight_decay < 0 or self.z_loss < 0 or self.divergence_margin < 0:
            raise ConfigError("train.weight_decay, train.z_loss and train.divergence_margin must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip={self.grad_clip} must be > 0 or null (off)")
        bad = sorted(set(self.no_decay) - set(NO_DECAY_GROUPS))
        if bad:
            raise ConfigError(f"train.no_decay has {bad}; allowed entries: {list(NO_DECAY_GROUPS)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"train.dtype={self.dtype!r}; choose one of ['auto', 'float32', 'bfloat16', 'float16']")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"train.compile={self.compile!r}; choose one of ['auto', 'on', 'off']")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device={self.device!r}; choose one of ['auto', 'cpu', 'cuda', 'cuda:N']")
        if self.final_eval_windows is not None and self.final_eval_windows < 1:
            raise ConfigError(f"train.final_eval_windows={self.final_eval_windows} must be a positive integer or "
                              "null (every window of the validation split)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"train.threads={self.threads} must be a positive integer or null")


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    seed: int = 0
    variant: str = "custom"

    @classmethod
    def from_dict(cls, d) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be a mapping, got {type(d).__name__}")
        allowed = {"model", "data", "train", "seed", "variant"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"unknown run config key(s) {unknown}; allowed keys: {sorted(allowed)}")
        seed = d.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be a non-negative integer")
        variant = d.get("variant", "custom")
        if not isinstance(variant, str) or not variant:
            raise ConfigError(f"variant={variant!r} must be a non-empty string")
        data = DataConfig.from_dict(d.get("data") or {})
        model = ModelConfig.from_dict({"vocab_size": data.vocab_size, **(d.get("model") or {})})
        if model.vocab_size != data.vocab_size:
            raise ConfigError(f"model.vocab_size={model.vocab_size} differs from the tokenizer's vocabulary "
                              f"({data.tokenizer}: {data.vocab_size}); drop model.vocab_size to derive it")
        return cls(model=model, data=data, train=from_mapping(TrainConfig, d.get("train"), ConfigError,
                                                              "train config"), seed=seed, variant=variant)

    @classmethod
    def from_yaml(cls, path) -> "RunConfig":
        import yaml

        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def to_dict(self) -> dict:
        return {"variant": self.variant, "seed": self.seed, "model": self.model.to_dict(),
                "data": asdict(self.data), "train": asdict(self.train)}


# ------------------------------------------------------------------------------------------------
def deep_update(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# the grid configs the scorecard names when a claim's arms are not in this grid (claims.grids overrides)
CLAIMS_GRIDS = ("config/config.yaml", "config/cpu-full.yaml", "config/hparams.yaml", "config/paper.yaml")
DEFAULT_PROBE_SEEDS = (0, 1, 2)  # init seeds per probe model when claims.probes.seeds is not set


def offset_probe_seeds(probes: dict, offset: int) -> dict:
    """The ``claims.probes`` section with the pipeline's ``seed_offset`` added to its seeds (to
    ``DEFAULT_PROBE_SEEDS`` when it sets none): a replication's probes draw other models too."""
    seeds = (probes or {}).get("seeds") or list(DEFAULT_PROBE_SEEDS)
    return {**(probes or {}), "seeds": [int(s) + int(offset) for s in seeds]}
