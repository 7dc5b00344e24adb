"""No run trained twice: runs whose resolved configs are identical apart from the variant label are trained
once, by the first variant that names them, and filed under every variant that names them."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from models import ModelConfig, build
from workflows.grid.grid import Grid, load_pipeline_config, run_key

REPO = Path(__file__).resolve().parents[2]
MICRO = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
HPARAMS_ALIASES = ["ffn_ratio_4", "head_dim_16", "aspect_4", "dropout_0", "weight_decay_0.1", "grad_clip_1"]


def dup_grid() -> dict:
    """The micro grid with the baseline under a second name (spelling out what it leaves derived) and a
    post-norm variant repeated with one more LR: 7 runs named, 4 to train."""
    return {**MICRO, "variants": {
        "baseline": {"family": "baseline"},
        "same": {"family": "copy", "model": {"head_dim": 16, "n_kv_heads": 1}, "train": {"grad_clip": 1}},
        "post_norm": {"family": "norm position", "model": {"norm_position": "post"}, "lrs": [0.01]},
        "post2": {"family": "norm position", "model": {"norm_position": "post"}, "lrs": [0.01, 0.03]},
    }}


def test_identical_runs_are_trained_once_by_the_first_variant():
    g = Grid.from_config(dup_grid())
    d = g.dedup()
    assert (d["named"], d["trained"], d["aliases"]) == (7, 4, 3)
    assert d["alias_only"] == ["same"] and g.trained_variants() == ["baseline", "post_norm", "post2"]
    assert g.owner("same", 0, 0.1) == ("baseline", 0, 0.1) and g.is_alias("same", 0, 0.01)
    assert g.owner("post2", 0, 0.01) == ("post_norm", 0, 0.01) and not g.is_alias("post2", 0, 0.03)
    assert g.job_runs("same") == [] and [r["train"]["lr"] for r in g.job_runs("post2")] == [0.03]
    assert g.job_steps("post2") == MICRO["train"]["steps"]
    assert {(a["variant"], a["trained_by"]) for a in d["shared"]} == {("same", "baseline"), ("post2", "post_norm")}
    assert g.summary()["dedup"]["trained"] == 4
    line = g.dedup_line()
    assert "\n" not in line and "7 runs named, 4 trained, 3 shared" in line and "same<-baseline" in line


def test_different_runs_are_not_shared():
    cfg = dup_grid()
    cfg["variants"]["same"]["model"]["head_dim"] = 8  # a real change
    assert Grid.from_config(cfg).owner("same", 0, 0.1) == ("same", 0, 0.1)
    g = Grid.from_config(MICRO)
    keys = {run_key(g.run_dict(v, s, lr)) for v in g.variants for s, lr in g.variant_runs(v)}
    assert len(keys) == 8 and g.dedup()["aliases"] == 0
    base = g.run_dict("baseline", 0, 0.01)
    for change in ({"seed": 1}, {"train": {**base["train"], "lr": 0.011}}, {"data": {**base["data"], "tokenizer": "bpe"}}):
        assert run_key({**base, **change}) != run_key(base), change
    assert run_key({**base, "variant": "other"}) == run_key(base)


def test_hparams_grid_shares_the_base_config_runs():
    """config/hparams.yaml names the base config in six sweeps: 54 of its 225 runs are repeats."""
    g = Grid.from_config(load_pipeline_config(REPO / "config" / "hparams.yaml"))
    d = g.dedup()
    assert (d["named"], d["trained"], d["aliases"]) == (225, 171, 54)
    assert d["alias_only"] == HPARAMS_ALIASES
    assert {a["trained_by"] for a in d["shared"]} == {"baseline"}
    # null and the value it stands for (head_dim, d_ff), 1 and 1.0 (grad_clip): one model, one run
    torch.manual_seed(0)
    ref = build(ModelConfig.from_dict({**g.run_dict("baseline", 0, 0.001)["model"], "vocab_size": 256})).state_dict()
    for v in HPARAMS_ALIASES:
        torch.manual_seed(0)
        sd = build(ModelConfig.from_dict({**g.run_dict(v, 0, 0.001)["model"], "vocab_size": 256})).state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd), v


def test_committed_hparams_reference_repeats_are_bit_identical():
    """The reference run trained the 54 repeats separately: they ended exactly where the baseline did."""
    runs = pd.read_csv(REPO / "results" / "reference" / "cpu-hparams" / "runs.csv")
    base = runs[runs.variant == "baseline"].set_index(["seed", "lr"]).sort_index()
    for v in HPARAMS_ALIASES:
        r = runs[runs.variant == v].set_index(["seed", "lr"]).sort_index()
        assert (r.final_val_loss == base.final_val_loss).all(), v


def test_pipeline_plans_one_train_job_per_variant_with_runs_of_its_own(tmp_path):
    cfg = {**dup_grid(), **{k: str(tmp_path / k) for k in ("results", "figures", "logs", "work")}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(path), "--cores", "1"],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "archbench grid 'micro': 7 runs named, 4 trained, 3 shared" in out  # the start-up line
    jobs = {line.split("variant=")[1].strip() for line in out.splitlines() if "wildcards: variant=" in line}
    assert jobs == {"baseline", "post_norm", "post2"}
    res = tmp_path / "results"
    post2 = next(line for line in out.splitlines() if "-m workflows.train " in line and '"variant": "post2"' in line)
    assert f"--out {res}/runs/post2/seed0/lr0.03 --work" in post2  # only its own run
    agg = next(line for line in out.splitlines() if "workflows.analysis.aggregate" in line)
    assert (f"--runs {res}/runs/baseline/seed0/lr0.01 {res}/runs/baseline/seed0/lr0.1 "
            f"same={res}/runs/baseline/seed0/lr0.01 same={res}/runs/baseline/seed0/lr0.1 "
            f"{res}/runs/post_norm/seed0/lr0.01 post2={res}/runs/post_norm/seed0/lr0.01 "
            f"{res}/runs/post2/seed0/lr0.03 --out") in agg
    # asking for the folder of a variant without runs of its own finds no job
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(path), "--cores", "1", str(res / "runs" / "same")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0


@pytest.mark.slow
def test_pipeline_trains_a_shared_run_once_and_files_it_under_both_names(tmp_path, work):
    """End to end on the micro scale: the copy of the baseline has no train job and no run folder, and
    every table holds its rows with its own name and family and the baseline's numbers."""
    wd = tmp_path / "wd"
    wd.mkdir()
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(dup_grid(), sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(wd),
                           "--configfile", str(path), "--cores", "2", "--config", f"work={work}"],
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    res = wd / "results"
    trained = sorted(p.parent.relative_to(res / "runs").as_posix() for p in res.glob("runs/*/seed*/lr*/metrics.json"))
    assert trained == ["baseline/seed0/lr0.01", "baseline/seed0/lr0.1", "post2/seed0/lr0.03", "post_norm/seed0/lr0.01"]
    assert not (wd / "logs" / "train" / "same.log").exists()
    runs = pd.read_parquet(res / "runs.parquet")
    assert len(runs) == 7 and len(pd.read_csv(res / "runs.csv")) == 7
    assert list(runs.variant.unique()) == ["baseline", "same", "post_norm", "post2"]
    assert set(runs[runs.variant == "same"].family) == {"copy"}
    key = ["seed", "lr"]
    numbers = [c for c in runs.columns if c not in ("variant", "family", "run_dir")]
    pairs = [("baseline", "same"), ("post_norm", "post2")]
    for a, b in pairs:
        ra, rb = (runs[runs.variant == v].drop(columns=["variant", "family", "run_dir"]) for v in (a, b))
        m = ra.merge(rb, on=key, suffixes=("_a", "_b"))
        assert len(m) == (2 if b == "same" else 1)
        for c in numbers:
            if c not in key:
                assert m[f"{c}_a"].equals(m[f"{c}_b"]) or (m[f"{c}_a"].isna() & m[f"{c}_b"].isna()).all(), (b, c)
    hist = pd.read_parquet(res / "history.parquet")
    ha, hb = (hist[hist.variant == v].drop(columns="variant").reset_index(drop=True) for v in ("baseline", "same"))
    assert len(ha) and ha.equals(hb)
    assert set(hist.variant) == {"baseline", "same", "post_norm", "post2"}
    summary = pd.read_csv(res / "summary.csv").set_index("variant")
    assert list(summary.index) == ["baseline", "same", "post_norm", "post2"]
    assert summary.loc["same", "final_loss"] == summary.loc["baseline", "final_loss"]
    assert summary.loc["same", "runs"] == 2 and summary.loc["post2", "runs"] == 2
    grid = json.loads((res / "grid.json").read_text())
    assert grid["dedup"]["trained"] == 4 and grid["seed_offset"] == 0
    assert "Nothing to be done" in subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory", str(wd),
         "--configfile", str(path), "--cores", "2", "--config", f"work={work}"], capture_output=True, text=True).stdout
