"""Training: one job of the pipeline trains several runs (variant, seed, LR) in one process.

    python -m workflows.train --config RUN.yaml --out DIR [--threads N] [--work work]
    python -m workflows.train --json '[RUN, RUN, ...]' --out DIR DIR ... # what a pipeline job calls
    python -m workflows.train --json ... --out ... --assigned-lrs lr_assignment.json  # an LR-pilot grid's evaluation job

A run config has five keys: ``variant`` (a label), ``seed``, ``model`` (a ``models.ModelConfig``),
``data`` (a ``DataConfig``) and ``train`` (a ``TrainConfig``): ``RunConfig``, in workflows/grid/config.py. Unknown
keys or values fail before any data is loaded, naming the field.

Reading order: ``fit`` is the training loop of one run (nanoGPT-style, top to bottom; it ends on a
divergence reason with a ``break``); its step (forward, loss, backward, clipping, AdamW) is
``workflows.train.step.train_step``, the one the speed bench, the operator profile and the probes call too;
``Job`` is what the runs of a job share (device, data, one model
re-initialised in place per run, so a compiled job compiles once: tests/train/test_gpu_path.py counts it);
``run_job`` walks the job's runs; measurement lives in ``workflows.train.measure`` (``Recorder``, ``RunState``)
and the device-specific pieces (step clock, peak memory, memory cap) in ``workflows.train.device``.

On an accelerator nothing blocks the host per step: steps are timed by CUDA events read once per log
interval, losses stay on the device until then; a job whose token stream fits its share of the GPU memory budget
(workflows.train.memory.TOKENS_ON_DEVICE_SHARE) keeps it there and moves a run's batch offsets there once, any
other gathers each step's windows on the host and copies them from pinned memory without blocking.
On CPU every step is timed by the host clock, as it always was.

Training: AdamW with decay / no-decay groups, linear warmup then cosine decay to a floor, gradient
clipping (the pre-clip norm is recorded), optional output z-loss ``coef · log²Z``, dropout; fp32 on
CPU, bf16 autocast on CUDA; optional ``torch.compile`` (the forward and the loss in one graph; the
statistics steps run the eager module, so their host read-outs never split or recompile the graph;
evaluation batches are padded to one shape when compiled). A job's GPU memory is capped at its budget
(``--gpu-mem-mb`` or $ARCHBENCH_GPU_MEM_MB) so jobs sharing a GPU cannot starve each other.

Divergence (``workflows.train.measure``): a non-finite loss, or a smoothed train loss stuck above ln(vocab) +
margin, stops the run and is recorded as ``diverged`` with its step and reason: a result, not an error.

Runs, stores and resumption: each run trains in its *store*, ``WORK/runs/<config hash>/``, which
holds its checkpoint (every ``checkpoint_every`` steps) and, once finished, its outputs; they are then
copied (atomically, ``metrics.json`` last) to the run's output folder. Snakemake deletes the
declared outputs of a job that was cut off, but not the stores: the restarted job copies the runs
that had finished, resumes the cut-off run from its checkpoint and trains the rest. On CPU a
resumed run ends bit-identical to an uninterrupted one (batches are a pure function of (seed,
step); RNG, optimizer and bookkeeping state are checkpointed). A job that completes removes its
stores, so a deliberate re-run (changed config or code) retrains from scratch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import yaml

from models import build, parity
from models.checks import ConfigError
from models.init import reset_parameters
from models.norms import NORMS
from workflows.data.corpus import DataError, gather_windows, prepare, train_batch, val_windows, window_starts

# the run's configuration lives with the grid (no torch); its names stay importable from here
from workflows.grid.config import RunConfig, TrainConfig  # noqa: F401
from workflows.io import atomic_path, write_json
from workflows.train import device as dev
from workflows.train.measure import Recorder, RunState, layer_params, layer_snapshot, weight_matrices, weight_norms
from workflows.train.memory import tokens_on_device

# the one training step, shared with the benches; losses and train_step stay importable from here
from workflows.train.step import autocast, forward_loss, grad_scaler, losses, train_step  # noqa: F401

# torch.compile backend of a compiled job: inductor; tests pick a cheap one ("aot_eager") or a counting one
COMPILE_BACKEND = os.environ.get("ARCHBENCH_COMPILE_BACKEND") or "inductor"
IGNORE_INDEX = -100  # target of a padding window in a fixed-shape evaluation batch (F.cross_entropy's default)


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
            if isinstance(mod, norm_types) or getattr(mod, "is_norm", False):  # is_norm: a user's norm
                group = "norm"
            elif pname == "bias":
                group = "bias"
            elif isinstance(mod, torch.nn.Embedding) or mod is getattr(model, "pos", None):
                group = "embedding"
            else:
                group = "weight"
            (no_decay if group in tc.no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW, torch's fused kernel on every device: the same update as the single-tensor (for-loop)
    implementation to float rounding (tests/train/test_train.py), and on CPU 2.3% faster per step of the default
    baseline (34.6 vs 33.8 ms, side by side in one process). CPU references made before commit 3c50a00 used the
    for-loop one."""
    return torch.optim.AdamW(param_groups(model, tc), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps,
                             fused=True)


