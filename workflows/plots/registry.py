"""Every figure's name, the command that writes it and the module of ``workflows.plots`` that draws it.

The rules (workflows/rules/*.smk) read their output names from here, and the commands draw what it lists, so
a name is written once. Pure Python on purpose: parsing the workflow imports this module, and importing it
loads no matplotlib, pandas or torch.

Each figure is written as ``<name>.png`` and ``<name>.pdf`` (``FORMATS``) by ``workflows.plots.save.save``.
The grid has one more figure per hyperparameter sweep, ``sweep_<sweep name>`` (the entry ``SWEEP``).
"""
from __future__ import annotations

from typing import NamedTuple

FORMATS = ("png", "pdf")
SWEEP_PREFIX = "sweep_"
SWEEP = SWEEP_PREFIX + "<name>"  # the registry's entry for every per-sweep figure

COMMANDS = {  # command → how a rule runs it
    "grid": "python -m workflows.plots",
    "ladder": "python -m workflows.analysis.ladder",
    "decode": "python -m workflows.bench.decode",
    "op_profile": "python -m workflows.bench.opprofile",
    "claims": "python -m workflows.claims",
}


class Figure(NamedTuple):
    command: str  # the key of COMMANDS whose command writes the figure
    module: str  # the module of workflows.plots whose DRAWS draws it


FIGURES = {  # in the order each command draws them
    "loss_by_variant": Figure("grid", "runs"),
    "loss_vs_lr": Figure("grid", "runs"),
    "divergence_heatmap": Figure("grid", "runs"),
    "throughput": Figure("grid", "runs"),
    "loss_curves": Figure("grid", "runs"),
    "activations": Figure("grid", "layers"),
    "grad_norms": Figure("grid", "layers"),
    "attn_logits": Figure("grid", "layers"),
    "weight_norms": Figure("grid", "layers"),
    SWEEP: Figure("grid", "sweeps"),
    "ladder_curves": Figure("ladder", "ladder"),
    "compute_multiplier": Figure("ladder", "ladder"),
    "decode": Figure("decode", "decode"),
    "op_profile": Figure("op_profile", "opprofile"),
    "claims": Figure("claims", "claims"),
    "claims_trajectory": Figure("claims", "claims"),
}
MODULES = tuple(dict.fromkeys(f.module for f in FIGURES.values()))  # the family modules of workflows.plots


def names(command: str) -> list[str]:
    """The fixed figure names ``command`` writes, in order (the per-sweep figures: ``sweep_names``)."""
    if command not in COMMANDS:
        raise KeyError(f"no command {command!r}; choose from {list(COMMANDS)}")
    return [n for n, f in FIGURES.items() if f.command == command and n != SWEEP]


def sweep_names(sweeps) -> list[str]:
    """The figure names of a grid's sweeps (the names in ``sweeps``): ``sweep_<name>``."""
    return [SWEEP_PREFIX + n for n in sweeps or ()]


def entry(name: str) -> Figure:
    """The registry's entry for figure ``name`` (any ``sweep_<name>`` is ``SWEEP``'s)."""
    return FIGURES[SWEEP if name.startswith(SWEEP_PREFIX) else name]


def files(folder, figure_names) -> list[str]:
    """``folder/<name>.png`` and ``.pdf`` for each name."""
    return [f"{folder}/{n}.{fmt}" for n in figure_names for fmt in FORMATS]
