"""The experiment grid: a pipeline config (config/*.yaml) → one RunConfig per (variant, seed, LR).

A variant is the base model/train config plus a few overrides (one axis for a one-factor ablation).
``Grid.from_config`` builds and validates every run config up front, so a bad value anywhere in the
grid stops the pipeline before any job runs, with a message naming the variant and the field.

Seeds: ``seed_offset`` (default 0) is added to every seed the grid names (its ``seeds``, and each
variant's or sweep's own ``seeds``), so ``--config seed_offset=1000`` trains the same grid on other seeds
(a replication). The shifted seeds are disjoint from the unshifted ones when the offset exceeds the
largest seed named; nothing checks that. The runs record the shifted (actual) seed.

LR protocol: with ``lr_pilot: {seeds: [...]}`` a grid chooses every variant's learning rate before its
evaluation runs, on *pilot seeds* that the estimates never use: each variant with more than one candidate LR
(its ``lrs``) trains one *pilot run* per (pilot seed, candidate LR) in its pilot job; ``workflows.analysis.pilot``
assigns it the candidate with the lowest mean capped loss over the pilot seeds (ties: the smaller LR); its
evaluation seeds then train once each, at that LR (the train job reads it from the assignment file, so a run's
LR is not known when the DAG is built: its folder is ``seed<s>``). A variant with one candidate LR is assigned
it without pilot runs (an LR fixed in the config beforehand, e.g. a stress LR where a stability trick acts).
Without ``lr_pilot`` every variant trains every (seed, LR) and the claims compare at ``compare_lr`` or a
cross-fitted LR, as before.

No run trained twice: two runs whose resolved run configs are identical apart from the variant label
(model, data, train incl. lr, seed: ``run_key``) are one run. It is trained once, by the first variant in
grid order that names it (its *owner*, ``Grid.owner``), and shared by every later variant that names it
(an *alias*): a sweep value equal to the base config is the baseline's run, not a copy of it.
``Grid.job_runs`` holds only a variant's own runs; ``Grid.dedup`` reports what was shared.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from models.checks import ConfigError

from workflows.grid.config import RunConfig, deep_update  # noqa: F401  (deep_update: importable from here too)
from workflows.grid.ladder import expand as expand_ladder
from workflows.grid.sweeps import expand as expand_sweeps


def lr_label(lr: float) -> str:
    """Path-safe, round-trippable LR label: 0.003 -> '0.003', 1e-05 -> '1e-05'."""
    return f"{lr:g}"


def _plain_numbers(x):
    """ints as floats (bools kept): grad_clip 1 and 1.0 are one setting."""
    if isinstance(x, dict):
        return {k: _plain_numbers(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain_numbers(v) for v in x]
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


def run_key(run: dict) -> str:
    """What makes two runs the same run: sha256 of the resolved run config without its variant label --
    the model, data and train configs (lr included) and the seed, defaults filled in, the model's derived
    sizes resolved (head_dim, d_ff, n_kv_heads: null and the value it stands for build the same model)
    and numbers compared as numbers (1 == 1.0)."""
    cfg = RunConfig.from_dict(run)
    d = cfg.to_dict()
    d.pop("variant", None)
    d["model"].update(head_dim=cfg.model.dim_head, d_ff=cfg.model.ffn_dim, n_kv_heads=cfg.model.kv_heads)
    return hashlib.sha256(json.dumps(_plain_numbers(d), sort_keys=True).encode()).hexdigest()


def check_seed_offset(value) -> int:
    """``seed_offset`` must be an integer >= 0 (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"seed_offset={value!r} must be an integer >= 0")
    return value


def _steps(runs: list[dict]) -> int:
    """Training steps of a job's runs (run dicts)."""
    return sum(RunConfig.from_dict(d).train.steps for d in runs)


