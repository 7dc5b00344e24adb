"""Side-by-side KV-cached decoding speed of MHA, GQA and MQA: the evidence for "much faster to decode".

    python -m workflows.bench.decode --out results/decode.parquet [--batch 1 8 64] [--context 128 512 1024] \\
        [--reps 5] [--steps 8] [--model-json '{...}'] [--overrides-json '{...}'] [--threads N] [--figures DIR]
    python -m workflows.bench.decode --plot results/decode.parquet --figures figures     # decode.png / .pdf only

The arms are one model that differs only in ``n_kv_heads``: MHA (n_heads), GQA (the base model's
n_kv_heads when it lies strictly between, else n_heads / 4) and MQA (1). The base model is
config/config.yaml's ``model`` (or ``--model-json``) with ``DECODE_SCALE`` on top (or ``--overrides-json``):
d_model 256, 8 heads of 32, 4 layers. At that width MHA's cache is 8 KiB per token (fp32), so at batch 64
and context 1k the K/V an attention step reads (512 MiB) outweigh the weights (≈ 13 MiB) forty-fold: decoding
is bound by reading the cache, the regime where Shazeer (2019) measured MQA's gain; at batch 1 and
context 128 the weights dominate and the arms should tie.

Each arm's model decodes ``steps`` tokens (greedy) per measurement with a ``models.kvcache.KVCache`` that
already holds ``context`` tokens per sequence. The cache is filled with random keys and values rather than
by a prefill (a step reads the same bytes whatever they hold; a real prefill of 64 × 1k tokens takes minutes
on two cores), so tokens/s = batch × steps / seconds of decode steps only, prefill excluded. As in
workflows/bench/speed.py every arm runs in one process, one after the other, for every (batch, context) cell,
with the arm order rotated each rep so that none always runs first or last; the scorecard pairs the arms by
rep. Each row records the device name, torch's thread count and ``other_cpu_share``, the share of the
machine's CPU time that other processes (or a VM's hypervisor) took during the bench: the claims judge a CPU
bench only when it had the cores to itself. The pipeline runs it as a job that takes every core (rule decode).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from models import ConfigError, ModelConfig, build
from models.kvcache import KVCache, kv_cache_bytes
from workflows.io import write_parquet
from workflows.train import device as dev

ARMS = ("mha", "gqa", "mqa")
DECODE_SCALE = {"d_model": 256, "n_heads": 8, "n_layers": 4, "head_dim": None, "d_ff": None}
BATCHES, CONTEXTS = (1, 8, 64), (128, 512, 1024)
COLUMNS = ["arm", "n_heads", "n_kv_heads", "rep", "batch_size", "context", "steps", "tokens_per_s", "us_per_token",
           "kv_bytes", "kv_bytes_per_token", "params", "d_model", "n_layers", "head_dim", "dtype", "device",
           "threads", "other_cpu_share", "torch"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_model() -> dict:
    """config/config.yaml's ``model`` mapping (the grid's baseline)."""
    path = Path(__file__).resolve().parents[2] / "config" / "config.yaml"
    return dict((yaml.safe_load(path.read_text()) or {}).get("model") or {})


def arm_configs(model: dict, overrides: dict | None, max_len: int, arms=ARMS) -> dict:
    """{arm: ModelConfig}: ``model`` with ``overrides`` (None: DECODE_SCALE) on top, context_length =
    ``max_len`` and n_kv_heads per arm (module docstring). Raises ConfigError naming the field."""
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        raise ConfigError(f"decode arms {unknown or list(arms)} are not allowed; choose from {list(ARMS)}")
    base = {**model, **(DECODE_SCALE if overrides is None else overrides), "context_length": max_len}
    gqa_from = base.pop("n_kv_heads", None)
    H = ModelConfig(**base).n_heads  # validates every other field first
    if gqa_from is not None and 1 < gqa_from < H and H % gqa_from == 0:
        gqa = gqa_from
    else:
        gqa = next((g for g in (H // 4, H // 2) if 1 < g < H and H % g == 0), None)
    if "gqa" in arms and gqa is None:
        raise ConfigError(f"n_heads={H} has no GQA group count strictly between 1 and n_heads; use n_heads >= 4 "
                          f"or drop 'gqa' from the arms {list(arms)}")
    kv = {"mha": H, "gqa": gqa, "mqa": 1}
    return {a: ModelConfig(**{**base, "n_kv_heads": kv[a]}) for a in ARMS if a in arms}


class OtherCPU:
    """Share of the machine's CPU time that other processes (and, on a VM, the hypervisor: steal) used
    since construction: (busy CPU seconds of the whole machine − this process's) / (cores × wall seconds).
    Near 0 when the bench had the machine to itself; NaN where psutil cannot tell."""

    def __init__(self):
        try:
            import psutil  # a dependency of snakemake
        except ImportError:
            self.psutil = None
            return
        self.psutil, self.proc = psutil, psutil.Process()
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    def _own(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def share(self) -> float:
        if self.psutil is None:
            return float("nan")
        wall = time.perf_counter() - self.t0
        other = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, other) / (wall * (self.psutil.cpu_count() or 1))


class Decoder:
    """One arm's model with one KV cache per batch size, filled with random K/V (module docstring)."""

    def __init__(self, cfg, batches, device: torch.device, dtype: torch.dtype, seed: int = 0):
        torch.manual_seed(seed)
        self.cfg, self.device = cfg, device
        self.model = build(cfg).to(device=device, dtype=dtype).eval()
        self.params = sum(p.numel() for p in self.model.parameters())
        g = torch.Generator(device=device).manual_seed(seed)
        self.caches, self.tokens = {}, {}
        for B in batches:
            cache = KVCache(cfg, B, device=device, dtype=dtype)
            cache.kv.normal_(generator=g)  # random K/V instead of a prefill: see the module docstring
            self.caches[B] = cache
            self.tokens[B] = torch.randint(0, cfg.vocab_size, (B, 1), generator=g, device=device)

    @torch.no_grad()
    def decode(self, B: int, context: int, steps: int) -> None:
        cache, x = self.caches[B], self.tokens[B]
        cache.reset(context)
        for _ in range(steps):
            x = self.model(x, cache=cache)[:, -1].argmax(dim=-1, keepdim=True)

    def tokens_per_s(self, B: int, context: int, steps: int) -> float:
        dev.synchronize(self.device)
        t0 = time.perf_counter()
        self.decode(B, context, steps)
        dev.synchronize(self.device)
        return B * steps / (time.perf_counter() - t0)


def measure(model: dict | None = None, overrides: dict | None = None, batches=BATCHES, contexts=CONTEXTS,
            reps: int = 5, steps: int = 8, warmup: int = 1, arms=ARMS, device: str | None = None,
            dtype: str = "float32", seed: int = 0) -> pd.DataFrame:
    """One row per (arm, rep, batch, context): decode tokens/s measured side by side (module docstring)."""
    for name, values in (("batch", batches), ("context", contexts)):
        if not values or any(int(v) != v or v < 1 for v in values):
            raise ValueError(f"--{name} {list(values)}: every value must be a positive integer")
    for name, v, lo in (("reps", reps, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
        if int(v) != v or v < lo:
            raise ValueError(f"--{name}={v} must be an integer >= {lo}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r} is not allowed; choose one of {list(DTYPES)}")
    batches, contexts = sorted(set(map(int, batches))), sorted(set(map(int, contexts)))
    cfgs = arm_configs(default_model() if model is None else model, overrides, max(contexts) + steps, arms)
    dv = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = DTYPES[dtype]
    decoders = {a: Decoder(c, batches, dv, dt, seed) for a, c in cfgs.items()}
    cells = [(B, T) for B in batches for T in contexts]
    for d in decoders.values():
        for B, T in cells:
            d.decode(B, T, warmup)
    names, rows, elem = list(decoders), [], torch.tensor([], dtype=dt).element_size()
    clock = OtherCPU()
    for rep in range(reps):
        for i, (B, T) in enumerate(cells):
            k = (rep + i) % len(names)
            for a in names[k:] + names[:k]:
                d = decoders[a]
                tps = d.tokens_per_s(B, T, steps)
                c = d.cfg
                rows.append({"arm": a, "n_heads": c.n_heads, "n_kv_heads": c.kv_heads, "rep": rep, "batch_size": B,
                             "context": T, "steps": steps, "tokens_per_s": tps, "us_per_token": 1e6 / tps,
                             "kv_bytes": kv_cache_bytes(c, B, T, elem), "kv_bytes_per_token": kv_cache_bytes(c, 1, 1, elem),
                             "params": d.params, "d_model": c.d_model, "n_layers": c.n_layers,
                             "head_dim": c.dim_head, "dtype": dtype, "device": dev.device_name(dv),
                             "threads": torch.get_num_threads(), "torch": torch.__version__})
    return pd.DataFrame(rows, columns=COLUMNS).assign(other_cpu_share=clock.share())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="decode.parquet (the bench); omit with --plot")
    p.add_argument("--plot", help="an existing decode.parquet: only draw its figure (needs --figures)")
    p.add_argument("--figures", help="folder for decode.png / decode.pdf")
    p.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--context", type=int, nargs="+", default=list(CONTEXTS), help="tokens already cached")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="decode steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed decode steps per arm and cell")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--model-json", help="base models.ModelConfig mapping (default: config/config.yaml's model)")
    p.add_argument("--overrides-json", help=f"fields over the base model (default: {json.dumps(DECODE_SCALE)})")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.plot:
        if not args.figures:
            p.error("--plot needs --figures")
        from workflows.plots.decode import figure

        figure(pd.read_parquet(args.plot), args.figures, ARMS)
        return 0
    if not args.out:
        p.error("--out is required (or --plot TABLE --figures DIR)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = json.loads(args.model_json) if args.model_json else None
    overrides = json.loads(args.overrides_json) if args.overrides_json else None
    t0 = time.perf_counter()
    df = measure(model, overrides, args.batch, args.context, args.reps, args.steps, args.warmup, args.arms,
                 args.device, args.dtype, args.seed)
    write_parquet(args.out, df)
    med = df.groupby(["batch_size", "context", "arm"], sort=False).tokens_per_s.median().unstack("arm")
    print(f"decode tokens/s (median of {args.reps} reps, {df.threads.iloc[0]} threads, {df.device.iloc[0]}, "
          f"{time.perf_counter() - t0:.0f} s):")
    print(med[[a for a in ARMS if a in med.columns]].round(0).to_string())
    if args.figures:
        from workflows.plots.decode import figure

        figure(df, args.figures, ARMS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
