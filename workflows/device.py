"""Devices and their measured peak: MFU is reported against a sustained matmul rate measured once per
(device name, dtype, torch version) and cached, never against a datasheet constant.

Also the device-specific pieces of the training loop, so that the loop itself has no ``if cuda``:
``StepClock`` (per-step seconds without a per-step host sync on an accelerator), peak-memory reset
and read-out per run, and the per-job memory cap on a shared GPU."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from .io import write_json


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def uses_events(device: torch.device) -> bool:
    """Whether steps are timed with device events (read once per log interval) instead of the host clock."""
    return device.type == "cuda"


def new_event():
    return torch.cuda.Event(enable_timing=True)


class StepClock:
    """Seconds of one training step.

    CPU: the host clock, read after ``synchronize`` (a no-op there): exactly the per-step timing of old.
    CUDA: a pair of timing events recorded on the stream around the step; nothing blocks the host until
    ``seconds`` is asked for them, which the recorder does once per log interval after one ``settle``
    (one synchronisation per interval, not per step)."""

    def __init__(self, device: torch.device):
        self.device, self.events = device, uses_events(device)

    def start(self):
        if self.events:
            e = new_event()
            e.record()
            return e
        return time.perf_counter()

    def stop(self, start):
        if self.events:
            e = new_event()
            e.record()
            return start, e
        synchronize(self.device)
        return time.perf_counter() - start

    def settle(self) -> None:
        """Wait for the recorded events (called once per log interval, before reading them)."""
        if self.events:
            synchronize(self.device)

    @staticmethod
    def seconds(tick) -> float:
        if isinstance(tick, float):
            return tick
        start, end = tick
        return start.elapsed_time(end) / 1000.0


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None, iters: int | None = None,
                       repeats: int = 5, warmup_s: float | None = None) -> float:
    """Sustained FLOP/s of back-to-back n×n by n×n matmuls (2n³ FLOPs each).

    Warm-up: matmuls for ``warmup_s`` seconds (clocks and caches settle, cuBLAS picks its kernel). Then
    ``repeats`` windows of ``iters`` back-to-back matmuls, each window timed as a whole on the device
    (CUDA events around the window, one sync at its end; the host clock on CPU). Returns the median
    window rate: a sustained rate, not the best single call (a clock burst)."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 2048)
    iters = iters or (50 if cuda else 3)
    warmup_s = (1.0 if cuda else 0.2) if warmup_s is None else warmup_s
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout) untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t_end = time.perf_counter() + warmup_s
    while True:
        torch.mm(a, b, out=out)
        synchronize(device)
        if time.perf_counter() >= t_end:
            break
    rates = []
    for _ in range(repeats):
        if cuda:
            start, end = new_event(), new_event()
            start.record()
            for _ in range(iters):
                torch.mm(a, b, out=out)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000.0
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.mm(a, b, out=out)
            seconds = time.perf_counter() - t0
        rates.append(2 * n**3 * iters / seconds)
    return statistics.median(rates)


PEAK_METHOD = ("median over 5 windows of back-to-back square matmuls (2n^3 FLOPs each; n=8192, 50 per window "
               "on CUDA, timed by CUDA events; n=2048, 3 per window on CPU) after a timed warm-up")


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    """Cache key of the peak: device name, dtype, torch version (the thread count is recorded, not keyed)."""
    return f"{device_name(device)}|{str(dtype).removeprefix('torch.')}|torch={torch.__version__}"


def peak_flops(device: torch.device, dtype: torch.dtype, cache_file: str | os.PathLike | None,
               persist: bool = True) -> dict:
    """Cached peak for this (device name, dtype, torch); measured when missing. ``persist=False``
    treats the cache as read-only (the pipeline's peak_flops rule owns it)."""
    key = peak_key(device, dtype)
    cache = {}
    if cache_file and Path(cache_file).exists():
        try:
            cache = json.loads(Path(cache_file).read_text())
        except ValueError:
            cache = {}
    if key not in cache:
        cache[key] = {"flops": measure_peak_flops(device, dtype), "method": PEAK_METHOD,
                      "threads": torch.get_num_threads(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if cache_file and persist:
            write_json(cache_file, cache)
    return {"key": key, **cache[key]}


# ---- memory: peak per run, and a per-job cap on a shared GPU -----------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    """Start a run's peak-memory window: CUDA's allocator peak; on Linux CPU the process's peak RSS
    (VmHWM, reset through /proc/self/clear_refs where the kernel allows it)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the last ``reset_peak_memory``: allocated CUDA memory, or the CPU process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


GPU_MEM_ENV = "ARCHBENCH_GPU_MEM_MB"


def gpu_mem_budget_mb(explicit: float | None = None) -> float | None:
    """A job's GPU memory budget (MB): ``explicit`` (train --gpu-mem-mb), else $ARCHBENCH_GPU_MEM_MB, else None."""
    if explicit:
        return float(explicit)
    raw = os.environ.get(GPU_MEM_ENV, "").strip()
    return float(raw) if raw and float(raw) > 0 else None


def cap_memory(device: torch.device, budget_mb: float | None) -> float | None:
    """Cap this process's share of a shared GPU at ``budget_mb`` (the train rule's resources.gpu_mem_mb):
    the caching allocator then raises OOM in this job instead of starving the jobs beside it. Returns the
    fraction set, or None (CPU, or no budget)."""
    if device.type != "cuda" or not budget_mb:
        return None
    total_mb = torch.cuda.get_device_properties(device).total_memory / 2**20
    fraction = min(1.0, budget_mb / total_mb)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="Measure the device's peak matmul FLOP/s and cache it.")
    p.add_argument("--out", required=True, help="JSON cache file")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    d = resolve_device(args.device)
    peak = peak_flops(d, resolve_dtype(args.dtype, d), args.out)
    print(f"{peak['key']}: {peak['flops'] / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