def fingerprint(cfg: RunConfig) -> str:
    """sha256 of the resolved run config: names a run's store and guards its checkpoint."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
class Job:
    """What the runs of one job share: the device and dtype, the token data, the peak FLOP/s, the memory
    cap, and one model (built, and compiled if asked, once; ``model_for`` re-draws its weights in place
    per run, so the compiled graphs are reused: parameters keep their identity)."""

    def __init__(self, first: RunConfig, work: Path, peak_file: Path, peak_persist: bool = True,
                 gpu_mem_mb: float | None = None):
        self.device = dev.resolve_device(first.train.device)
        self.dtype = dev.resolve_dtype(first.train.dtype, self.device)
        budget = dev.gpu_mem_budget_mb(gpu_mem_mb)
        self.mem_fraction = dev.cap_memory(self.device, budget)
        self.data_cfg, self.data = first.data, prepare(first.data, work)
        # on CUDA the token stream lives on the GPU (int32, windows gathered there) only when it fits its share of the
        # job's budget (or, without one, of the GPU's memory): workflows.train.memory.tokens_on_device, the rule the
        # budget check counts by; otherwise each step's windows are gathered on the host and copied (``batch``)
        on_gpu = self.device.type == "cuda" and tokens_on_device(
            first.data, len(self.data.train),
            budget or torch.cuda.get_device_properties(self.device).total_memory / 2**20)
        self.tokens_on = "device" if on_gpu else "host"  # recorded in each run's provenance (train_tokens_on)
        self.train_tokens = (torch.from_numpy(self.data.train.astype("int32")).to(self.device) if on_gpu
                             else self.data.train)
        self.peak = dev.peak_flops(self.device, self.dtype, peak_file, persist=peak_persist)
        self.model_cfg, self.model, self.fwd, self.loss_fn, self.compiled = None, None, None, None, False
        self.val_cache: dict = {}  # (context, eval_windows, batch_size, fixed shape) -> evaluation batches
        self.offsets, self.offsets_key = None, None  # a run's window starts, on the device (CUDA)
        self.neighbours: list = []  # a run's samples of the other compute processes on its GPU (None: CPU/unknown)

    def model_for(self, cfg: RunConfig):
        """The job's model with freshly drawn weights for ``cfg.seed`` (rebuilt only if the architecture
        or the compile setting differs from the previous run's)."""
        compile_on = cfg.train.compile == "on" or (cfg.train.compile == "auto" and self.device.type == "cuda")
        if (cfg.model, compile_on) != (self.model_cfg, self.compiled):
            model = self.model = build(cfg.model).to(self.device)
            self.fwd = torch.compile(model, backend=COMPILE_BACKEND) if compile_on else model
            # forward and loss in one (compiled) graph: the train step's loss_fn
            self.loss_fn = forward_loss(model, COMPILE_BACKEND if compile_on else None)
            self.model_cfg, self.compiled = cfg.model, compile_on
        torch.manual_seed(cfg.seed)
        reset_parameters(self.model, cfg.model)
        self.model.train()
        return self.model, self.fwd

    def begin_run(self, cfg: RunConfig) -> None:
        """Per run: reset the peak-memory window and the GPU-sharing samples (the first taken now); with the
        tokens on the GPU move the run's batch offsets there once."""
        dev.reset_peak_memory(self.device)
        self.neighbours = [dev.gpu_neighbours(self.device)]
        if isinstance(self.train_tokens, torch.Tensor):
            tc, T = cfg.train, cfg.model.context_length
            key = (cfg.seed, tc.steps, tc.batch_size, T)
            if key != self.offsets_key:
                starts = torch.stack([window_starts(len(self.train_tokens), tc.batch_size, T, cfg.seed, s)
                                      for s in range(tc.steps)])
                if self.device.type == "cuda":
                    starts = starts.pin_memory()
                self.offsets = starts.to(self.device, non_blocking=True)
                self.window = torch.arange(T + 1, device=self.device)
                self.offsets_key = key

    def autocast(self):
        return autocast(self.device, self.dtype)

    def batch(self, cfg: RunConfig, step: int):
        """(x, y) of ``step`` on the job's device: gathered where the tokens live, the same ids either way
        (workflows.data.corpus.train_batch)."""
        key = (cfg.seed, cfg.train.steps, cfg.train.batch_size, cfg.model.context_length)
        if self.offsets is not None and key == self.offsets_key and step < len(self.offsets):
            return gather_windows(self.train_tokens, self.offsets[step], self.window)
        x, y = train_batch(self.train_tokens, cfg.train.batch_size, cfg.model.context_length, cfg.seed, step)
        if self.device.type == "cuda":  # from pinned memory the copies do not block the host (nanoGPT's get_batch)
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def eval_batches(self, cfg: RunConfig, final: bool = False) -> dict:
        """The validation windows of ``cfg`` in batches (the curve's ``eval_windows``, or with ``final`` the
        final score's ``final_eval_windows``: by default every window of the split), cached by what defines
        them: context length, number of windows, batch size and whether the shape is fixed. A compiled job pads the last batch to the
        full batch size (padding windows have ignored targets), so every evaluation batch has one shape and
        the graph stays static; an eager job evaluates the short last batch as it is."""
        B, fixed = cfg.train.batch_size, self.compiled
        n = cfg.train.final_eval_windows if final else cfg.train.eval_windows
        key = (cfg.model.context_length, n, B, fixed)
        if key not in self.val_cache:
            vx, vy = val_windows(self.data.val, cfg.model.context_length, n)
            batches, padded, targets = [], 0, 0
            for i in range(0, len(vx), B):
                x, y = vx[i:i + B], vy[i:i + B]
                if fixed and len(x) < B:
                    padded = B - len(x)
                    x = torch.cat([x, vx[:1].expand(padded, -1)])
                    y = torch.cat([y, torch.full((padded, y.shape[1]), IGNORE_INDEX, dtype=y.dtype)])
                if fixed:  # one layout too (windows are strided views): dynamo guards on strides
                    x, y = x.contiguous(), y.contiguous()
                targets += int((y != IGNORE_INDEX).sum())
                batches.append((x.to(self.device), y.to(self.device)))
            self.val_cache[key] = {"batches": batches, "targets": targets, "record": {
                "windows": len(vx), "tokens": targets, "batch_size": B, "batches": len(batches), "padded_windows": padded,
                "fixed_shape": fixed or len(vx) % B == 0}}
        return self.val_cache[key]

    def evaluate(self, cfg: RunConfig, final: bool = False) -> float:
        """Mean validation loss (nats/token) over the learning curve's fixed windows, or with ``final`` over
        the final score's (``eval_batches``); one host read-out. An eager job evaluates under
        ``torch.inference_mode`` (no autograd bookkeeping: 1.14x the evaluation throughput of ``no_grad`` on the
        CPU default's model, side by side), so a module must not cache tensors it makes in forward for later
        training steps; a compiled job keeps ``no_grad``, under which its evaluation is one graph (inference mode
        would compile another)."""
        self.model.eval()
        ev, sums = self.eval_batches(cfg, final), []
        with torch.no_grad() if self.compiled else torch.inference_mode():
            for x, y in ev["batches"]:
                with self.autocast():
                    logits = self.fwd(x)
                sums.append(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        self.model.train()
        n = ev["targets"]  # the real (not padding) targets: every token of the windows
        total = 0.0
        for v in torch.stack(sums).tolist():  # summed in float64 in batch order, as .item() per batch did
            total += v
        return total / n


# ---- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: Path, cfg: RunConfig, model, opt, rec: Recorder, device: torch.device,
                    scaler=None) -> None:
    """Model, optimizer, the run's state and the RNG states the run uses: the CPU generator and, on CUDA,
    the job's device only (not every visible GPU, which would open a context on each)."""
    rec.close_segment()
    cuda_rng = ({"device": str(device), "state": torch.cuda.get_rng_state(device)}
                if device.type == "cuda" else None)
    with atomic_path(path) as tmp:
        torch.save({"fingerprint": fingerprint(cfg), "model": model.state_dict(), "opt": opt.state_dict(),
                    "state": rec.state.to_dict(), "rng": torch.get_rng_state(), "cuda_rng": cuda_rng,
                    "scaler": scaler.state_dict() if scaler is not None else None}, tmp)


