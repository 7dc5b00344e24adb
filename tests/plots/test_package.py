"""The figures package as one: every registered figure has exactly one drawing function, the registry imports no
plotting, table or torch library (the rules read it while parsing the workflow), ``savefig`` is called only inside
workflows/plots, and a figure rendered twice gives the same PNG and PDF bytes (the jittered ones included,
whatever numpy's global generator holds)."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_figures import FULL, UNIGRAM, make_grid, write_results  # noqa: E402  (the figure tests' synthetic tables)
from workflows import claims
from workflows.plots import registry

REPO = Path(__file__).resolve().parents[2]


def test_every_registered_figure_is_drawn_by_exactly_one_function():
    drawn: dict[str, list] = {}
    for module in registry.MODULES:
        for name, fn in importlib.import_module(f"workflows.plots.{module}").DRAWS.items():
            drawn.setdefault(name, []).append((module, fn))
    assert set(drawn) == set(registry.FIGURES)
    for name, found in drawn.items():
        assert len(found) == 1, (name, found)
        (module, fn), = found
        assert callable(fn) and module == registry.FIGURES[name].module, (name, module)
    fns = [fn for found in drawn.values() for _, fn in found]
    assert len(set(fns)) == len(fns), "one function draws one figure"
    assert all(f.command in registry.COMMANDS for f in registry.FIGURES.values())
    assert registry.entry("sweep_dropout") == registry.FIGURES[registry.SWEEP]
    assert registry.names("grid")[-1] == "weight_norms" and registry.SWEEP not in registry.names("grid")


def test_registry_imports_no_matplotlib_pandas_or_torch():
    code = ("import sys, workflows.plots.registry; "
            "print(sorted(m for m in ('matplotlib', 'seaborn', 'pandas', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


SKIP_DIRS = {"tests", "work", "results", "figures", "logs", "build", "dist", "node_modules", "__pycache__"}


def test_savefig_is_called_only_inside_workflows_plots():
    hits = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for f in files:
            if f.endswith((".py", ".smk")) or f == "Snakefile":
                path = Path(root) / f
                if re.search(r"\bsavefig\b", path.read_text(errors="replace")):
                    hits.append(path.relative_to(REPO))
    assert hits, "the search found no savefig at all"
    outside = [p for p in hits if p.parts[:2] != ("workflows", "plots")]
    assert not outside, f"savefig outside workflows/plots: {outside}"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("res"), make_grid(FULL), {("post_norm", 0.1): 12})


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_grid_figures_rendered_twice_are_byte_identical(results, tmp_path):
    """loss_by_variant and throughput jitter their dots (seaborn draws from numpy's global generator): drawn
    under a fixed seed they do not depend on the generator's state, which they leave as they found it."""
    from workflows.plots import render, tables

    d = tables.load(results, results / "grid.json")
    d.unigram_entropy = UNIGRAM
    names = ["loss_by_variant", "throughput", "loss_vs_lr"]
    out = {}
    for k, seed in enumerate((1, 2)):
        np.random.seed(seed)
        state = np.random.get_state()[1].copy()
        assert render.render(d, tmp_path / str(k), names) == {}
        assert (np.random.get_state()[1] == state).all(), "the global generator was left changed"
        out[k] = _bytes(tmp_path / str(k))
    assert sorted(out[0]) == sorted(f"{n}.{fmt}" for n in names for fmt in registry.FORMATS)
    for name in out[0]:
        assert out[0][name] == out[1][name], name
    for name, b in out[0].items():
        assert (b"CreationDate" not in b) if name.endswith(".pdf") else (b"Software" not in b), name


def test_claims_forest_rendered_twice_is_byte_identical(results, tmp_path):
    """The forest is saved like every figure: PNG and PDF without timestamps or version strings."""
    import pandas as pd

    from workflows.plots import claims as claim_plots

    runs = pd.read_parquet(results / "runs.parquet")
    df = claims.evaluate(REPO / "config" / "claims.yaml", claims.Evidence(runs, {}))
    for k in (0, 1):
        paths = claim_plots.write_forest(df, tmp_path / str(k) / "claims.png", runs, "baseline")
        assert [p.name for p in paths] == ["claims.png", "claims.pdf"]
    a, b = _bytes(tmp_path / "0"), _bytes(tmp_path / "1")
    assert a == b
    assert b"CreationDate" not in a["claims.pdf"] and b"Software" not in a["claims.png"]
