"""One training run, fully measured: (variant, seed, LR) → metrics.json + history.parquet.

    python -m workflows.train --config RUN.yaml --out DIR [--threads N] [--work work]

A run config has five keys: ``variant`` (a label), ``seed``, ``model`` (a ``models.ModelConfig``),
``data`` (a ``workflows.data.DataConfig``) and ``train`` (``TrainConfig`` below). Unknown keys or
values fail before any data is loaded, naming the field.

Training: AdamW with decay / no-decay groups, linear warmup then cosine decay to a floor, gradient
clipping (the pre-clip norm is recorded), optional output z-loss ``coef · log²Z``, dropout; fp32 on
CPU, bf16 autocast on CUDA; optional ``torch.compile``.

Divergence: a run diverges when a loss is non-finite, or when the smoothed (EMA) train loss stays
above ℓ0 = ln(vocab) + ``divergence_margin`` for ``divergence_patience`` consecutive log checks. It
stops early and records ``diverged``, the step and the reason; it is a result, not an error.

Resumption: a checkpoint is written every ``checkpoint_every`` steps; the same command restarted
after a kill resumes and, on CPU, ends bit-identical to an uninterrupted run (batches are a pure
function of (seed, step), and RNG, optimizer and bookkeeping state are checkpointed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from models import ModelConfig, build, count_params, flops_per_token
from models.config import ConfigError, check_types, from_mapping
from models.norms import NORMS

from . import device as dev
from .data import DataConfig, DataError, prepare, train_batch, val_windows
from .io import atomic_path, sanitize, write_json

NO_DECAY_GROUPS = ("norm", "bias", "embedding")
HISTORY_COLUMNS = ("step", "kind", "metric", "layer", "site", "value")


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    no_decay: list = field(default_factory=lambda: list(NO_DECAY_GROUPS))
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    z_loss: float = 0.0
    log_every: int = 10
    eval_every: int = 100
    eval_windows: int = 64
    stats_every: int = 50  # per-layer statistics; 0 = off
    checkpoint_every: int = 100  # 0 = off
    divergence_margin: float = 0.1  # nats above ln(vocab)
    divergence_patience: int = 5  # consecutive log checks
    divergence_ema: float = 0.9
    timing_warmup_steps: int = 10  # excluded from steady-state throughput
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 autocast on CUDA) | float32 | bfloat16
    compile: str = "auto"  # auto (on for CUDA, off for CPU) | on | off
    threads: int | None = None  # torch threads; None = the caller's (--threads) or torch's default

    def __post_init__(self):
        check_types(self, ConfigError)
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be a positive integer")
        for name in ("warmup_steps", "stats_every", "checkpoint_every", "timing_warmup_steps", "divergence_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        for name in ("beta1", "beta2", "divergence_ema"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be in [0, 1)")
        if self.weight_decay < 0 or self.z_loss < 0 or self.divergence_margin < 0:
            raise ConfigError("train.weight_decay, train.z_loss and train.divergence_margin must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip={self.grad_clip} must be > 0 or null (off)")
        bad = sorted(set(self.no_decay) - set(NO_DECAY_GROUPS))
        if bad:
            raise ConfigError(f"train.no_decay has {bad}; allowed entries: {list(NO_DECAY_GROUPS)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"train.dtype={self.dtype!r}; choose one of ['auto', 'float32', 'bfloat16', 'float16']")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"train.compile={self.compile!r}; choose one of ['auto', 'on', 'off']")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device={self.device!r}; choose one of ['auto', 'cpu', 'cuda', 'cuda:N']")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"train.threads={self.threads} must be a positive integer or null")


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    seed: int = 0
    variant: str = "custom"

    @classmethod
    def from_dict(cls, d) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be a mapping, got {type(d).__name__}")
        allowed = {"model", "data", "train", "seed", "variant"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"unknown run config key(s) {unknown}; allowed keys: {sorted(allowed)}")
        seed = d.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be a non-negative integer")
        variant = d.get("variant", "custom")
        if not isinstance(variant, str) or not variant:
            raise ConfigError(f"variant={variant!r} must be a non-empty string")
        data = DataConfig.from_dict(d.get("data") or {})
        model = ModelConfig.from_dict({"vocab_size": data.vocab_size, **(d.get("model") or {})})
        if model.vocab_size != data.vocab_size:
            raise ConfigError(f"model.vocab_size={model.vocab_size} differs from the tokenizer's vocabulary "
                              f"({data.tokenizer}: {data.vocab_size}); drop model.vocab_size to derive it")
        return cls(model=model, data=data, train=from_mapping(TrainConfig, d.get("train"), ConfigError,
                                                              "train config"), seed=seed, variant=variant)

    @classmethod
    def from_yaml(cls, path) -> "RunConfig":
        import yaml

        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def to_dict(self) -> dict:
        return {"variant": self.variant, "seed": self.seed, "model": self.model.to_dict(),
                "data": asdict(self.data), "train": asdict(self.train)}


# ------------------------------------------------------------------------------------------------
def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup from 0 over warmup_steps, then cosine decay to lr · min_lr_ratio at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    span = max(1, tc.steps - tc.warmup_steps - 1)
    progress = min(1.0, (step - tc.warmup_steps) / span)
    floor = tc.lr * tc.min_lr_ratio
    return floor + (tc.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, tc: TrainConfig) -> list[dict]:
    """AdamW groups: weights decay; norms, biases and embeddings as listed in train.no_decay do not."""
    norm_types = tuple(NORMS.values())
    decay, no_decay, seen = [], [], set()
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(mod, norm_types):
                group = "norm"
            elif pname == "bias":
                group = "bias"
            elif isinstance(mod, torch.nn.Embedding) or mod is getattr(model, "pos", None):
                group = "embedding"
            else:
                group = "weight"
            (no_decay if group in tc.no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_params(model) -> dict[int, list[torch.Tensor]]:
    out: dict[int, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        layer = model.layer_of(name)
        if layer is not None:
            out.setdefault(layer, []).append(p)
    return out


def _norm(tensors) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])).item()


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Diverged(Exception):
    pass


# ------------------------------------------------------------------------------------------------
class Run:
    """State of one run; ``fit()`` trains from the last checkpoint (or step 0) to the end."""

    def __init__(self, cfg: RunConfig, out: Path, work: Path, peak_file: Path | None, peak_persist: bool = True):
        self.cfg, self.out, self.tc = cfg, out, cfg.train
        self.device = dev.resolve_device(self.tc.device)
        self.dtype = dev.resolve_dtype(self.tc.dtype, self.device)
        self.data = prepare(cfg.data, work)
        torch.manual_seed(cfg.seed)
        self.model = build(cfg.model).to(self.device)
        self.opt = torch.optim.AdamW(param_groups(self.model, self.tc), lr=self.tc.lr,
                                     betas=(self.tc.beta1, self.tc.beta2), eps=self.tc.adam_eps,
                                     fused=self.device.type == "cuda")
        compile_on = self.tc.compile == "on" or (self.tc.compile == "auto" and self.device.type == "cuda")
        self.fwd = torch.compile(self.model) if compile_on else self.model
        self.compiled = compile_on
        self.layers = layer_params(self.model)
        self.init_loss = math.log(cfg.model.vocab_size)
        # on CUDA the whole token stream lives on the GPU (int32) and windows are gathered there
        self.train_tokens = (torch.from_numpy(self.data.train.astype("int32")).to(self.device)
                             if self.device.type == "cuda" else self.data.train)
        self.val_x, self.val_y = val_windows(self.data.val, cfg.model.context_length, self.tc.eval_windows)
        self.peak = dev.peak_flops(self.device, self.dtype, peak_file, persist=peak_persist)
        self.ckpt = out / "checkpoint.pt"
        self.state = {"step": 0, "history": [], "ema": None, "ema_steps": 0, "above": 0, "timed_tokens": 0,
                      "timed_seconds": 0.0, "wall": 0.0, "diverged": None, "started": time.time(),
                      "best_val": float("inf"), "segments": 0}

    # ---- checkpointing ---------------------------------------------------------------------------
    def save(self) -> None:
        with atomic_path(self.ckpt) as tmp:
            torch.save({"fingerprint": self.fingerprint(), "model": self.model.state_dict(),
                        "opt": self.opt.state_dict(), "state": self.state, "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
                       tmp)

    def load(self) -> bool:
        if not self.ckpt.exists():
            return False
        try:
            ck = torch.load(self.ckpt, map_location=self.device, weights_only=False)
        except Exception as e:  # noqa: BLE001 - a torn checkpoint is discarded, not fatal
            print(f"[train] ignoring unreadable checkpoint {self.ckpt}: {e}", file=sys.stderr)
            return False
        if ck.get("fingerprint") != self.fingerprint():
            print(f"[train] ignoring checkpoint {self.ckpt}: it belongs to another config", file=sys.stderr)
            return False
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.state = ck["state"]
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        return True

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True).encode()).hexdigest()

    # ---- measurements ----------------------------------------------------------------------------
    def record(self, step, kind, metric, value, layer=-1, site=""):
        self.state["history"].append((step, kind, metric, layer, site, float(value)))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        total, n = 0.0, 0
        B = self.tc.batch_size
        for i in range(0, len(self.val_x), B):
            x, y = self.val_x[i:i + B].to(self.device), self.val_y[i:i + B].to(self.device)
            with self.autocast():
                logits = self.fwd(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            n += y.numel()
        self.model.train()
        return total / n

    def bpb(self, nats: float) -> float:
        return nats / math.log(2) / self.data.bytes_per_token

    def eval_and_log(self, step: int, pbar=None, train_loss=None) -> float:
        loss = self.evaluate()
        self.record(step, "val", "loss", loss)
        self.record(step, "val", "bpb", self.bpb(loss))
        if math.isfinite(loss):
            self.state["best_val"] = min(self.state["best_val"], loss)
        msg = (f"step {step}/{self.tc.steps} | train {train_loss if train_loss is not None else float('nan'):.4f} "
               f"| val {loss:.4f} ({self.bpb(loss):.3f} bpb) | lr {lr_at(min(step, self.tc.steps - 1), self.tc):.2e}")
        if pbar is not None:
            pbar.set_postfix_str(msg.split(" | ", 1)[1])
        else:
            print(f"[{self.cfg.variant} seed={self.cfg.seed} lr={self.tc.lr:g}] {msg}", flush=True)
        return loss

    def check_divergence(self, step: int, losses: list[float]) -> None:
        tc = self.tc
        for loss in losses:
            if not math.isfinite(loss):
                raise Diverged(f"non-finite train loss ({loss}) at step {step}")
            ema = loss if self.state["ema"] is None else tc.divergence_ema * self.state["ema"] + (1 - tc.divergence_ema) * loss
            self.state["ema"] = ema
        threshold = self.init_loss + tc.divergence_margin
        self.state["above"] = self.state["above"] + 1 if self.state["ema"] > threshold else 0
        if tc.divergence_patience and self.state["above"] >= tc.divergence_patience:
            raise Diverged(f"smoothed train loss {self.state['ema']:.3f} stayed above ln(vocab)+"
                           f"{tc.divergence_margin} = {threshold:.3f} for {tc.divergence_patience} checks")

    # ---- the loop --------------------------------------------------------------------------------
    def train_step(self, step: int, stats: bool):
        tc, model = self.tc, self.model
        lr = lr_at(step, tc)
        for g in self.opt.param_groups:
            g["lr"] = lr
        x, y = train_batch(self.train_tokens, tc.batch_size, self.cfg.model.context_length, self.cfg.seed, step)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.autocast():
            out = self.fwd(x, stats=True) if stats else self.fwd(x)
            logits, st = out if stats else (out, None)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            total = loss
            if tc.z_loss:
                total = loss + tc.z_loss * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        total.backward()
        if stats:
            grads = {i: _norm([p.grad for p in ps if p.grad is not None]) for i, ps in self.layers.items()}
            before = {i: [p.detach().clone() for p in ps] for i, ps in self.layers.items()}
        clip = tc.grad_clip if tc.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if stats:
            self.record_stats(step, st, grads, before)
        return loss.detach(), grad_norm.detach(), lr

    @torch.no_grad()
    def record_stats(self, step, st, grads, before):
        for row in st["residual"]:
            for k in ("mean", "std", "rms"):
                self.record(step, "layer", f"resid_{k}", row[k], row["layer"], row["site"])
            self.record(step, "layer", "resid_maxabs", max(abs(row["min"]), abs(row["max"])), row["layer"], row["site"])
        for i, v in enumerate(st["attn_logit_max"]):
            self.record(step, "layer", "attn_logit_max", v, i)
        for i, ps in self.layers.items():
            self.record(step, "layer", "grad_norm", grads[i], i)
            delta = _norm([p - b for p, b in zip(ps, before[i])])
            self.record(step, "layer", "update_ratio", delta / max(_norm(before[i]), 1e-30), i)
        self.record(step, "logits", "logz_mean", st["logz_mean"])
        self.record(step, "logits", "logz_max", st["logz_max"])

    def fit(self) -> dict:
        tc = self.tc
        resumed = self.load()
        self.state["segments"] += 1
        seg_start = time.time()
        start = self.state["step"]
        if start == 0 and not resumed:
            torch.manual_seed(self.cfg.seed + 1)  # dropout RNG: independent of whatever ran before
            self.eval_and_log(0)
        pbar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            pbar = tqdm(total=tc.steps, initial=start, desc=f"{self.cfg.variant} s{self.cfg.seed} lr{tc.lr:g}",
                        dynamic_ncols=True)
        pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        step = start
        try:
            if self.state["diverged"] is None:
                for step in range(start, tc.steps):
                    stats = tc.stats_every > 0 and step % tc.stats_every == 0
                    t0 = time.perf_counter()
                    loss, gnorm, lr = self.train_step(step, stats)
                    dev.synchronize(self.device)
                    dt = time.perf_counter() - t0
                    if step >= tc.timing_warmup_steps and not stats:
                        self.state["timed_tokens"] += tc.batch_size * self.cfg.model.context_length
                        self.state["timed_seconds"] += dt
                    pending.append((step, loss, gnorm, lr))
                    done = step + 1
                    if done % tc.log_every == 0 or done == tc.steps:
                        losses = self.flush(pending)
                        pending = []
                        self.check_divergence(step, losses)
                    if pbar is not None:
                        pbar.update(1)
                    if done % tc.eval_every == 0 or done == tc.steps:
                        val = self.eval_and_log(done, pbar, self.state["ema"])
                        if not math.isfinite(val):
                            raise Diverged(f"non-finite validation loss at step {done}")
                    self.state["step"] = done
                    if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < tc.steps:
                        self.state["wall"] += time.time() - seg_start
                        seg_start = time.time()
                        self.save()
        except Diverged as d:
            if pending:
                self.flush(pending)
            self.state["diverged"] = {"step": step, "reason": str(d)}
            print(f"[{self.cfg.variant} seed={self.cfg.seed} lr={tc.lr:g}] diverged: {d}", flush=True)
        finally:
            if pbar is not None:
                pbar.close()
        self.state["wall"] += time.time() - seg_start
        return self.metrics()

    def flush(self, pending) -> list[float]:
        """Move a window of per-step tensors to the host (one sync per log interval)."""
        vals = torch.stack([torch.stack([l.float(), g.float()]) for _, l, g, _ in pending]).tolist()
        for (step, _, _, lr), (loss, gnorm) in zip(pending, vals):
            self.record(step, "train", "loss", loss)
            self.record(step, "train", "grad_norm", gnorm)
            self.record(step, "train", "lr", lr)
        return [v[0] for v in vals]

    def metrics(self) -> dict:
        cfg, tc, st = self.cfg, self.tc, self.state
        hist = [h for h in st["history"] if h[1] == "val" and h[2] == "loss"]
        final = hist[-1][5] if hist else float("nan")
        diverged = st["diverged"] is not None
        tps = st["timed_tokens"] / st["timed_seconds"] if st["timed_seconds"] > 0 else float("nan")
        fpt = flops_per_token(cfg.model, cfg.model.context_length)
        params = count_params(self.model)
        return sanitize({
            "variant": cfg.variant, "seed": cfg.seed, "lr": tc.lr,
            "status": "diverged" if diverged else "ok",
            "final_val_loss": float("nan") if diverged else final,
            "final_val_bpb": float("nan") if diverged else self.bpb(final),
            "last_val_loss": final,
            "best_val_loss": st["best_val"], "best_val_bpb": self.bpb(st["best_val"]),
            "init_loss": self.init_loss,
            "diverged": diverged,
            "diverged_step": st["diverged"]["step"] if diverged else None,
            "diverged_reason": st["diverged"]["reason"] if diverged else None,
            "divergence_rule": f"non-finite loss, or EMA({tc.divergence_ema}) train loss > ln(vocab) + "
                               f"{tc.divergence_margin} for {tc.divergence_patience} consecutive checks "
                               f"(every {tc.log_every} steps)",
            "steps_done": st["step"],
            "tokens_per_s": tps,
            "throughput_note": f"steady state: steps >= {tc.timing_warmup_steps}, excluding evaluation and "
                               "statistics steps, device synchronised",
            "flops_per_token": fpt,
            "flops_convention": "PaLM (Chowdhery et al. 2022, App. B): 6N + 12*L*H*Q*T, N = matmul weights "
                                "incl. the output projection",
            "peak_flops": self.peak["flops"], "peak_flops_source": self.peak["key"],
            "mfu": tps * fpt / self.peak["flops"] if math.isfinite(tps) else float("nan"),
            "peak_mem_mb": dev.peak_memory_mb(self.device),
            "params": params["total"], "nonembed_params": params["nonembed"],
            "tokens_seen": st["step"] * tc.batch_size * cfg.model.context_length,
            "wall_time_s": st["wall"],
            "resumed_segments": st["segments"],
            "config": cfg.to_dict(),
            "provenance": {
                "git_commit": git_commit(), "torch": torch.__version__, "python": sys.version.split()[0],
                "device": dev.device_name(self.device), "device_type": self.device.type,
                "dtype": str(self.dtype).removeprefix("torch."), "compiled": self.compiled,
                "threads": torch.get_num_threads(),
                "data_key": self.data.folder.name, "text_sha256": self.data.meta["text_sha256"],
                "tokenizer_sha256": self.data.meta["tokenizer_sha256"],
                "train_tokens_sha256": self.data.meta["train"]["sha256"],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st["started"])),
                "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "host": os.uname().nodename,
            },
        })

    def history_table(self):
        """The long-format history as a pyarrow table (pandas is not imported by a train job: it
        would add ~0.6 s to each of the grid's many short jobs)."""
        import pyarrow as pa

        cols = list(zip(*self.state["history"])) or [()] * len(HISTORY_COLUMNS)
        types = (pa.int64(), pa.string(), pa.string(), pa.int64(), pa.string(), pa.float64())
        return pa.table({name: pa.array(col, type=t) for name, col, t in zip(HISTORY_COLUMNS, cols, types)})


def train(cfg: RunConfig, out: str | os.PathLike, work: str | os.PathLike = "work",
          threads: int | None = None, peak_file: str | os.PathLike | None = None) -> dict:
    """Train one run into ``out`` (metrics.json, history.parquet); returns the metrics dict."""
    out, work = Path(out), Path(work)
    threads = cfg.train.threads or threads
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    import yaml

    with atomic_path(out / "config.yaml") as tmp:  # the resolved config, beside its results
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    persist = peak_file is None  # an explicit cache file is read-only (the pipeline's peak_flops rule owns it)
    if peak_file is None:
        peak_file = work / "device" / "peak_flops.json"
    run = Run(cfg, out, work, Path(peak_file), persist)
    metrics = run.fit()
    with atomic_path(out / "history.parquet") as tmp:
        import pyarrow.parquet as pq

        pq.write_table(run.history_table(), tmp)
    write_json(out / "metrics.json", metrics)  # written last: its presence marks a finished run
    run.ckpt.unlink(missing_ok=True)
    return metrics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="run config YAML (variant, seed, model, data, train)")
    src.add_argument("--json", help="the run config as a JSON string (what the pipeline passes)")
    p.add_argument("--out", required=True, help="output folder (metrics.json, history.parquet)")
    p.add_argument("--work", default="work", help="work folder for token files and caches (default: work)")
    p.add_argument("--threads", type=int, help="torch threads (train.threads overrides)")
    p.add_argument("--peak-flops", help="read-only JSON cache of measured peak FLOP/s (default: WORK/device/peak_flops.json, updated)")
    args = p.parse_args(argv)
    try:
        cfg = RunConfig.from_dict(json.loads(args.json)) if args.json else RunConfig.from_yaml(args.config)
    except (ConfigError, DataError, OSError, ValueError) as e:
        print(f"error: {args.config or '--json'}: {e}", file=sys.stderr)
        return 2
    try:
        m = train(cfg, args.out, args.work, args.threads, args.peak_flops)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a crashed run is recorded, then reported as a failed job
        write_json(Path(args.out) / "crash.json", {"error": repr(e), "traceback": traceback.format_exc(),
                                                   "config": cfg.to_dict()})
        raise
    print(f"[{cfg.variant} seed={cfg.seed} lr={cfg.train.lr:g}] {m['status']}: final val loss "
          f"{m['final_val_loss']} nats, {m['tokens_per_s']:.0f} tok/s, MFU {m['mfu']:.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
