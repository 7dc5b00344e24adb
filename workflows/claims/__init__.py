"""The replication scorecard: published claims (config/claims.yaml) → measured effects and verdicts.

    python -m workflows.claims --registry config/claims.yaml --runs results/runs.parquet \\
        --grid results/grid.json --probes results/probes/*.parquet [--speed results/speed.parquet] \\
        [--grids config/*.yaml] --csv results/claims.csv --md results/claims.md --figure figures/claims.png

The package, one job a module:

- ``registry``: load and validate config/claims.yaml (fixed margins only; the published effect inside the
  holds region);
- ``verdict``: THE verdict rule (``judge``), a claim's verdict from its checks' (``combine``), and what a
  check can detect (``power``: minimum detectable effect, seeds to decide);
- ``evidence``: what checks read (runs, probes, side-by-side speed, the grid's comparison LR) and the guards
  that give "not run" / "not judged: degenerate";
- ``kinds``: the ``@kind`` evaluator registry (a kind's keys, unit and function in one place);
- ``scorecard``: evaluate every check, write claims.csv / claims.md (the forest and trajectory figures are
  drawn by ``workflows.plots.claims``).

LR choice and the capped score come from ``workflows.analysis.selection``, intervals from ``workflows.analysis.stats``.
"""
from .evidence import Evidence, NotRun, same
from .kinds import GPU_NAME, KINDS, Kind, kind
from .registry import RegistryError, check_variants, load_registry, validate_check
from .scorecard import evaluate, load_probes, main, markdown, variants_elsewhere
from .verdict import VERDICTS, Measure, combine, holds_region, judge, mde, power, seeds_for

__all__ = ["Evidence", "NotRun", "same", "KINDS", "Kind", "kind", "GPU_NAME", "RegistryError", "check_variants",
           "load_registry", "validate_check", "evaluate", "load_probes", "main", "markdown", "variants_elsewhere",
           "VERDICTS", "Measure", "combine", "holds_region", "judge", "mde", "power", "seeds_for"]
