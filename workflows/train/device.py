"""Devices and their peaks: MFU is reported against a sustained matmul rate measured once per (device name,
dtype, torch version) and cached; beside it, where the device is a known NVIDIA GPU and the run is bf16/fp16,
against the datasheet's dense tensor-core peak (``datasheet_peak``; ``mfu_datasheet`` in a run's metrics).

Also the device-specific pieces of the training loop, so that the loop itself has no ``if cuda``:
``StepClock`` (per-step seconds without a per-step host sync on an accelerator), peak-memory reset
and read-out per run, the per-job memory cap on a shared GPU, and how many other processes share it."""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch

from workflows.io import write_json


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


# the peak measurement's clock (tests substitute a virtual one to prove the time budget on any CPU)
clock = time.perf_counter

PEAK_BUDGET_S = {"cuda": 4.0, "cpu": 2.0}  # whole measurement: warm-up, size probe and timed windows
PEAK_MAX_N = {"cuda": 8192, "cpu": 2048}  # the largest product (a representative size, as before)
PEAK_MAX_ITERS = {"cuda": 50, "cpu": 3}  # products per timed window at most
PROBE_N = 128  # the first, small product: estimates the speed before a size is chosen


def _time_products(device: torch.device, a, b, out, count: int) -> float:
    """Seconds of ``count`` back-to-back products, timed as a whole on the device (CUDA events, one sync
    at the end; the host clock on CPU)."""
    if device.type == "cuda":
        start, end = new_event(), new_event()
        start.record()
        for _ in range(count):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = clock()
    for _ in range(count):
        torch.mm(a, b, out=out)
    return clock() - t0


def measure_peak(device: torch.device, dtype: torch.dtype, budget_s: float | None = None, n: int | None = None,
                 iters: int | None = None, repeats: int = 5, warmup_s: float | None = None) -> dict:
    """Sustained FLOP/s of back-to-back n×n by n×n matmuls (2n³ FLOPs each), within a time budget.

    1. Size probe: one product at n = 128, then at doubled sizes while the next one is predicted
       (8× the last, the cube law) to fit a window, up to 8192 on CUDA and 2048 on CPU. The rate of the last
       probe product estimates the speed; the size is the largest probed one of which 2 products fit a window.
    2. Warm-up at that size: products for ``warmup_s`` seconds (1 s CUDA, 0.2 s CPU; at most a fifth of the
       budget): clocks and caches settle, cuBLAS picks its kernel.
    3. ``repeats`` windows of ``iters`` back-to-back products each (at most 50 on CUDA, 3 on CPU, fewer when
       the estimated speed says they would not fit), each window timed as a whole on the device.
    The whole stays within ``budget_s`` (4 s CUDA, 2 s CPU) up to one product's estimation error: a CPU
    without native bf16 (30-80× slower than fp32) gets a smaller n, not a minutes-long measurement. An H100
    keeps n = 8192 and 50 per window (≈ 1.6 ms a product). Returns {"flops": the median window rate (a
    sustained rate, not the best single call), "n", "products_per_window", "windows", "products" (all timed
    and untimed products), "seconds" (the whole measurement), "budget_s"}.
    ``n`` and ``iters`` fix the size and window length (tests); the budget still bounds the warm-up."""
    cuda = device.type == "cuda"
    kind = "cuda" if cuda else "cpu"
    budget_s = PEAK_BUDGET_S[kind] if budget_s is None else budget_s
    warmup_s = min((1.0 if cuda else 0.2) if warmup_s is None else warmup_s, budget_s / 5)
    t_begin = clock()
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout) untouched

    def operands(size):
        a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
        return a, b, torch.empty(size, size, device=device, dtype=dtype)

    products = 0
    if n is None:
        n_max = PEAK_MAX_N[kind]
        size = min(PROBE_N, n_max)
        ops = operands(size)
        _time_products(device, *ops, 1)  # first call: kernel selection and lazy initialisation
        products += 1
        window = (budget_s - warmup_s) / (repeats + 1)  # the probe's share is about one window
        per = max(_time_products(device, *ops, 1), 1e-9)
        products += 1
        while size < n_max:
            nxt = min(2 * size, n_max)
            predicted = per * (nxt / size) ** 3  # the cube law
            if 2 * predicted > window or clock() - t_begin + predicted > window:
                break
            size, ops = nxt, operands(nxt)
            per = max(_time_products(device, *ops, 1), 1e-9)
            products += 1
        n, (a, b, out) = size, ops
    else:
        a, b, out = operands(n)
    t_end = clock() + warmup_s
    while True:
        per = max(_time_products(device, a, b, out, 1), 1e-9)  # the last one estimates a product's time
        products += 1
        if clock() >= t_end:
            break
    if iters is None:
        left = max(budget_s - (clock() - t_begin), 0.0)
        iters = int(min(PEAK_MAX_ITERS[kind], max(1, left / repeats / per)))
    rates = []
    for _ in range(repeats):
        rates.append(2 * n**3 * iters / max(_time_products(device, a, b, out, iters), 1e-12))
        products += iters
    return {"flops": statistics.median(rates), "n": n, "products_per_window": iters, "windows": repeats,
            "products": products, "seconds": round(clock() - t_begin, 4), "budget_s": budget_s}