def load_checkpoint(path: Path, cfg: RunConfig, model, opt, rec: Recorder, device, scaler=None) -> bool:
    """Restore a run from ``path``; False (and a fresh start) if it is missing, torn or another config's.
    Loads on the CPU (the RNG states must stay CPU ByteTensors); load_state_dict moves the tensors to
    the model's and optimizer's device."""
    if not path.exists():
        return False
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a torn checkpoint is discarded, not fatal
        print(f"[train] ignoring unreadable checkpoint {path}: {e}", file=sys.stderr)
        return False
    if ck.get("fingerprint") != fingerprint(cfg):
        print(f"[train] ignoring checkpoint {path}: it belongs to another config", file=sys.stderr)
        return False
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    rec.state = RunState.from_dict(ck["state"])
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["rng"])
    cuda_rng = ck.get("cuda_rng")
    if cuda_rng is not None and device.type == "cuda":
        if isinstance(cuda_rng, list):  # older checkpoints: one state per visible GPU
            cuda_rng = {"state": cuda_rng[device.index if device.index is not None else torch.cuda.current_device()]}
        torch.cuda.set_rng_state(cuda_rng["state"], device)
    return True


# ---- the training loop ----------------------------------------------------------------------------
def validate(job: Job, cfg: RunConfig, rec: Recorder, step: int, lr: float) -> str | None:
    """Evaluate, record, print the progress line; the divergence reason (non-finite loss) or None."""
    loss = job.evaluate(cfg)
    job.neighbours.append(dev.gpu_neighbours(job.device))  # who shares the GPU, sampled at each evaluation
    reason = rec.val(step, loss)
    print(rec.progress(step, loss, lr), flush=True)
    return reason


