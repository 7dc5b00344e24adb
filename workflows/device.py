"""Devices and their measured peak: MFU is reported against a matmul benchmark run once per
(device, dtype, threads, torch version) and cached, never against a datasheet constant."""
from __future__ import annotations

import json
import os
import platform
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


def measure_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """Best observed FLOP/s of an n×n by n×n matmul (2n³ FLOPs)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    g = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (dropout) untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, cache_file: str | os.PathLike | None,
               persist: bool = True) -> dict:
    """Cached peak for this (device, dtype, threads, torch); measured when missing. ``persist=False``
    treats the cache as read-only (the pipeline's peak_flops rule owns it)."""
    key = f"{device_name(device)}|{str(dtype).removeprefix('torch.')}|threads={torch.get_num_threads()}" \
          f"|torch={torch.__version__}"
    cache = {}
    if cache_file and Path(cache_file).exists():
        try:
            cache = json.loads(Path(cache_file).read_text())
        except ValueError:
            cache = {}
    if key not in cache:
        cache[key] = {"flops": measure_peak_flops(device, dtype),
                      "method": "max over 5 repeats of a square matmul (2n^3 FLOPs), n=8192 CUDA / 2048 CPU",
                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if cache_file and persist:
            write_json(cache_file, cache)
    return {"key": key, **cache[key]}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
