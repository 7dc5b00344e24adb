"""Training-step benchmark: tokens/s, MFU, the share of step time spent outside
forward + backward + optimizer, and the slowdown from per-layer statistics.

    python -m workflows.bench                       # CPU sizes
    python -m workflows.bench --sizes gpt2-small    # on a GPU: d 768, 12 layers, T 1024, bf16, compile
    python -m workflows.bench --json out.json
    python -m workflows.bench --peak                # sustained peak matmul FLOP/s, measured now (not cached)

Every number is a ratio or rate taken side by side in one process: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from models import flops_per_token
from workflows.io import write_json
from workflows.train import device as dev
from workflows.train import step as S
from workflows.train.loop import Job, RunConfig, make_optimizer
from workflows.train.measure import layer_params, layer_snapshot

SIZES = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, context_length=128),
    "small": dict(d_model=128, n_layers=4, n_heads=4, context_length=128),
    "medium": dict(d_model=384, n_layers=6, n_heads=6, context_length=128),
    "gpt2-small": dict(d_model=768, n_layers=12, n_heads=12, context_length=1024),
}
GPT2_AXES = dict(norm="layernorm", bias=True, ffn="gelu_tanh", position="learned", tie_embeddings=True)


class Bench:
    """One model of a benchmark size with its optimizer, stepped outside the training loop."""

    def __init__(self, size: str, batch_size: int, work: str, stats_every: int, compile_: str):
        self.cfg = RunConfig.from_dict({
            "variant": f"bench-{size}", "seed": 0, "model": {**SIZES[size], **GPT2_AXES},
            "train": {"steps": 10**4, "batch_size": batch_size, "stats_every": stats_every, "checkpoint_every": 0,
                      "eval_every": 10**9, "log_every": 10, "compile": compile_}})
        self.job = Job(self.cfg, Path(work), Path(work) / "device" / "peak_flops.json")
        self.model, _ = self.job.model_for(self.cfg)
        self.job.begin_run(self.cfg)  # as in training: on CUDA the batch offsets go to the device once
        self.opt = make_optimizer(self.model, self.cfg.train)
        self.scaler = S.grad_scaler(self.job.device, self.job.dtype)  # an fp16 run's loss scaler, as in training

    def step(self, step: int, phase=None) -> None:
        """One training step of workflows.train.loop.fit (workflows.train.step.train_step on the job's batch,
        compiled forward + loss), statistics included when due (the gradient snapshot the loop takes); the
        LR stays ``train.lr``. ``phase``: the step's per-phase context managers (``phase_times``)."""
        tc = self.cfg.train
        x, y = self.job.batch(self.cfg, step)
        stats = tc.stats_every > 0 and step % tc.stats_every == 0
        on_grads = None
        if stats:
            def on_grads():
                layer_snapshot(layer_params(self.model))
        S.train_step(self.model, self.opt, x, y, tc, loss_fn=self.job.loss_fn, dtype=self.job.dtype, stats=stats,
                     scaler=self.scaler, on_grads=on_grads, phase=phase)


def time_steps(b: Bench, steps: int, warmup: int) -> list[float]:
    """Seconds of each step after ``warmup``, timed as the training loop times them (workflows.train.device.StepClock:
    the host clock on CPU; CUDA events on a GPU, read after the last step, so the host never waits per step)."""
    clock, ticks = dev.StepClock(b.job.device), []
    for step in range(warmup + steps):
        tick = clock.start()
        b.step(step)
        tick = clock.stop(tick)
        if step >= warmup:
            ticks.append(tick)
    clock.settle()
    return [clock.seconds(t) for t in ticks]


def peak_rows(device_name: str = "auto", dtypes=("float32", "bfloat16")) -> list[dict]:
    """The sustained peak matmul rate of this device per dtype, measured now within its time budget
    (workflows.train.device.measure_peak: the size, products and seconds it took are in each row)."""
    d = dev.resolve_device(device_name)
    rows = []
    for name in dtypes:
        dtype = dev.resolve_dtype(name, d)
        m = dev.measure_peak(d, dtype)
        rows.append({"device": dev.device_name(d), "dtype": name, "key": dev.peak_key(d, dtype),
                     "threads": torch.get_num_threads(), "flops": m.pop("flops"), "method": dev.PEAK_METHOD,
                     "measurement": m})
    return rows


def phase_times(b: Bench, steps: int) -> dict[str, float]:
    """Median seconds of forward (+ loss), backward and optimizer (clip + AdamW + zero_grad) of the training
    step (``Bench.step``), each phase synchronised before and after."""
    out = {"forward": [], "backward": [], "optimizer": []}
    names = {"forward": "forward", "backward": "backward", "update": "optimizer"}
    device = b.job.device

    @contextlib.contextmanager
    def timed(phase: str):
        dev.synchronize(device)
        t0 = time.perf_counter()
        yield
        dev.synchronize(device)
        out[names[phase]].append(time.perf_counter() - t0)

    for step in range(steps):
        b.step(step, phase=timed)
    return {k: statistics.median(v) for k, v in out.items()}


def bench(size: str, batch_size: int, steps: int, work: str, compile_: str) -> dict:
    run = Bench(size, batch_size, work, 0, compile_)
    warm = 5 if compile_ == "off" else 10
    plain = time_steps(run, steps, warm)
    phases = phase_times(run, max(5, steps // 2))
    stats_run = Bench(size, batch_size, work, 50, compile_)
    with_stats = time_steps(stats_run, 100 if run.job.device.type == "cpu" else 200, warm)
    tokens = batch_size * run.cfg.model.context_length
    step = statistics.median(plain)

    fpt = flops_per_token(run.cfg.model)
    inner = sum(phases.values())
    return {
        "size": size, "device": dev.device_name(run.job.device), "dtype": str(run.job.dtype).removeprefix("torch."),
        "compiled": run.job.compiled, "threads": torch.get_num_threads(), "batch_size": batch_size,
        "seq_len": run.cfg.model.context_length, "params": sum(p.numel() for p in run.model.parameters()),
        "step_ms": 1000 * step, "tokens_per_s": tokens / step, "flops_per_token": fpt,
        "peak_flops": run.job.peak["flops"], "mfu": tokens / step * fpt / run.job.peak["flops"],
        **{f"{k}_ms": 1000 * v for k, v in phases.items()},
        "outside_fwd_bwd_opt_share": max(0.0, 1 - inner / step),
        "stats_every_50_slowdown": sum(with_stats) / len(with_stats) / (sum(plain) / len(plain)) - 1,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small", "medium"], choices=list(SIZES))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int)
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--work", default="work")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--peak", action="store_true", help="only measure the sustained peak matmul FLOP/s (fp32, bf16)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak:
        rows = peak_rows()
        for r in rows:
            print(f"{r['key']}: {r['flops'] / 1e12:.3f} TFLOP/s sustained ({r['method']})")
        if args.json:
            write_json(args.json, rows)
        return
    rows = [bench(s, args.batch_size, args.steps, args.work, args.compile) for s in args.sizes]
    cols = ["size", "params", "step_ms", "tokens_per_s", "mfu", "forward_ms", "backward_ms", "optimizer_ms",
            "outside_fwd_bwd_opt_share", "stats_every_50_slowdown"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    print(f"device: {rows[0]['device']}, {rows[0]['dtype']}, threads {rows[0]['threads']}, compiled "
          f"{rows[0]['compiled']}; MFU = tokens/s x (6N + 12LHQT) / measured peak matmul FLOP/s "
          f"({rows[0]['peak_flops'] / 1e9:.0f} GFLOP/s)")
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
