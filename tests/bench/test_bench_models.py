"""pytest-benchmark: one training step (forward + backward) per value of every architecture axis,
on a small model (d 64, L 2, B 8, T 64). Each benchmark records in ``extra_info`` the ratio of its
median to the median of the baseline (the default config), timed once per module in this process.

The default run (``--benchmark-disable`` in pyproject) executes each step once, untimed, as a smoke
test; time them with
    python -m pytest tests/bench/test_bench_models.py --benchmark-enable
(or ``--benchmark-only`` where addopts has ``--benchmark-skip``).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import models  # noqa: E402
from models import CHOICES, ModelConfig  # noqa: E402

pytestmark = pytest.mark.benchmark

B, T = 8, 64
BASE = ModelConfig(vocab_size=256, context_length=T, d_model=64, n_layers=2, n_heads=4)
ROUNDS, WARMUP = 50, 5

AXIS_VALUES = [(axis, v) for axis, vals in CHOICES.items() for v in vals]
AXIS_VALUES += [(axis, v) for axis in ("bias", "qk_norm", "residual", "tie_embeddings") for v in (False, True)]
AXIS_VALUES += [("attn_softcap", None), ("attn_softcap", 30.0), ("final_softcap", None), ("final_softcap", 30.0),
                ("n_kv_heads", None), ("n_kv_heads", 2), ("n_kv_heads", 1), ("dropout", 0.0), ("dropout", 0.1)]


def make_step(cfg: ModelConfig):
    torch.manual_seed(0)
    model = models.build(cfg).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        loss.backward()
        return loss

    return model, step


@pytest.fixture(scope="module")
def baseline_median() -> float:
    """Median seconds of one step of the default config, timed with perf_counter in this process."""
    _, step = make_step(BASE)
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.mark.parametrize("axis,value", AXIS_VALUES, ids=[f"{a}={v}" for a, v in AXIS_VALUES])
def test_bench_forward_backward(benchmark, request, axis, value):
    cfg = BASE.replace(**{axis: value})
    model, step = make_step(cfg)
    benchmark.group = axis
    benchmark.extra_info.update(axis=axis, value=repr(value), short_name=cfg.short_name(),
                                params=models.count_params(model)["total"])
    loss = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert torch.isfinite(loss)
    if benchmark.disabled:  # default run: the step ran once, untimed
        return
    baseline_median = request.getfixturevalue("baseline_median")
    benchmark.extra_info["baseline_median_s"] = baseline_median
    ratio = benchmark.stats.stats.median / baseline_median
    benchmark.extra_info["ratio_to_baseline"] = ratio
    # no bound on the ratio itself: on a shared 2-core machine timings swing several-fold under load
    assert ratio > 0 and ratio == ratio
