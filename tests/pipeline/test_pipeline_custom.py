"""The pipeline on a tiny grid whose variants are a user's module (the lecture notes' LayerNorm from
examples/, and an FFN from a test package), norm='batchnorm' and final_norm=False: each trains like any
other variant, runs.csv holds the axis values as strings, and a custom variant's metrics.json carries its
parity report (``custom_modules``)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LECTURE = "examples.lecture_norms:LectureLayerNorm"
RELU = "tests.usermods.modules:ReluMLP"

pytestmark = pytest.mark.slow


def test_custom_modules_batchnorm_and_final_norm_train_through_the_pipeline(tmp_path, corpus, work):
    grid = {
        "name": "custom", "threads": 1, "seeds": [0], "lrs": [0.01], "baseline": "baseline",
        "data": {"source": str(corpus / "*.txt"), "tokenizer": "bytes"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 32, "norm": "layernorm",
                  "bias": True},
        "train": {"steps": 12, "batch_size": 4, "warmup_steps": 2, "eval_every": 6, "eval_windows": 8,
                  "log_every": 3, "stats_every": 6, "checkpoint_every": 0, "timing_warmup_steps": 2},
        "variants": {
            "baseline": {"family": "baseline"},
            "lecture_norm": {"family": "norm", "model": {"norm": LECTURE, "ffn": RELU}},
            "batchnorm": {"family": "norm", "model": {"norm": "batchnorm"}},
            "no_final_norm": {"family": "norm", "model": {"final_norm": False}},
        },
    }
    cfg = tmp_path / "custom.yaml"
    cfg.write_text(yaml.safe_dump(grid, sort_keys=False))
    wd = tmp_path / "wd"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(wd),
           "--configfile", str(cfg), "--cores", "2", "--config", f"work={work}", "--", "results/runs.csv"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = pd.read_csv(wd / "results" / "runs.csv").set_index("variant")
    assert list(runs.index) == list(grid["variants"])
    assert runs.loc["lecture_norm", "norm"] == LECTURE and runs.loc["lecture_norm", "ffn"] == RELU
    assert runs.loc["batchnorm", "norm"] == "batchnorm"
    assert runs.loc["no_final_norm", "final_norm"] in (False, "False")
    assert runs["final_val_loss"].map(math.isfinite).all()
    # the no-final-norm variant has no final norm parameters: 2·d fewer than the baseline
    assert runs.loc["baseline", "params"] - runs.loc["no_final_norm", "params"] == 2 * 32
    metrics = {v: json.loads(next((wd / "results" / "runs" / v).rglob("metrics.json")).read_text())
               for v in grid["variants"]}
    report = metrics["lecture_norm"]["custom_modules"]
    assert [(r["field"], r["value"], r["builtin"], r["input_scale"]) for r in report] == [
        ("norm", LECTURE, "layernorm", 1.0), ("norm", LECTURE, "layernorm", 1e-3),
        ("ffn", RELU, "relu", 1.0), ("ffn", RELU, "relu", 1e-3)]
    norm_rows = [r for r in report if r["field"] == "norm"]
    assert all(r["max_abs_diff"] > 1e-3 for r in norm_rows)  # the notes' LayerNorm is not torch's
    assert all(r["max_abs_diff"] == 0.0 for r in report if r["field"] == "ffn")  # ReluMLP is the built-in
    assert "custom_modules" not in metrics["baseline"]
