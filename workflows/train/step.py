"""The one training step: what the training loop (``workflows.train.loop.fit``), the speed bench
(``workflows.bench.speed``), the operator profile (``workflows.bench.opprofile``), the micro-benchmarks
(``workflows.bench.micro``) and the trained probes (``workflows.bench.probes``) all run, so that a speed or
profile claim is made on the arithmetic the training runs do.

``train_step`` does, in order:

1. with ``lr``: set the learning rate of every optimizer parameter group (the loop's warmup-cosine schedule,
   ``workflows.train.loop.lr_at``; the benches leave the optimizer's own);
2. forward and loss (phase ``"forward"``) under the run's autocast dtype (fp32: autocast off): the forward and
   ``losses`` in one (compiled, when the run compiles) function ``loss_fn``; on a statistics step the eager module
   with ``stats=True`` instead, so its host read-outs stay out of the compiled graph;
3. backward (phase ``"backward"``) of the trained loss, cross-entropy + z-loss (scaled first by an fp16 run's
   ``GradScaler``);
4. the update (phase ``"update"``): unscale the gradients (fp16), call ``on_grads()`` (the loop's per-layer
   statistics read the gradients before clipping and the weights before the update there), clip the global
   gradient norm to ``train.grad_clip`` (without a limit when it is null: the norm is still taken and returned),
   the optimizer step (through the scaler for fp16, which then adapts its scale) and ``zero_grad(set_to_none=True)``.

What a caller adds around it is a parameter, not a copy: ``lr`` (the schedule), ``stats`` and ``on_grads`` (the
loop's statistics), ``scaler`` (fp16), ``loss_fn`` (the compiled forward + loss) and ``phase``, a context manager
per phase (the operator profile's ``record_function`` region around the update; the micro-benchmark's
synchronised phase timers). The helpers here build the pieces the callers share: ``losses``, ``forward_loss``
(the forward and loss as one function, compiled or not), ``autocast`` and ``grad_scaler``.

This module imports nothing from ``workflows.train.loop`` (the loop imports it); ``tc`` is any object with the
``TrainConfig`` fields ``z_loss`` and ``grad_clip``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


def losses(logits: torch.Tensor, y: torch.Tensor, z_loss: float):
    """(cross-entropy, cross-entropy + z_loss · mean log²Z): the loss reported and the loss trained on."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    total = loss + z_loss * torch.logsumexp(logits.float(), dim=-1).pow(2).mean() if z_loss else loss
    return loss, total


def forward_loss(model: torch.nn.Module, backend=None):
    """``loss_fn(x, y, z_loss) -> losses(model(x), y, z_loss)``: the forward and the loss as one function,
    compiled as one graph by ``torch.compile`` with ``backend`` when it is given (eager when None)."""

    def loss_fn(x, y, z_loss):  # forward and loss in one (compiled) graph
        return losses(model(x), y, z_loss)

    return torch.compile(loss_fn, backend=backend) if backend is not None else loss_fn


def autocast(device: torch.device | str, dtype: torch.dtype):
    """The run's autocast region on ``device``'s type: ``dtype`` (bf16, fp16), or off for fp32."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(kind, dtype=dtype, enabled=dtype != torch.float32)


def grad_scaler(device: torch.device, dtype: torch.dtype):
    """An fp16 run's loss scaler (``torch.amp.GradScaler``); None for bf16 and fp32, which need none."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


class StepResult(NamedTuple):
    """What one step returns, all still on the device (nothing is read to the host)."""

    loss: torch.Tensor  # the batch's cross-entropy (without the z-loss term), detached
    grad_norm: torch.Tensor  # the global gradient norm before clipping
    stats: dict | None  # the model's per-layer statistics of a statistics step, else None


def _no_phase(name: str):
    return contextlib.nullcontext()


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, tc, *,
               loss_fn: Callable | None = None, dtype: torch.dtype = torch.float32, lr: float | None = None,
               stats: bool = False, scaler=None, on_grads: Callable[[], None] | None = None,
               phase: Callable[[str], contextlib.AbstractContextManager] | None = None) -> StepResult:
    """One training step of ``model`` on the batch (``x``, ``y``), in the order of the module docstring:
    set ``lr`` (if given) → forward + loss under ``dtype``'s autocast → backward of the trained loss →
    unscale (``scaler``) → ``on_grads()`` → clip to ``tc.grad_clip`` (none: no limit) → optimizer step →
    ``zero_grad(set_to_none=True)``.

    ``loss_fn``: the forward and loss as one function (``forward_loss``; the job's compiled one), default the
    eager ``losses(model(x), y, z_loss)``; a ``stats`` step runs ``model(x, stats=True)`` eagerly instead.
    ``scaler``: an fp16 run's ``GradScaler`` (``grad_scaler``). ``on_grads``: called once the gradients are
    complete and unscaled, before clipping and the update. ``phase``: ``phase(name)`` returns a context manager
    entered around each phase, ``"forward"``, ``"backward"`` and ``"update"`` (unscale, ``on_grads``, clipping,
    the optimizer step and zero_grad). Returns ``StepResult(loss, grad_norm, stats)``."""
    phase = phase or _no_phase
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    with phase("forward"), autocast(x.device, dtype):
        if stats:
            logits, st = model(x, stats=True)
            loss, total = losses(logits, y, tc.z_loss)
        else:
            (loss, total), st = (loss_fn or forward_loss(model))(x, y, tc.z_loss), None
    with phase("backward"):
        (scaler.scale(total) if scaler is not None else total).backward()
    with phase("update"):
        if scaler is not None:
            scaler.unscale_(opt)
        if on_grads is not None:
            on_grads()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)
        if scaler is not None:  # skips the step on inf/nan gradients and adapts the scale
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    return StepResult(loss.detach(), grad_norm, st)