def fit(job: Job, cfg: RunConfig, store: Path):
    """Train one run from its last checkpoint in ``store`` (or step 0) to the end or to divergence.
    Returns (metrics dict, history as a pyarrow table)."""
    tc = cfg.train
    model, _ = job.model_for(cfg)
    opt = make_optimizer(model, tc)
    # fp16 autocast needs loss scaling (bf16 and fp32 do not): gradients are unscaled before clipping
    scaler = grad_scaler(job.device, job.dtype)
    clock = dev.StepClock(job.device)
    rec = Recorder(cfg, init_loss=math.log(cfg.model.vocab_size), bytes_per_token=job.data.bytes_per_token,
                   clock=clock)
    ckpt = store / "checkpoint.pt"
    resumed = load_checkpoint(ckpt, cfg, model, opt, rec, job.device, scaler)
    job.begin_run(cfg)
    rec.begin_segment()
    layers, weights = layer_params(model), weight_matrices(model)
    snap = {}

    def on_grads():  # a statistics step: gradients before clipping, weights before this step's update
        snap["layers"], snap["norms"] = layer_snapshot(layers), weight_norms(weights)

    step, diverged = rec.state.step, None  # diverged: the reason the run stopped early, or None
    if not resumed:
        torch.manual_seed(cfg.seed + 1)  # dropout RNG: independent of whatever ran before
        diverged = validate(job, cfg, rec, 0, lr_at(0, tc))
    while diverged is None and step < tc.steps:
        tick = clock.start()
        lr = lr_at(step, tc)
        x, y = job.batch(cfg, step)
        stats = tc.stats_every > 0 and step % tc.stats_every == 0
        # the one training step (workflows.train.step), looked up here so that tests can interrupt or poison a run
        r = train_step(model, opt, x, y, tc, loss_fn=job.loss_fn, dtype=job.dtype, lr=lr, stats=stats,
                       scaler=scaler, on_grads=on_grads if stats else None)
        if stats:
            rec.layer_stats(step, r.stats, snap["layers"], layers, snap["norms"])
        rec.step(step, r.loss, r.grad_norm.detach(), lr, clock.stop(tick), timed=not stats)
        step += 1
        if step % tc.log_every == 0 or step == tc.steps:
            diverged = rec.check_divergence(step - 1)  # the interval's one host read-out
        if diverged is None and (step % tc.eval_every == 0 or step == tc.steps):
            diverged = validate(job, cfg, rec, step, lr)
        if diverged is not None:
            break  # the step that diverged is not counted as done
        rec.state.step = step
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < tc.steps:
            save_checkpoint(ckpt, cfg, model, opt, rec, job.device, scaler)
    if diverged is not None:
        rec.diverge(max(step - 1, 0), diverged)
        print(f"{rec.tag} diverged: {diverged}", flush=True)
    else:  # the final score: the whole validation split (or train.final_eval_windows), not the curve's windows
        final = job.eval_batches(cfg, final=True)["record"]
        rec.final_eval(job.evaluate(cfg, final=True), final["tokens"])
        print(f"{rec.tag} final val {rec.final_score['loss']:.4f} on {final['tokens']} tokens", flush=True)
    rec.close_segment()
    job.neighbours.append(dev.gpu_neighbours(job.device))
    backend = getattr(COMPILE_BACKEND, "__name__", str(COMPILE_BACKEND)) if job.compiled else None
    extra = {"eval_batches": job.eval_batches(cfg)["record"], "final_eval_batches": job.eval_batches(cfg, True)["record"],
             "compile_backend": backend,
             "gpu_mem_fraction": job.mem_fraction,
             "train_tokens_on": job.tokens_on,  # "device": the token stream on the GPU; "host": memory-mapped
             # other compute processes on this GPU at the start, each evaluation and the end of this segment:
             # tokens/s and MFU of a run that shared it depend on them (None: CPU, or no process listing)
             "gpu_neighbours": dev.neighbour_summary(job.neighbours)}
    metrics = rec.metrics(model, job.device, job.dtype, job.compiled, job.peak, job.data, extra)
    if custom_modules := parity.report(cfg.model):  # parity of the user's modules vs the built-ins they replace
        metrics["custom_modules"] = custom_modules  # (models/custom.py)
    return metrics, rec.history_table()


