"""What a training run measures, kept beside the loop in workflows/train/loop.py rather than inside it.

``Recorder`` holds everything a run records and checkpoints with it: the long-format history
(step, kind, metric, layer, site, value), steady-state throughput, the divergence detector and the
best validation loss. ``layer_snapshot`` / ``Recorder.layer_stats`` take the per-layer statistics of
a statistics step (gradient norm before clipping, update/weight ratio, residual-stream moments,
max attention logit, output log Z, and ``weight_norms``: the Frobenius norm of each sublayer's weight
matrices and of the embedding, before the step's update). Every row is a statistic that models/statistics.py
declares (``Recorder.record`` takes its ``Statistic``). ``Recorder.metrics`` turns the state into ``metrics.json``.

Divergence: a run diverges when a loss is non-finite, or when the smoothed (EMA) train loss stays
above ℓ0 = ln(vocab) + ``divergence_margin`` for ``divergence_patience`` consecutive log checks.
``Recorder.check_divergence`` and ``Recorder.val`` return the reason (a string) or None; the loop in
``workflows.train.loop.fit`` ends on a reason. The recorder prints nothing: it formats (``progress``).
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models import count_params, flops_per_token
from models import statistics as S

from workflows.train import device as dev
from workflows.io import sanitize

HISTORY_COLUMNS = ("step", "kind", "metric", "layer", "site", "value")


@dataclass
class RunState:
    """What a run has done so far; saved in its checkpoint as a plain dict (``asdict``), as it always was."""
    step: int = 0  # steps completed (not advanced by the step at which the run diverged)
    history: list = field(default_factory=list)  # (step, kind, metric, layer, site, value) rows
    ema: float | None = None  # smoothed train loss (divergence detector)
    above: int = 0  # consecutive log checks with the EMA above ln(vocab) + margin
    timed_tokens: int = 0  # steady-state throughput: tokens and seconds of the timed steps
    timed_seconds: float = 0.0
    wall: float = 0.0  # wall time over all segments
    diverged: dict | None = None  # {"step", "reason"} once diverged
    started: float = field(default_factory=time.time)
    best_val: float = float("inf")
    segments: int = 0  # processes that worked on the run

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**d)


def vector_norm(tensors) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])).item()


def layer_params(model) -> dict[int, list[torch.Tensor]]:
    out: dict[int, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        layer = model.layer_of(name)
        if layer is not None:
            out.setdefault(layer, []).append(p)
    return out


def weight_matrices(model) -> dict[tuple[int, str], list[torch.Tensor]]:
    """The weight matrices (parameters of >= 2 dimensions: no norm gains, no biases) by (layer, site):
    each block's sublayers under their residual-stream site (``attn``, ``ffn``, or ``attn+ffn`` of a
    parallel block), and layer -1 for the token embedding (``embed``), a learned position table
    (``pos``) and an untied output head (``head``; a tied head is the embedding)."""
    out: dict[tuple[int, str], list[torch.Tensor]] = {}
    for i, block in enumerate(model.blocks):
        for site, sub in zip(block.sites, block.sublayers):
            out[(i, site)] = [p for p in sub.f.parameters() if p.ndim >= 2]
    seen = set()
    for site, mod in ((S.EMBED, model.tok_emb), (S.POS, model.pos), (S.HEAD, model.head)):
        ps = [p for p in (mod.parameters() if mod is not None else []) if p.ndim >= 2 and id(p) not in seen]
        seen.update(id(p) for p in ps)
        if ps:
            out[(-1, site)] = ps
    return {k: ps for k, ps in out.items() if ps}


@torch.no_grad()
def weight_norms(groups: dict[tuple[int, str], list[torch.Tensor]]) -> dict[tuple[int, str], float]:
    """Frobenius norm of each group of ``weight_matrices`` (the norm of all its entries together)."""
    return {k: vector_norm(ps) for k, ps in groups.items()}


@torch.no_grad()
def layer_snapshot(layers: dict[int, list[torch.Tensor]]) -> tuple[dict, dict]:
    """Per-layer gradient norms (before clipping) and a copy of the weights (before the update)."""
    grads = {i: vector_norm([p.grad for p in ps if p.grad is not None]) for i, ps in layers.items()}
    before = {i: [p.detach().clone() for p in ps] for i, ps in layers.items()}
    return grads, before


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The repository's commit (+ "-dirty"), once per process: a job's runs share it."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Recorder:
    """Everything one run records; ``state`` (a ``RunState``) is saved in its checkpoint.

    ``clock`` (a ``workflows.train.device.StepClock``) turns a step's tick into seconds; on an accelerator the
    ticks are device events, read when the interval's losses are flushed (one sync per log interval)."""

    def __init__(self, cfg, init_loss: float, bytes_per_token: float, clock=None):
        self.cfg, self.tc = cfg, cfg.train
        self.init_loss, self.bytes_per_token = init_loss, bytes_per_token
        self.clock = clock
        self.state = RunState()
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self.pending_ticks: list = []  # device-event ticks of timed steps, not yet read
        self.segment_start = time.time()
        self.final_score: dict | None = None  # final_eval: {"loss", "tokens"} of the final score

    @property
    def tag(self) -> str:
        return f"[{self.cfg.variant} seed={self.cfg.seed} lr={self.tc.lr:g}]"

    def record(self, step, stat: S.Statistic, value, layer=-1, site=""):
        self.state.history.append((step, stat.kind, stat.name, layer, site, float(value)))

    def bpb(self, nats: float) -> float:
        return nats / math.log(2) / self.bytes_per_token

    # ---- wall time: one segment per process that worked on the run ------------------------------
    def begin_segment(self) -> None:
        self.state.segments += 1
        self.segment_start = time.time()

    def close_segment(self) -> None:
        """Add the time since the segment (re)started and the timed steps not yet read; called before a
        checkpoint and at the end."""
        self.settle_ticks()
        now = time.time()
        self.state.wall += now - self.segment_start
        self.segment_start = now

    # ---- every step ------------------------------------------------------------------------------
    def step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, tick,
             timed: bool) -> None:
        """Keep the step's loss on the device (no sync); count its time if it is a plain steady step.
        ``tick`` is seconds (host clock) or a device-event pair read at the next flush."""
        if timed and step >= self.tc.timing_warmup_steps:
            self.state.timed_tokens += self.tc.batch_size * self.cfg.model.context_length
            if isinstance(tick, float):
                self.state.timed_seconds += tick
            else:
                self.pending_ticks.append(tick)
        self.pending.append((step, loss, grad_norm, lr))

    def settle_ticks(self) -> None:
        """Read the pending device-event ticks into timed_seconds (one sync for all of them)."""
        if self.pending_ticks:
            self.clock.settle()
            for tick in self.pending_ticks:
                self.state.timed_seconds += self.clock.seconds(tick)
            self.pending_ticks = []

    def flush(self) -> list[float]:
        """Move the pending losses to the host (one sync per log interval) and record them."""
        self.settle_ticks()
        if not self.pending:
            return []
        vals = torch.stack([torch.stack([l.float(), g.float()]) for _, l, g, _ in self.pending]).tolist()
        for (step, _, _, lr), (loss, gnorm) in zip(self.pending, vals):
            self.record(step, S.TRAIN_LOSS, loss)
            self.record(step, S.TRAIN_GRAD_NORM, gnorm)
            self.record(step, S.TRAIN_LR, lr)
        self.pending = []
        return [v[0] for v in vals]

    def check_divergence(self, step: int) -> str | None:
        """Flush; the reason the run diverged (a non-finite loss, or a smoothed loss stuck above
        ℓ0 + margin for ``divergence_patience`` checks), or None."""
        tc, st = self.tc, self.state
        for loss in self.flush():
            if not math.isfinite(loss):
                return f"non-finite train loss ({loss}) at step {step}"
            st.ema = loss if st.ema is None else tc.divergence_ema * st.ema + (1 - tc.divergence_ema) * loss
        threshold = self.init_loss + tc.divergence_margin
        st.above = st.above + 1 if st.ema > threshold else 0
        if tc.divergence_patience and st.above >= tc.divergence_patience:
            return (f"smoothed train loss {st.ema:.3f} stayed above ln(vocab)+"
                    f"{tc.divergence_margin} = {threshold:.3f} for {tc.divergence_patience} checks")
        return None

    def diverge(self, step: int, reason: str) -> None:
        """Record that the run diverged at ``step`` (the pending losses are flushed first)."""
        self.flush()
        self.state.diverged = {"step": step, "reason": reason}

    # ---- evaluation and per-layer statistics ------------------------------------------------------
    def final_eval(self, loss: float, tokens: int) -> None:
        """The run's final score: its loss on the final evaluation set (by default the whole validation split)."""
        self.final_score = {"loss": loss, "tokens": tokens}

    def val(self, step: int, loss: float) -> str | None:
        """Record a validation loss; the divergence reason if it is non-finite, else None."""
        self.record(step, S.VAL_LOSS, loss)
        self.record(step, S.VAL_BPB, self.bpb(loss))
        if math.isfinite(loss):
            self.state.best_val = min(self.state.best_val, loss)
            return None
        return f"non-finite validation loss at step {step}"

    def progress(self, step: int, loss: float, lr: float) -> str:
        """The progress line of a validation step (the loop prints it)."""
        ema = self.state.ema if self.state.ema is not None else float("nan")
        return (f"{self.tag} step {step}/{self.tc.steps} | train {ema:.4f} | val {loss:.4f} "
                f"({self.bpb(loss):.3f} bpb) | lr {lr:.2e}")

    @torch.no_grad()
    def layer_stats(self, step: int, st: dict, snapshot: tuple[dict, dict], layers: dict,
                    weights: dict | None = None) -> None:
        """Record a statistics step; ``weights``: ``weight_norms`` taken before the step's update."""
        grads, before = snapshot
        for row in st[S.RESIDUAL]:
            for stat, moment in ((S.RESID_MEAN, "mean"), (S.RESID_STD, "std"), (S.RESID_RMS, "rms")):
                self.record(step, stat, row[moment], row["layer"], row["site"])
            self.record(step, S.RESID_MAXABS, max(abs(row["min"]), abs(row["max"])), row["layer"], row["site"])
        for i, v in enumerate(st[S.ATTN_LOGIT_MAX.name]):
            self.record(step, S.ATTN_LOGIT_MAX, v, i)
        for i, ps in layers.items():
            self.record(step, S.GRAD_NORM, grads[i], i)
            delta = vector_norm([p - b for p, b in zip(ps, before[i])])
            self.record(step, S.UPDATE_RATIO, delta / max(vector_norm(before[i]), 1e-30), i)
        for (i, site), v in (weights or {}).items():
            self.record(step, S.WEIGHT_NORM, v, i, site)
        self.record(step, S.LOGZ_MEAN, st[S.LOGZ_MEAN.name])
        self.record(step, S.LOGZ_MAX, st[S.LOGZ_MAX.name])

    # ---- outputs ---------------------------------------------------------------------------------
    def metrics(self, model, device, dtype, compiled: bool, peak: dict, data, extra: dict | None = None) -> dict:
        cfg, tc, st = self.cfg, self.tc, self.state.to_dict()
        vals = [h for h in st["history"] if (h[1], h[2]) == S.VAL_LOSS.key]
        last = vals[-1][5] if vals else float("nan")  # the learning curve's last point (its small window set)
        score = self.final_score or {"loss": float("nan"), "tokens": 0}
        final = score["loss"]
        diverged = st["diverged"] is not None
        tps = st["timed_tokens"] / st["timed_seconds"] if st["timed_seconds"] > 0 else float("nan")
        fpt = flops_per_token(cfg.model, cfg.model.context_length)
        params = count_params(model)
        sheet = dev.datasheet_peak(dev.device_name(device), dtype)  # None: CPU, another GPU, or not bf16/fp16
        return sanitize({
            "variant": cfg.variant, "seed": cfg.seed, "lr": tc.lr,
            "status": "diverged" if diverged else "ok",
            "final_val_loss": float("nan") if diverged else final,
            "final_val_bpb": float("nan") if diverged else self.bpb(final),
            "last_val_loss": last,
            "final_eval_tokens": score["tokens"],
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
                               "statistics steps, " + ("each step timed by CUDA events, read once per log interval"
                                                       if dev.uses_events(device) else "device synchronised"),
            "flops_per_token": fpt,
            "flops_convention": "PaLM (Chowdhery et al. 2022, App. B): 6N + 12*L*H*Q*T, N = matmul weights "
                                "incl. the output projection",
            "peak_flops": peak["flops"], "peak_flops_source": peak["key"],
            "mfu": tps * fpt / peak["flops"] if math.isfinite(tps) else float("nan"),
            "peak_flops_datasheet": sheet["flops"] if sheet else float("nan"),
            "peak_flops_datasheet_source": sheet["source"] if sheet else None,
            "mfu_datasheet": tps * fpt / sheet["flops"] if sheet and math.isfinite(tps) else float("nan"),
            "mfu_note": "mfu: against peak_flops, the bf16/fp32 matmul rate measured on this device; mfu_datasheet: "
                        "against the NVIDIA datasheet's dense bf16 peak (NaN: not a known GPU, or not bf16/fp16)",
            "peak_mem_mb": dev.peak_memory_mb(device),  # since this run began (workflows.train.device.reset_peak_memory)
            "params": params["total"], "nonembed_params": params["nonembed"],
            "tokens_seen": st["step"] * tc.batch_size * cfg.model.context_length,
            "wall_time_s": st["wall"],
            "resumed_segments": st["segments"],
            "config": cfg.to_dict(),
            "provenance": {
                "git_commit": git_commit(), "torch": torch.__version__, "python": sys.version.split()[0],
                "device": dev.device_name(device), "device_type": device.type,
                "dtype": str(dtype).removeprefix("torch."), "compiled": compiled,
                "threads": torch.get_num_threads(),
                "data_key": data.folder.name, "text_sha256": data.meta["text_sha256"],
                "tokenizer_sha256": data.meta["tokenizer_sha256"],
                "train_tokens_sha256": data.meta["train"]["sha256"],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st["started"])),
                "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "host": os.uname().nodename,
                **(extra or {}),
            },
        })

    def history_table(self):
        """The long-format history as a pyarrow table (a train job does not import pandas)."""
        import pyarrow as pa

        cols = list(zip(*self.state.history)) or [()] * len(HISTORY_COLUMNS)
        types = (pa.int64(), pa.string(), pa.string(), pa.int64(), pa.string(), pa.float64())
        return pa.table({name: pa.array(col, type=t) for name, col, t in zip(HISTORY_COLUMNS, cols, types)})
