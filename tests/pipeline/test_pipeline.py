"""End to end: the Snakefile on a micro grid in a temporary folder, a kill and resume, targeted
re-runs after a config change, and bad configs stopped before any job runs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflows.claims.verdict import VERDICTS

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "config" / "micro.yaml"
FIGURES = ["loss_by_variant", "loss_vs_lr", "divergence_heatmap", "throughput", "loss_curves", "activations",
           "grad_norms", "attn_logits"]

pytestmark = pytest.mark.slow


def smk(workdir: Path, configfile: Path, work: Path, *extra, check=True, **popen):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", "--config", f"work={work}", *extra]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned_train_jobs(proc) -> set[str]:
    """The variant of every train job a dry run plans (one job trains all of a variant's runs)."""
    out = proc.stdout + proc.stderr
    jobs = set()
    for block in out.split("rule train:")[1:]:
        for line in block.splitlines():
            if line.strip().startswith("wildcards:"):
                kv = dict(p.strip().split("=") for p in line.split(":", 1)[1].split(","))
                jobs.add(kv["variant"])
                break
    return jobs


@pytest.fixture(scope="module")
def grid():
    return yaml.safe_load(MICRO.read_text())


def test_micro_pipeline_kill_resume_and_outputs(tmp_path, work, grid):
    wd = tmp_path / "wd"
    wd.mkdir()
    # the micro grid with runs long enough to be caught between checkpoints
    grid = {**grid, "train": {**grid["train"], "steps": 120, "checkpoint_every": 20, "eval_every": 40}}
    micro = tmp_path / "micro.yaml"
    micro.write_text(yaml.safe_dump(grid, sort_keys=False))
    n_runs = len(grid["variants"]) * len(grid["seeds"]) * len(grid["lrs"])
    # 1. start; once a run has finished and another is between checkpoints, kill snakemake and its jobs
    #    (as a crash or `kill -9` would)
    stores_before = set((work / "runs").glob("*"))
    proc = smk(wd, micro, work, start_new_session=True)
    deadline = time.time() + 600
    published = {}
    while time.time() < deadline and proc.poll() is None:
        done = list(wd.glob("results/runs/*/seed*/lr*/metrics.json"))
        if done and set((work / "runs").glob("*/checkpoint.pt")) - {p / "checkpoint.pt" for p in stores_before}:
            os.killpg(proc.pid, signal.SIGKILL)
            published = {p: p.read_text() for p in wd.glob("results/runs/*/seed*/lr*/metrics.json")}
            break
        time.sleep(0.05)
    assert published, "pipeline finished before it could be killed mid-run: " + proc.stdout.read()[-2000:]
    proc.wait()
    assert 1 <= len(published) < n_runs
    for text in published.values():  # a killed job leaves no half-written metrics.json
        json.loads(text)
    # 2. resume: unlock (snakemake's own lock survives a kill -9), then the same command again. Snakemake
    #    deletes the outputs of the cut-off jobs; their finished runs come back from the run stores
    #    unchanged (same wall time, same end time: not retrained) and the cut-off run resumes.
    smk(wd, micro, work, "--unlock")
    smk(wd, micro, work, "--rerun-incomplete")
    for p, text in published.items():
        assert p.read_text() == text, f"finished run was recomputed: {p}"
    resumed = [json.loads(p.read_text())["resumed_segments"] for p in wd.glob("results/runs/*/seed*/lr*/metrics.json")]
    assert max(resumed) == 2, "no run resumed from its checkpoint"
    assert set((work / "runs").glob("*")) <= stores_before, "completed jobs leave no run stores behind"
    # 3. every table parses and has one row per run / variant
    res = wd / "results"
    runs = pd.read_parquet(res / "runs.parquet")
    assert len(runs) == n_runs and len(pd.read_csv(res / "runs.csv")) == n_runs
    for col in ["variant", "norm_position", "norm", "ffn", "block", "position", "qk_norm", "seed", "lr",
                "final_val_loss", "final_val_bpb", "init_loss", "diverged", "diverged_step", "tokens_per_s", "mfu",
                "peak_mem_mb", "params", "nonembed_params", "flops_per_token", "device", "git_commit"]:
        assert col in runs.columns, col
    summary = pd.read_csv(res / "summary.csv")
    assert list(summary.variant) == list(grid["variants"])
    assert summary.set_index("variant").loc["baseline", "speed_ratio"] == pytest.approx(1.0)
    assert "Δ vs baseline" in (res / "summary.md").read_text()
    assert "\\begin{tabular}" in (res / "summary.tex").read_text()
    hist = pd.read_parquet(res / "history.parquet")
    assert set(hist.variant) == set(grid["variants"])
    assert json.loads((res / "grid.json").read_text())["baseline"] == "baseline"
    import matplotlib.image as mpimg

    for name in FIGURES:
        for ext in ("png", "pdf"):
            f = wd / "figures" / f"{name}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
        assert mpimg.imread(wd / "figures" / f"{name}.png").ndim == 3
    claims = pd.read_csv(res / "claims.csv")
    assert set(VERDICTS) >= set(claims.verdict)
    assert (res / "claims_trajectory.csv").exists() and (res / "ngram.json").exists()
    # 4. nothing left to do
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(smk(wd, micro, work, "-n"))
    # 5. changing one axis of one variant re-runs exactly that variant's runs
    changed = dict(grid)  # the grid of this test (longer runs), post_norm changed
    changed["variants"] = {**grid["variants"], "post_norm": {"family": "norm position",
                                                              "model": {"norm_position": "sandwich"}}}
    cfg2 = tmp_path / "changed.yaml"
    cfg2.write_text(yaml.safe_dump(changed))
    jobs = planned_train_jobs(smk(wd, cfg2, work, "-n"))
    assert jobs == {"post_norm"}


@pytest.mark.parametrize("patch, message", [
    ({"variants": {"baseline": {"model": {"norm": "groupnorm"}}}}, "norm='groupnorm' is not allowed"),
    ({"variants": {"baseline": {"model": {"norm": "tests.usermods.modules:Nope"}}}},
     "module 'tests.usermods.modules' has no class 'Nope'"),
    ({"variants": {"baseline": {"model": {"n_kv_heads": 3}}}}, "n_kv_heads=3 must divide n_heads"),
    ({"variants": {"baseline": {"train": {"warmup": 3}}}}, "unknown train config field(s) ['warmup']"),
    ({"seeds": [-1]}, "seeds"),
    ({"seed_offset": -1}, "seed_offset"),
    ({"seed_offset": 2.5}, "seed_offset"),
    ({"lrs": "0.1"}, "lrs"),
    ({"baseline": "nope"}, "baseline='nope' is not one of the variants"),
    ({"variants": {"bad name!": {}}}, "bad name!"),
])
def test_bad_config_stops_before_any_job(tmp_path, work, grid, patch, message):
    cfg = dict(grid)
    for k, v in patch.items():
        cfg[k] = {**grid[k], **v} if isinstance(v, dict) and k == "variants" and "baseline" in v else v
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(cfg))
    proc = smk(tmp_path, f, work, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out, out[-3000:]
    assert not (tmp_path / "results").exists()