# ---- a job: several runs, each through its store ----------------------------------------------------
def store_of(cfg: RunConfig, work: Path) -> Path:
    return work / "runs" / fingerprint(cfg)[:24]


def write_run(folder: Path, cfg: RunConfig, metrics: dict, history) -> None:
    """config.yaml, history.parquet, then metrics.json (its presence marks a finished run), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with atomic_path(folder / "history.parquet") as tmp:
        pq.write_table(history, tmp)
    write_json(folder / "metrics.json", metrics)


def publish(store: Path, out: Path) -> None:
    """Copy a finished run from its store to its output folder (metrics.json last, each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "history.parquet", "metrics.json"):
        with atomic_path(out / name) as tmp:
            shutil.copyfile(store / name, tmp)


def run_job(cfgs: list[RunConfig], outs: list, work="work", threads: int | None = None,
            peak_file=None, gpu_mem_mb: float | None = None) -> list[dict]:
    """Train ``cfgs`` into ``outs`` in this process. A run already finished in its store is copied,
    a cut-off one resumes from its checkpoint. A crashed run writes ``crash.json`` into its store and
    the job goes on with the others, then raises. When every run succeeded the stores are removed.
    ``gpu_mem_mb``: the job's GPU memory budget (default $ARCHBENCH_GPU_MEM_MB; none: uncapped)."""
    work = Path(work)
    threads = next((c.train.threads for c in cfgs if c.train.threads), None) or threads
    if threads:
        torch.set_num_threads(threads)
    persist = peak_file is None  # an explicit cache file is read-only (the pipeline's peak_flops rule owns it)
    peak_file = Path(peak_file) if peak_file else work / "device" / "peak_flops.json"
    job, results, crashed = None, [], []
    for cfg, out in zip(cfgs, map(Path, outs)):
        store = store_of(cfg, work)
        if not (store / "metrics.json").exists():
            try:
                if job is None or job.data_cfg != cfg.data:  # (a pipeline job's runs share one data config)
                    job = Job(cfg, work, peak_file, persist, gpu_mem_mb)
                metrics, history = fit(job, cfg, store)
            except DataError:
                raise
            except Exception as e:  # a crashed run is recorded, the job goes on and fails at the end
                write_json(store / "crash.json", {"error": repr(e), "traceback": traceback.format_exc(),
                                                  "config": cfg.to_dict()})
                print(f"[{cfg.variant} seed={cfg.seed} lr={cfg.train.lr:g}] crashed: {e!r} "
                      f"(traceback in {store / 'crash.json'})", file=sys.stderr, flush=True)
                crashed.append(store)
                continue
            write_run(store, cfg, metrics, history)
            (store / "checkpoint.pt").unlink(missing_ok=True)
        publish(store, out)
        results.append(json.loads((out / "metrics.json").read_text()))
    if crashed:
        raise RuntimeError(f"{len(crashed)} of {len(cfgs)} runs crashed: {[str(s) for s in crashed]}")
    for cfg in cfgs:
        shutil.rmtree(store_of(cfg, work), ignore_errors=True)
    return results