# NVIDIA's datasheet peaks for dense 16-bit (bf16 = fp16) tensor-core math, in FLOP/s: the datasheets print the
# with-sparsity figure first (marked *), twice these. H100 SXM 989 (1,979*), PCIe 756 (1,513*), NVL 835 (1,671*):
# "NVIDIA H100 Tensor Core GPU" datasheet (nvidia.com/en-us/data-center/h100/); H200 SXM 989 (1,979*), NVL 835
# (1,671*): "NVIDIA H200 Tensor Core GPU" datasheet (nvidia.com/en-us/data-center/h200/); A100 (SXM and PCIe,
# 40 and 80 GB) 312 (624*): "NVIDIA A100 Tensor Core GPU" datasheet (nvidia.com/en-us/data-center/a100/).
# Matched against torch.cuda.get_device_name in order (the H100 SXM reports "NVIDIA H100 80GB HBM3").
DATASHEET_BF16_DENSE = (
    (re.compile(r"\bH100\b.*\bPCIe\b", re.I), 756e12, "NVIDIA H100 PCIe datasheet, bf16 dense"),
    (re.compile(r"\bH100\b.*\bNVL\b", re.I), 835e12, "NVIDIA H100 NVL datasheet, bf16 dense"),
    (re.compile(r"\bH100\b", re.I), 989e12, "NVIDIA H100 SXM datasheet, bf16 dense"),
    (re.compile(r"\bH200\b.*\bNVL\b", re.I), 835e12, "NVIDIA H200 NVL datasheet, bf16 dense"),
    (re.compile(r"\bH200\b", re.I), 989e12, "NVIDIA H200 SXM datasheet, bf16 dense"),
    (re.compile(r"\bA100\b", re.I), 312e12, "NVIDIA A100 datasheet, bf16 dense"),
)


def datasheet_peak(name: str, dtype: torch.dtype) -> dict | None:
    """The datasheet's dense bf16/fp16 tensor-core peak of a device named ``name`` (torch's device name), as
    {"flops", "source"}, or None: a CPU, another GPU, or a run not in bf16/fp16 (the datasheets' fp32/TF32 peaks
    are other numbers). MFU against it is the comparable-across-papers number; against the measured peak
    (``peak_flops``) it is the share of what this machine's matmuls reach."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    for pattern, flops, source in DATASHEET_BF16_DENSE:
        if pattern.search(name or ""):
            return {"flops": flops, "source": source}
    return None


def measure_peak_flops(device: torch.device, dtype: torch.dtype, **kw) -> float:
    """The sustained FLOP/s of ``measure_peak`` alone."""
    return measure_peak(device, dtype, **kw)["flops"]


PEAK_METHOD = ("median over 5 windows of back-to-back square matmuls (2n^3 FLOPs each) timed as a whole (CUDA "
               "events on CUDA), after a size probe from n=128 and a timed warm-up, within a time budget (4 s "
               "CUDA, 2 s CPU); n up to 8192 (CUDA) or 2048 (CPU), up to 50 (CUDA) or 3 (CPU) per window: "
               "n, products and seconds are recorded beside the rate")


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
        m = measure_peak(device, dtype)
        cache[key] = {"flops": m.pop("flops"), "method": PEAK_METHOD, "measurement": m,
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


# ---- sharing: the other compute processes on a run's GPU --------------------------------------------
_NVML_PROCESS = re.compile(r"^process\s+(\d+)\s+uses", re.M)


def _nvml_pids(device: torch.device) -> list[int] | None:
    """PIDs of the compute processes NVML lists on ``device`` (torch.cuda.list_gpu_processes, which needs
    pynvml); None without pynvml or a readable listing."""
    try:
        import pynvml  # noqa: F401  (torch.cuda.list_gpu_processes imports it; its absence is a string there)
    except ImportError:
        return None
    try:
        text = torch.cuda.list_gpu_processes(device)
    except Exception:  # noqa: BLE001 - NVML errors of any kind: unknown
        return None
    if not text.startswith("GPU:"):
        return None
    return [int(p) for p in _NVML_PROCESS.findall(text)]


def _smi_pids(device: torch.device) -> list[int] | None:
    """PIDs of the compute processes nvidia-smi lists on the GPU whose UUID torch reports for ``device``."""
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid).lower().removeprefix("gpu-")
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError, RuntimeError, AttributeError, AssertionError):
        return None
    if out.returncode != 0 or not uuid:
        return None
    pids = []
    for line in out.stdout.splitlines():
        gpu, _, pid = (x.strip() for x in line.partition(","))
        if pid.isdigit() and gpu.lower().removeprefix("gpu-") == uuid:
            pids.append(int(pid))
    return pids


def gpu_neighbours(device: torch.device) -> int | None:
    """How many other compute processes run on ``device``'s GPU now: the processes NVML lists there
    (through torch.cuda.list_gpu_processes where pynvml is installed, else ``nvidia-smi
    --query-compute-apps``) minus this one. None on the CPU and when nothing lists them, or lists none:
    this process holds a CUDA context, so an empty list means the listing cannot see processes (a container's
    PID namespace can hide them). Without MPS, processes on one GPU take turns: a run's tokens/s and MFU
    then depend on them."""
    if device.type != "cuda":
        return None
    pids = _nvml_pids(device)
    if pids is None:
        pids = _smi_pids(device)
    if not pids:
        return None
    return len(pids) - 1  # this process is one of them (under another PID inside a container)


def neighbour_summary(samples: list) -> dict | None:
    """A run's ``gpu_neighbours`` samples (at its start, each evaluation and its end) as {"start", "end",
    "max", "samples", "known"}: None when no sample was known (the CPU, or no process listing)."""
    known = [int(s) for s in samples if s is not None]
    if not known:
        return None
    return {"start": samples[0], "end": samples[-1], "max": max(known), "samples": len(samples), "known": len(known)}


def main(argv=None):
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