@dataclass
class Grid:
    config: dict  # with the sweeps and the ladder expanded into variants
    sweeps: dict = field(default_factory=dict)  # workflows.grid.sweeps.expand's summary
    ladder: dict | None = None  # workflows.grid.ladder.expand's summary (None: no ladder)

    @classmethod
    def from_config(cls, config: dict) -> "Grid":
        check_seed_offset(config.get("seed_offset", 0))
        variants, sweeps = expand_sweeps(config)
        variants, rungs, baseline = expand_ladder(config, variants)
        grid = cls({**config, "variants": variants, "baseline": baseline}, sweeps, rungs)
        if grid.baseline not in grid.variants:
            raise ConfigError(f"baseline={grid.baseline!r} is not one of the variants {list(grid.variants)}")
        if len(set(map(lr_label, grid.lrs))) != len(grid.lrs):
            raise ConfigError(f"lrs={grid.lrs} has duplicates")
        if grid.lr_pilot is not None:
            grid._check_pilot()
        if grid.compare_lr is not None:
            base_lrs = grid.variant_lrs(grid.baseline)
            if not any(abs(grid.compare_lr - lr) <= 1e-12 * lr for lr in base_lrs):
                raise ConfigError(f"compare_lr={grid.compare_lr:g} must be one of the baseline's LRs {base_lrs}: the "
                                  "claims compare every variant with the baseline there")
        for v in grid.variants:
            for lr in grid.variant_lrs(v):
                for s in grid.variant_seeds(v):
                    try:
                        grid.run_config(v, s, lr)
                    except (ConfigError, ValueError) as e:
                        raise ConfigError(f"variant {v!r}: {e}") from None
        grid._share_runs()
        return grid

    def _check_pilot(self) -> None:
        """An LR pilot names its seeds, disjoint from every variant's evaluation seeds, and replaces
        ``compare_lr`` (each variant is compared at its assigned LR)."""
        pilot = self.lr_pilot
        if not isinstance(pilot, dict) or set(pilot) - {"seeds", "description"} or not pilot.get("seeds"):
            raise ConfigError(f"lr_pilot={pilot!r}: a mapping with 'seeds' (a non-empty list of seeds) and an "
                              "optional 'description'")
        if self.compare_lr is not None:
            raise ConfigError("compare_lr and lr_pilot exclude each other: with an LR pilot every variant is "
                              "compared at the LR its pilot seeds chose; drop compare_lr")
        for v in self.variants:
            both = sorted(set(self.pilot_seeds) & set(self.variant_seeds(v)))
            if both:
                raise ConfigError(f"lr_pilot.seeds {self.pilot_seeds} share seed(s) {both} with variant {v!r}'s "
                                  "evaluation seeds: the LR must be chosen on seeds the estimate does not use")

    def _share_runs(self) -> None:
        """Assign each (variant, seed, lr) the variant that trains it: the first one (grid order, then
        seed-major, LR) naming the same run (``run_key``). With an LR pilot the evaluation runs' LRs are
        not known yet: every variant trains its own."""
        first: dict[str, tuple[str, int, float]] = {}
        self._owner: dict[tuple[str, int, str], tuple[str, int, float]] = {}
        if self.lr_pilot is not None:
            return
        for v in self.variants:
            for s in self.variant_seeds(v):
                for lr in self.variant_lrs(v):
                    key = run_key(self.run_dict(v, s, lr))
                    self._owner[(v, s, lr_label(lr))] = first.setdefault(key, (v, s, lr))

    @property
    def baseline(self) -> str:
        return self.config["baseline"]

    @property
    def variants(self) -> dict:
        return self.config["variants"]

    @property
    def compare_lr(self) -> float | None:
        """The pre-registered shared LR the claims compare variants at (``config['compare_lr']``; None: each
        variant at its cross-fitted best LR)."""
        x = self.config.get("compare_lr")
        return None if x is None else float(x)

    @property
    def lr_pilot(self) -> dict | None:
        """The LR pilot (``lr_pilot: {seeds}``), or None: every (seed, LR) of every variant is an evaluation run."""
        return self.config.get("lr_pilot")

    @property
    def pilot_seeds(self) -> list[int]:
        """The LR pilot's seeds, ``seed_offset`` added (empty without a pilot)."""
        return [int(s) + self.seed_offset for s in (self.lr_pilot or {}).get("seeds") or []]

    def pilot_job_runs(self, v: str) -> list[dict]:
        """The run configs of variant ``v``'s pilot job: every (pilot seed, candidate LR); none without a pilot
        or when ``v`` has a single candidate LR (assigned as fixed)."""
        lrs = self.variant_lrs(v)
        if self.lr_pilot is None or len(lrs) < 2:
            return []
        return [self.run_dict(v, s, lr) for s in self.pilot_seeds for lr in lrs]

    def pilot_variants(self) -> list[str]:
        """The variants with a pilot job, in grid order."""
        return [v for v in self.variants if self.pilot_job_runs(v)]

    @property
    def seed_offset(self) -> int:
        return int(self.config.get("seed_offset", 0) or 0)

    @property
    def seeds(self) -> list[int]:
        """The grid's seeds, ``seed_offset`` added (the seeds its runs train with)."""
        return [int(s) + self.seed_offset for s in self.config["seeds"]]

    @property
    def lrs(self) -> list[float]:
        return [float(x) for x in self.config["lrs"]]

    def variant_seeds(self, v: str) -> list[int]:
        """Variant ``v``'s seeds (its own ``seeds`` or the grid's), ``seed_offset`` added."""
        return [int(s) + self.seed_offset for s in ((self.variants[v] or {}).get("seeds") or self.config["seeds"])]

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

    def variant_runs(self, variant: str) -> list[tuple[int, float | None]]:
        """Every (seed, lr) variant ``variant`` names (seed-major, then LR), its aliases included; with an LR
        pilot one (seed, None) per evaluation seed (its LR is assigned by the pilot)."""
        if self.lr_pilot is not None:
            return [(s, None) for s in self.variant_seeds(variant)]
        return [(s, lr) for s in self.variant_seeds(variant) for lr in self.variant_lrs(variant)]

    def owner(self, variant: str, seed: int, lr: float) -> tuple[str, int, float]:
        """(variant, seed, lr) of the run that stands for ``variant``'s run (seed, lr): itself, or the
        identical run of the first variant in grid order that names it (then ``variant``'s is an alias)."""
        if self.lr_pilot is not None:
            return variant, int(seed), lr
        if not hasattr(self, "_owner"):
            self._share_runs()
        return self._owner[(variant, int(seed), lr_label(float(lr)))]

    def is_alias(self, variant: str, seed: int, lr: float) -> bool:
        return self.owner(variant, seed, lr)[0] != variant

    def job_runs(self, variant: str) -> list[dict]:
        """The run configs of variant ``variant``'s train job (seed-major, then LR): its own runs, not its
        aliases (``owner``). With an LR pilot: one per evaluation seed, its ``train.lr`` the first candidate as
        a placeholder that the train job replaces by the assigned LR (``workflows.train.loop --assigned-lrs``). One process trains them all, so a CPU grid pays the interpreter start once
        per variant and a GPU grid compiles once. Empty for a variant whose runs all are aliases: it has
        no train job."""
        return [self.run_dict(variant, s, self.variant_lrs(variant)[0] if lr is None else lr)
                for s, lr in self.variant_runs(variant) if not self.is_alias(variant, s, lr)]

    def trained_variants(self) -> list[str]:
        """The variants with a train job (at least one run of their own), in grid order."""
        return [v for v in self.variants if self.job_runs(v)]

    def dedup(self) -> dict:
        """How many runs the grid names and trains: {"named", "trained", "aliases", "shared": [{variant,
        seed, lr, trained_by}], "alias_only": [variants without a train job]}."""
        shared = []
        for v in self.variants:
            for s, lr in self.variant_runs(v):
                o = self.owner(v, s, lr)
                if o[0] != v:
                    shared.append({"variant": v, "seed": s, "lr": lr, "trained_by": o[0]})
        named = sum(len(self.variant_runs(v)) for v in self.variants)
        return {"named": named, "trained": named - len(shared), "aliases": len(shared), "shared": shared,
                "alias_only": [v for v in self.variants if not self.job_runs(v)],
                "pilot": sum(len(self.pilot_job_runs(v)) for v in self.variants)}

    def dedup_line(self) -> str:
        """One line for the Snakefile's start-up: runs named, trained, shared."""
        d = self.dedup()
        line = (f"archbench grid {self.config.get('name', '')!r}: {d['named']} runs named, {d['trained']} trained"
                f", {d['aliases']} shared with an identical run of an earlier variant")
        if d["aliases"]:
            by = {}
            for a in d["shared"]:
                by.setdefault(a["variant"], a["trained_by"])
            line += " (" + ", ".join(f"{v}<-{o}" for v, o in by.items()) + ")"
        if d["alias_only"]:
            line += f"; {len(d['alias_only'])} variant(s) without a train job"
        if self.lr_pilot is not None:
            line += (f"; + {d['pilot']} LR-pilot runs on seeds {self.pilot_seeds} "
                     f"({len(self.pilot_variants())} variants; the others have one LR)")
        if self.seed_offset:
            line += f"; seed_offset {self.seed_offset}"
        return line

    def job_steps(self, variant: str) -> int:
        """Training steps of a variant's evaluation job (rule train): its scheduling priority (longest first
        balances the cores). Its pilot's runs are another job's (``pilot_steps``), done before it starts."""
        return _steps(self.job_runs(variant))

    def pilot_steps(self, variant: str) -> int:
        """Training steps of a variant's LR-pilot job (rule train_pilot; 0 without one)."""
        return _steps(self.pilot_job_runs(variant))

    def summary(self) -> dict:
        """What aggregate/figures/claims need: order, baseline, families, seeds, LRs, base configs."""
        return {
            "name": self.config.get("name", ""), "baseline": self.baseline, "order": list(self.variants),
            "seeds": self.seeds, "seed_offset": self.seed_offset, "lrs": self.lrs, "compare_lr": self.compare_lr,
            "lr_protocol": "pilot" if self.lr_pilot is not None else ("shared" if self.compare_lr is not None else "crossfit"),
            "pilot_seeds": self.pilot_seeds,
            "variants": {v: {"family": (s or {}).get("family", "other"), "description": (s or {}).get("description", ""),
                             **{k: s[k] for k in ("rung", "arm", "baseline", "horizon") if k in (s or {})},
                             "model": (s or {}).get("model", {}), "train": (s or {}).get("train", {}),
                             "data": (s or {}).get("data", {}),
                             "seeds": self.variant_seeds(v), "lrs": self.variant_lrs(v)}
                         for v, s in self.variants.items()},
            "model": self.config.get("model", {}), "train": self.config.get("train", {}),
            "data": self.config.get("data", {}), "sweeps": self.sweeps,
            **({"ladder": self.ladder} if self.ladder else {}),
            "dedup": self.dedup(),
        }


def load_pipeline_config(path: str | Path) -> dict:
    """Load and validate a pipeline config file exactly as the Snakefile does (schema defaults included)."""
    import yaml
    from snakemake.utils import validate

    with open(path) as f:
        cfg = yaml.safe_load(f)
    validate(cfg, str(Path(__file__).parents[1] / "schemas" / "config.schema.json"))
    return cfg

