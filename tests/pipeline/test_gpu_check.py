"""workflows/cluster/gpu-check.sh in its CPU mode: the proof a GPU machine runs (environment, the GPU tests,
the peak, the training-step bench, the memory estimates, a small grid through the gpu profile with its speed
bench, and the check of what the grid wrote), at tiny sizes on the CPU, ending in one summary.json with every
step's outcome (where the repository's work/downloads lacks the corpus wheel, the data build fetches it).
A few minutes on 2 cores: marked slow (selected by default; `-m "not slow"` leaves it out)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "workflows/cluster/gpu-check.sh"
STEPS = ["pytest-gpu", "peak", "corpus", "bench", "memory", "grid", "grid-check"]


def venv_python() -> Path | None:
    py = REPO / ".venv/bin/python"
    return py if py.exists() else None


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_step_and_writes_its_summary(tmp_path):
    py = venv_python()
    if py is None:
        pytest.skip("no .venv (bash .ci/setup test)")
    env = {**os.environ, "ARCHBENCH_GPU_CHECK_CPU": "1", "GPU_CHECK_PYTHON": str(py)}
    env.pop("ARCHBENCH_TEST_WORK", None)
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=540)
    out = proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    outcomes = {s["name"]: s["status"] for s in summary["steps"]}
    assert proc.returncode == 0 and summary["status"] == "pass", (outcomes, out[-4000:])
    assert summary["mode"] == "cpu" and list(outcomes) == STEPS and set(outcomes.values()) == {"pass"}
    assert all(s["seconds"] <= s["timeout_s"] for s in summary["steps"])
    env_ok = summary["environment"]
    assert env_ok["torch"]["ok"] is True
    assert env_ok["cc"]["ok"] is any(shutil.which(c) for c in ("cc", "gcc", "clang"))
    assert "nvidia-smi" in env_ok and "Python.h" in env_ok
    peak = json.loads((tmp_path / "out/peak.json").read_text())
    assert {r["dtype"] for r in peak} == {"float32", "bfloat16"}
    assert all(r["measurement"]["seconds"] <= 2 * r["measurement"]["budget_s"] for r in peak)
    check = (tmp_path / "out/grid-check.log").read_text()
    assert "ok: 4 runs and the speed bench on" in check


def test_gpu_check_reports_every_step_when_a_step_fails(tmp_path):
    """A step that fails does not stop the others: with a Python that has no torch, every step is reported
    (failed or skipped) and summary.json is still written, naming what was missing."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPU_CHECK_PYTHON": "/usr/bin/false",
           "GPU_CHECK_CORPUS": str(tmp_path / "no-corpus"), "ARCHBENCH_GPU_CHECK_CPU": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["status"] == "fail" and "torch" in summary["missing"] and "Python.h" in summary["missing"]
    steps = {s["name"]: s["status"] for s in summary["steps"]}
    assert {"pytest-gpu", "peak", "bench", "memory", "grid", "grid-check"} <= set(steps)
    assert set(steps.values()) <= {"skipped", "fail"}
    assert "MISSING Python.h:" in proc.stdout and "Triton" in proc.stdout
