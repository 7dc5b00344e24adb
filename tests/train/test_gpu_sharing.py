"""A shared GPU, recorded: the other compute processes on a run's GPU (workflows.train.device.gpu_neighbours, from NVML
or nvidia-smi, both stubbed here), sampled at a run's start, each evaluation and its end into its provenance, shown
in runs.csv, and a side-by-side speed bench that shared its GPU not judged by the speed claims."""
from __future__ import annotations

import math
import subprocess
import sys
import types

import pandas as pd
import pytest
import torch

from workflows.analysis import aggregate
from workflows.train import device as dev
from workflows.train import loop as T
from workflows.claims import Evidence, evaluate

CUDA = torch.device("cuda")  # a device object only: nothing here touches a GPU


def test_the_cpu_and_an_unlisted_gpu_record_none():
    assert dev.gpu_neighbours(torch.device("cpu")) is None
    assert dev.neighbour_summary([None, None, None]) is None
    assert dev.neighbour_summary([1, None, 3, 0]) == {"start": 1, "end": 0, "max": 3, "samples": 4, "known": 3}


def test_neighbours_from_the_nvml_listing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", types.ModuleType("pynvml"))
    listing = "GPU:0\nprocess      41234 uses     1500.000 MB GPU memory\nprocess      41301 uses      900.000 MB GPU memory"
    monkeypatch.setattr(torch.cuda, "list_gpu_processes", lambda device=None: listing)
    assert dev.gpu_neighbours(CUDA) == 1  # this process and one other
    monkeypatch.setattr(torch.cuda, "list_gpu_processes", lambda device=None: "GPU:0\nno processes are running")
    monkeypatch.setattr(dev, "_smi_pids", lambda d: [])
    assert dev.gpu_neighbours(CUDA) is None  # this process holds a context: an empty list cannot see processes
    monkeypatch.setattr(torch.cuda, "list_gpu_processes", lambda device=None: "cuda driver can't be loaded, is cuda enabled?")
    monkeypatch.setattr(dev, "_smi_pids", lambda d: None)
    assert dev.gpu_neighbours(CUDA) is None


def test_neighbours_from_nvidia_smi_count_only_this_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no pynvml: import fails, nvidia-smi is asked
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: types.SimpleNamespace(uuid="5f3c2a1e-0000-1111-2222-333344445555"))
    out = ("GPU-5f3c2a1e-0000-1111-2222-333344445555, 100\nGPU-5f3c2a1e-0000-1111-2222-333344445555, 200\n"
           "GPU-aaaaaaaa-0000-1111-2222-333344445555, 300\nGPU-5f3c2a1e-0000-1111-2222-333344445555, 400\n")
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(dev.subprocess, "run", run)
    assert dev.gpu_neighbours(CUDA) == 2  # 3 processes on this GPU (one of them this one); the other GPU's ignored
    assert calls and calls[0][:2] == ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid"]
    monkeypatch.setattr(dev.subprocess, "run", lambda cmd, **kw: (_ for _ in ()).throw(FileNotFoundError("nvidia-smi")))
    assert dev.gpu_neighbours(CUDA) is None


def run_dict(corpus):
    return {"variant": "g", "seed": 0, "data": {"source": str(corpus / "*.txt")},
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "context_length": 16},
            "train": {"steps": 8, "batch_size": 4, "warmup_steps": 1, "eval_every": 4, "eval_windows": 4,
                      "log_every": 4, "stats_every": 0, "checkpoint_every": 0, "timing_warmup_steps": 1,
                      "final_eval_windows": 4}}


def test_a_run_records_its_gpu_neighbours_and_runs_csv_shows_them(corpus, work, tmp_path, monkeypatch):
    cfg = T.RunConfig.from_dict(run_dict(corpus))
    T.train(cfg, tmp_path / "alone", work, threads=1)  # the CPU: nothing to record
    row, _ = aggregate.run_row(tmp_path / "alone", {"variants": {}})
    assert math.isnan(row["gpu_neighbours"]) and math.isnan(row["gpu_mem_fraction"])

    seen = iter([0, 0, 3, 1])  # start, evaluations at steps 0, 4 and 8 ... the stubbed CUDA listing
    calls = []
    monkeypatch.setattr(dev, "gpu_neighbours", lambda d: calls.append(d) or next(seen, 1))
    m = T.train(cfg, tmp_path / "shared", work, threads=1)
    nb = m["provenance"]["gpu_neighbours"]
    assert len(calls) == 5  # begin_run, the evaluations at steps 0, 4 and 8, and the end
    assert nb == {"start": 0, "end": 1, "max": 3, "samples": 5, "known": 5}
    row, _ = aggregate.run_row(tmp_path / "shared", {"variants": {}})
    assert row["gpu_neighbours"] == 3.0


def speed_rows(variant, rates, neighbours):
    return [{"variant": variant, "rep": i, "tokens_per_s": r, "device": "NVIDIA H100 80GB HBM3",
             "gpu_neighbours": neighbours} for i, r in enumerate(rates)]


def runs_of(variant):
    return [{"variant": variant, "seed": s, "lr": 0.01, "status": "ok", "final_val_loss": 2.0, "diverged": False,
             "init_loss": math.log(256), "tokens_per_s": 1000.0, "max_attn_logit": 5.0, "final_logz_mean": 3.0,
             "grad_spike_score": 0.0, "params": 10_000, "nonembed_params": 8_000, "tokens_seen": 50_000,
             "device": "NVIDIA H100 80GB HBM3", "attention": "gqa", "norm": "rmsnorm"} for s in range(3)]


@pytest.mark.parametrize("neighbours, judged", [(0.0, True), (math.nan, True), (2.0, False)])
def test_a_speed_bench_that_shared_its_gpu_is_not_judged(neighbours, judged):
    check = {"kind": "speed_ratio", "treatment": "t", "control": "c", "interval": [0.95, 1.05]}
    reg = {"claims": [{"id": "CX", "title": "t", "source": {"paper": "p"}, "published": "n",
                       "checks": [{"id": "a", "what": "w", **check}]}]}
    speed = speed_rows("t", [1000, 1010, 995, 1005], neighbours) + speed_rows("c", [1002, 1000, 1001, 998], 0.0)
    row = evaluate(reg, Evidence(pd.DataFrame(runs_of("t") + runs_of("c")), {}, speed=pd.DataFrame(speed))).iloc[0]
    if judged:
        assert row.verdict == "holds", row.reason
    else:
        assert row.verdict == "not judged" and "shared the GPU" in row.reason, row.reason
