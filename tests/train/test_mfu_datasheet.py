"""MFU against both peaks: the measured matmul rate (``mfu``) and, for a known NVIDIA GPU in bf16/fp16, the
datasheet's dense bf16 peak (``mfu_datasheet``; NaN elsewhere), in a run's metrics and in runs.csv."""
from __future__ import annotations

import math

import pytest
import torch

from workflows.analysis import aggregate
from workflows.train import device as dev
from workflows.train import loop as T


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989), ("NVIDIA H100 PCIe", torch.bfloat16, 756),
    ("NVIDIA H100 NVL", torch.float16, 835), ("NVIDIA H200", torch.bfloat16, 989),
    ("NVIDIA H200 NVL", torch.bfloat16, 835), ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312),
    ("NVIDIA A100-PCIE-40GB", torch.bfloat16, 312),
    ("NVIDIA H100 80GB HBM3", torch.float32, None), ("NVIDIA GeForce RTX 4090", torch.bfloat16, None),
    ("AMD EPYC 7B13", torch.bfloat16, None),
])
def test_datasheet_peak_is_the_dense_bf16_number_of_known_gpus(name, dtype, tflops):
    sheet = dev.datasheet_peak(name, dtype)
    assert (sheet is None) if tflops is None else (sheet["flops"] == tflops * 1e12 and "dense" in sheet["source"])


def run_cfg(corpus):
    return T.RunConfig.from_dict({
        "variant": "g", "seed": 0, "data": {"source": str(corpus / "*.txt")},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "context_length": 16},
        "train": {"steps": 8, "batch_size": 4, "warmup_steps": 1, "eval_every": 8, "eval_windows": 4, "log_every": 4,
                  "stats_every": 0, "checkpoint_every": 0, "timing_warmup_steps": 1, "final_eval_windows": 4}})


def test_a_run_reports_mfu_against_both_peaks(corpus, work, tmp_path, monkeypatch):
    cfg = run_cfg(corpus)
    m = T.train(cfg, tmp_path / "cpu", work, threads=1)  # the CPU in fp32: no datasheet peak
    assert math.isfinite(m["mfu"]) and m["mfu_datasheet"] is None and m["peak_flops_datasheet"] is None
    row, _ = aggregate.run_row(tmp_path / "cpu", {"variants": {}})
    assert math.isnan(row["mfu_datasheet"]) and math.isnan(row["peak_flops_datasheet"])

    monkeypatch.setattr(dev, "datasheet_peak", lambda name, dtype: {"flops": 1e9, "source": "a test sheet, dense"})
    m = T.train(cfg, tmp_path / "sheet", work, threads=1)
    assert m["mfu_datasheet"] == pytest.approx(m["tokens_per_s"] * m["flops_per_token"] / 1e9)
    assert m["mfu"] == pytest.approx(m["tokens_per_s"] * m["flops_per_token"] / m["peak_flops"])  # still measured
    assert "mfu_datasheet" in m["mfu_note"]
    row, _ = aggregate.run_row(tmp_path / "sheet", {"variants": {}})
    assert row["mfu_datasheet"] == pytest.approx(m["mfu_datasheet"]) and row["peak_flops_datasheet"] == 1e9