def train(cfg: RunConfig, out: str | os.PathLike, work: str | os.PathLike = "work",
          threads: int | None = None, peak_file: str | os.PathLike | None = None) -> dict:
    """Train one run into ``out`` (config.yaml, history.parquet, metrics.json); returns its metrics."""
    return run_job([cfg], [out], work, threads, peak_file)[0]


def assign_lrs(cfgs: list[RunConfig], assignment: dict) -> list[RunConfig]:
    """``cfgs`` with each run's train.lr replaced by the LR the pilot assigned to its variant
    (``assignment["variants"][variant]["lr"]``, written by ``workflows.analysis.pilot``)."""
    out = []
    for cfg in cfgs:
        a = (assignment.get("variants") or {}).get(cfg.variant)
        if a is None or not isinstance(a.get("lr"), (int, float)) or not a["lr"] > 0:
            raise ConfigError(f"the LR assignment has no LR for variant {cfg.variant!r}; it assigns "
                              f"{sorted((assignment.get('variants') or {}))}")
        out.append(replace(cfg, train=replace(cfg.train, lr=float(a["lr"]))))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="run config YAML (variant, seed, model, data, train)")
    src.add_argument("--json", help="a run config, or a list of them, as JSON (what the pipeline passes)")
    p.add_argument("--out", required=True, nargs="+", help="output folder(s), one per run")
    p.add_argument("--work", default="work", help="work folder for token files, run stores and caches (default: work)")
    p.add_argument("--threads", type=int, help="torch threads (train.threads overrides)")
    p.add_argument("--gpu-mem-mb", type=float, help="this job's GPU memory budget in MB (the train rule's "
                   "resources.gpu_mem_mb; default $ARCHBENCH_GPU_MEM_MB): caps its share of a shared GPU")
    p.add_argument("--assigned-lrs", help="an LR pilot's assignment (workflows.analysis.pilot): train every run at the LR "
                   "assigned to its variant instead of its train.lr")
    p.add_argument("--peak-flops", help="read-only JSON cache of measured peak FLOP/s (default: WORK/device/peak_flops.json, updated)")
    args = p.parse_args(argv)
    try:
        raw = json.loads(args.json) if args.json else [RunConfig.from_yaml(args.config).to_dict()]
        raw = raw if isinstance(raw, list) else [raw]
        cfgs = [RunConfig.from_dict(d) for d in raw]
        if len(cfgs) != len(args.out):
            raise ConfigError(f"{len(cfgs)} run config(s) but {len(args.out)} --out folder(s)")
        if args.assigned_lrs:
            cfgs = assign_lrs(cfgs, json.loads(Path(args.assigned_lrs).read_text()))
    except (ConfigError, DataError, OSError, ValueError) as e:
        print(f"error: {args.config or '--json'}: {e}", file=sys.stderr)
        return 2
    try:
        results = run_job(cfgs, args.out, args.work, args.threads, args.peak_flops, args.gpu_mem_mb)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for m in results:
        print(f"[{m['variant']} seed={m['seed']} lr={m['lr']:g}] {m['status']}: final val loss "
              f"{m['final_val_loss']} nats, {m['tokens_per_s']:.0f} tok/s, MFU {m['mfu']:.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
