"""The statistics contract (models/statistics.py): a run records exactly the declared statistics, at the declared
steps and (layer, site) rows, for serial and parallel blocks, tied and untied heads; the aggregate derives each
declared run-table column from its statistic and from nothing else; every (kind, metric) the aggregate, the
figures and the claims read is declared; the declaration imports without torch."""
from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from models import ModelConfig
from models import statistics as S
from workflows.analysis import aggregate
from workflows.plots import layers
from workflows.train import loop as T

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"steps": 12, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_every": 5, "eval_windows": 4,
         "log_every": 4, "stats_every": 5, "checkpoint_every": 0, "timing_warmup_steps": 2}
MODELS = {"serial": {}, "parallel_untied": {"block": "parallel", "position": "learned", "tie_embeddings": False}}


def run_dict(corpus, **model):
    return {"variant": "t", "seed": 0, "data": {"source": str(corpus / "*.txt")},
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 16, **model}, "train": TRAIN}


def steps_of(stat: S.Statistic, tc) -> list[int]:
    """The steps ``stat`` is recorded at (its ``when``) in a run of ``tc`` that does not diverge."""
    if stat.when == S.EVERY_STEP:
        return list(range(tc.steps))
    if stat.when == S.EVAL_STEPS:
        return sorted({0, tc.steps, *range(tc.eval_every, tc.steps, tc.eval_every)})
    if stat.when == S.STATS_STEPS:
        return list(range(0, tc.steps, tc.stats_every)) if tc.stats_every else []
    raise ValueError(stat.when)


def declared_rows(cfg) -> set[tuple]:
    return {(step, s.kind, s.name, layer, site) for s in S.STATISTICS.values()
            for step in steps_of(s, cfg.train) for layer, site in S.places(s, cfg.model)}


@pytest.fixture(scope="module", params=list(MODELS))
def run(request, corpus, work, tmp_path_factory):
    cfg = T.RunConfig.from_dict(run_dict(corpus, **MODELS[request.param]))
    out = tmp_path_factory.mktemp(request.param)
    T.train(cfg, out, work, threads=1)
    return cfg, out, pd.read_parquet(out / "history.parquet")


def test_declaration_is_well_formed():
    assert all(key == s.key for key, s in S.STATISTICS.items())
    for s in S.STATISTICS.values():
        assert s.where in (S.RUN, S.LAYER, S.RESIDUAL, S.WEIGHTS) and s.when in (S.EVERY_STEP, S.EVAL_STEPS,
                                                                                  S.STATS_STEPS), s
        assert s.unit and s.description, s
    columns = [c for s in S.STATISTICS.values() for c in s.columns]
    assert len(columns) == len(set(columns))  # one statistic per derived column
    # the figures' site tables cover the declared sites
    assert set(layers.WHOLE_MODEL_SITES) == set(S.WEIGHT_SITES)
    assert {S.EMBED, *(x for sites in S.BLOCK_SITES.values() for x in sites)} <= set(layers.SITE_ORDER)


def test_a_run_records_exactly_the_declared_statistics(run):
    cfg, _, h = run
    rows = list(zip(h.step, h.kind, h.metric, h.layer, h.site))
    assert len(rows) == len(set(rows))  # one value per (step, statistic, layer, site)
    got, want = set(rows), declared_rows(cfg)
    assert not got - want, f"recorded but not declared in models/statistics.py: {sorted(got - want)[:5]}"
    assert not want - got, f"declared but not recorded: {sorted(want - got)[:5]}"
    assert set(zip(h.kind, h.metric)) == set(S.STATISTICS)


def test_aggregate_derives_each_declared_column_from_its_statistic(run):
    _, _, h = run
    full = aggregate.derived_columns(h)
    assert set(full) == {c for s in S.STATISTICS.values() for c in s.columns}
    assert all(math.isfinite(v) for v in full.values()), full
    for s in S.STATISTICS.values():  # without the statistic's rows its columns are NaN (or absent), the rest stay
        without = aggregate.derived_columns(h[~((h.kind == s.kind) & (h.metric == s.name))])
        for c, v in full.items():
            if c in s.columns:
                assert math.isnan(without.get(c, math.nan)), (s.key, c)
            else:
                assert without[c] == v, (s.key, c)


def test_aggregate_run_row_holds_the_derived_columns(run):
    cfg, out, h = run
    grid = {"variants": {cfg.variant: {"family": "t"}}}
    row, _ = aggregate.run_row(out, grid)
    assert {k: row[k] for k in aggregate.derived_columns(h)} == aggregate.derived_columns(h)


# ---- what the readers of the history name --------------------------------------------------------------
def _is_column(node, column: str) -> bool:
    """``x.<column>`` or ``x["<column>"]``."""
    if isinstance(node, ast.Attribute):
        return node.attr == column
    return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == column


def _strings(node) -> set[str]:
    """A string literal, or those of a literal list / tuple / set (not a lookup such as ``c["metric"]``)."""
    items = node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else [node]
    return {n.value for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _compared(node, column: str) -> set[str]:
    """The string literals ``node`` compares the column with: ``x.column == "…"``, ``x.column.isin([...])``."""
    out = set()
    for n in ast.walk(node):
        if (isinstance(n, ast.Compare) and len(n.ops) == 1 and isinstance(n.ops[0], ast.Eq)
                and _is_column(n.left, column)):
            out |= _strings(n.comparators[0])
        elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "isin"
              and _is_column(n.func.value, column) and n.args):
            out |= _strings(n.args[0])
    return out


def literal_reads(source: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(kind, metric) pairs a module selects by string literals in one ``&`` expression, and every metric
    literal it compares a ``metric`` column with."""
    pairs = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
            pairs |= {(k, m) for k in _compared(node, "kind") for m in _compared(node, "metric")}
    return pairs, _compared(tree, "metric")


def test_the_scanner_sees_literal_reads():
    src = ('a = h[(h.kind == "layer") & (h.metric == "x")]\n'
           'b = h[((h.kind == "train") | (h.kind == "val")) & h.metric.isin(["y"])]\n'
           'c = h[h["metric"] == "z"]\n')
    pairs, metrics = literal_reads(src)
    assert pairs == {("layer", "x"), ("train", "y"), ("val", "y")} and metrics == {"x", "y", "z"}


@pytest.mark.parametrize("package", ["analysis", "plots", "claims", "train"])
def test_every_statistic_the_readers_name_is_declared(package):
    names = {s.name for s in S.STATISTICS.values()}
    for path in sorted((REPO / "workflows" / package).rglob("*.py")):
        pairs, metrics = literal_reads(path.read_text())
        assert pairs <= set(S.STATISTICS), (path.name, pairs - set(S.STATISTICS))
        assert metrics <= names, (path.name, metrics - names)


def test_the_declaration_imports_without_torch():
    code = "import sys, models.statistics\nassert 'torch' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_places_follow_the_model_config():
    cfg = ModelConfig(n_layers=3, block="parallel", position="learned", tie_embeddings=False)
    assert S.places(S.RESID_RMS, cfg) == [(-1, "embed"), (0, "attn+ffn"), (1, "attn+ffn"), (2, "attn+ffn")]
    assert S.places(S.WEIGHT_NORM, ModelConfig(n_layers=1)) == [(0, "attn"), (0, "ffn"), (-1, "embed")]
    assert S.places(S.WEIGHT_NORM, cfg)[-3:] == [(-1, "embed"), (-1, "pos"), (-1, "head")]
    assert S.places(S.GRAD_NORM, cfg) == [(0, ""), (1, ""), (2, "")] and S.places(S.LOGZ_MEAN, cfg) == [(-1, "")]
