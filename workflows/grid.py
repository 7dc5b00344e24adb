"""The experiment grid: a pipeline config (config/*.yaml) → one RunConfig per (variant, seed, LR).

A variant is the base model/train config plus a few overrides (one axis for a one-factor ablation).
``Grid.from_config`` builds and validates every run config up front, so a bad value anywhere in the
grid stops the pipeline before any job runs, with a message naming the variant and the field.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from models.config import ConfigError

from .train import RunConfig


def lr_label(lr: float) -> str:
    """Path-safe, round-trippable LR label: 0.003 -> '0.003', 1e-05 -> '1e-05'."""
    return f"{lr:g}"


def deep_update(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Grid:
    config: dict  # with the sweeps expanded into variants
    sweeps: dict = field(default_factory=dict)  # workflows.sweeps.expand's summary

    @classmethod
    def from_config(cls, config: dict) -> "Grid":
        from .sweeps import expand

        variants, sweeps = expand(config)
        grid = cls({**config, "variants": variants}, sweeps)
        if grid.baseline not in grid.variants:
            raise ConfigError(f"baseline={grid.baseline!r} is not one of the variants {list(grid.variants)}")
        if len(set(map(lr_label, grid.lrs))) != len(grid.lrs):
            raise ConfigError(f"lrs={grid.lrs} has duplicates")
        for v in grid.variants:
            for lr in grid.variant_lrs(v):
                for s in grid.variant_seeds(v):
                    try:
                        grid.run_config(v, s, lr)
                    except (ConfigError, ValueError) as e:
                        raise ConfigError(f"variant {v!r}: {e}") from None
        return grid

    @property
    def baseline(self) -> str:
        return self.config["baseline"]

    @property
    def variants(self) -> dict:
        return self.config["variants"]

    @property
    def seeds(self) -> list[int]:
        return list(self.config["seeds"])

    @property
    def lrs(self) -> list[float]:
        return [float(x) for x in self.config["lrs"]]

    def variant_seeds(self, v: str) -> list[int]:
        return list(self.variants[v].get("seeds") or self.seeds)

    def variant_lrs(self, v: str) -> list[float]:
        return [float(x) for x in (self.variants[v].get("lrs") or self.lrs)]

    def run_dict(self, variant: str, seed: int, lr: float) -> dict:
        spec = self.variants[variant] or {}
        model = deep_update(self.config.get("model", {}), spec.get("model", {}))
        train = deep_update(self.config.get("train", {}), spec.get("train", {}))
        train["lr"] = float(lr)
        data = deep_update(self.config.get("data", {}), spec.get("data", {}))
        return {"variant": variant, "seed": int(seed), "model": model, "data": data, "train": train}

    def run_config(self, variant: str, seed: int, lr: float) -> RunConfig:
        return RunConfig.from_dict(self.run_dict(variant, seed, lr))

    def job_runs(self, variant: str) -> list[dict]:
        """The run configs of variant ``variant``'s train job (seed-major, then LR): one process trains
        them all, so a CPU grid pays the interpreter start once per variant and a GPU grid compiles once."""
        return [self.run_dict(variant, s, lr) for s in self.variant_seeds(variant) for lr in self.variant_lrs(variant)]

    def job_steps(self, variant: str) -> int:
        """Training steps of a variant's job: its scheduling priority (longest first balances the cores)."""
        return sum(RunConfig.from_dict(d).train.steps for d in self.job_runs(variant))

    def summary(self) -> dict:
        """What aggregate/figures/claims need: order, baseline, families, seeds, LRs, base configs."""
        return {
            "name": self.config.get("name", ""), "baseline": self.baseline, "order": list(self.variants),
            "seeds": self.seeds, "lrs": self.lrs,
            "variants": {v: {"family": (s or {}).get("family", "other"), "description": (s or {}).get("description", ""),
                             "model": (s or {}).get("model", {}), "train": (s or {}).get("train", {}),
                             "data": (s or {}).get("data", {}),
                             "seeds": self.variant_seeds(v), "lrs": self.variant_lrs(v)}
                         for v, s in self.variants.items()},
            "model": self.config.get("model", {}), "train": self.config.get("train", {}),
            "data": self.config.get("data", {}), "sweeps": self.sweeps,
        }


def load_pipeline_config(path: str | Path) -> dict:
    """Load and validate a pipeline config file exactly as the Snakefile does (schema defaults included)."""
    import yaml
    from snakemake.utils import validate

    with open(path) as f:
        cfg = yaml.safe_load(f)
    validate(cfg, str(Path(__file__).parent / "schemas" / "config.schema.json"))
    return cfg

