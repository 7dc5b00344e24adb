"""Where the time of a training step goes: a torch.profiler breakdown by operator class.

    python -m workflows.bench.opprofile --variants-json '{"baseline": RUN, "layernorm": RUN}' \\
        --out results/op_profile.parquet [--md results/op_profile.md] [--figure figures/op_profile.png] \\
        [--steps 5] [--warmup 2] [--threads 1]
    python -m workflows.bench.opprofile --plot results/op_profile.parquet --md op_profile.md --figure op_profile.png

The lecture's claim (Ivanov et al. 2021, "Data movement is all you need", BERT training on a V100): tensor
contractions are 99.8% of the FLOPs but 61% of the runtime, statistical normalisations (softmax and LayerNorm)
0.17% of the FLOPs but 25.5%, element-wise operators 0.03% but 13.5%. Here each variant's model trains for
one step unrecorded and ``warmup`` steps recorded and discarded (torch.profiler's schedule), then ``steps``
steps under ``torch.profiler.profile(record_shapes=True, with_flops=True)``. A step is the training loop's
(``workflows.train.step.train_step``): forward and ``step.losses`` (z-loss included), backward, then clipping, AdamW
(``train.make_optimizer``, its parameter groups) and ``zero_grad`` inside the ``record_function`` region
``OPTIMIZER_REGION``. Batches are random tokens of the run's shape, as in ``workflows.bench.speed``; on CUDA the step
runs under the loop's autocast dtype, eager (a compiled step fuses operators into generated kernels that have
no aten name: this is the eager step's answer).

Attribution (``attribute``), with self time so nothing is counted twice (a parent's time excludes its
children's): every recorded event's self time (``self_cpu_time_total``; on a GPU ``self_device_time_total``,
the kernels it launched) goes to one class of ``CLASSES``:

1. under ``OPTIMIZER_REGION``: ``optimizer`` (clipping, the AdamW step, its Python loop, zero_grad);
2. under a composite op of ``COMPOSITES`` (``aten::rms_norm``, ``aten::layer_norm``, ...: normalisation;
   ``aten::logsumexp`` of the z-loss, ``aten::_safe_softmax``: softmax-attention) or in the backward of an op
   that ran under one: that composite's class. A norm written as several ops (CPU ``F.rms_norm`` with
   autograd runs pow, mean, add, rsqrt, mul; its backward PowBackward0, MeanBackward1, ...) is thereby
   attributed to the norm, forward and backward. A backward node is matched to the forward op
   that created it by the autograd sequence number: the creator is the latest-starting forward event recorded
   with that number (ops that create no node record the current number without taking it);
3. otherwise by the aten op's name in ``OP_CLASSES`` (the table below); an autograd node's own time (its
   ``evaluate_function`` and ``XBackward0`` wrappers) takes the class of the forward op that created it;
4. the step's own self time (``ProfilerStep#``: Python between operators) and the device runtime's calls
   (``cudaLaunchKernel``, ...) are ``framework``; on a GPU
   ``framework`` is the step's wall time during which no kernel ran (the step ends with a synchronise).

An op name missing from the table lands in ``other`` and is listed in ``op_table``'s ``listed == False``
rows; tests/bench/test_opprofile.py profiles every variant of the shipped grids and requires none.

FLOPs are torch.profiler's (``with_flops``: it counts mm, addmm, bmm, baddbmm, convolutions, mul and add, by
shape), summed per class, so a native norm kernel (``native_layer_norm``) counts 0 and a decomposed one only
its muls and adds: the FLOP shares outside matmul and attention are lower bounds; the fused attention kernels, which it does not count, get the dense count of
``torch.utils.flop_counter`` (``ATTENTION_FLOPS``: QKᵀ and PV forward, 2·B·H·T·S·(d + d_v); the backward
with its recompute of QKᵀ, 2.5× the forward; no causal discount, as PaLM's 12·L·H·Q·T). A fused kernel does
its contractions and its softmax in one kernel whose time cannot be split, so its time and FLOPs both stay in
``softmax-attention``; the explicit path (soft-capped attention on CPU) shows its matmuls as ``matmul``.

The profiler adds a few microseconds to every op it records, so on a small CPU model the many small ops
(element-wise, views) weigh more than they do unprofiled: shares, not absolute times, are the result, and
they hold for this model size and device only.

Output: one row per (variant, class) — ``variant, class, flops, flop_share, time_us, time_share, device,
threads`` (per step, means over the profiled steps) and ``norm, params, tokens_per_step, steps,
step_us_unprofiled`` (the same steps timed without the profiler, on the host clock) — with each
variant's shares summing to 1; ``markdown`` writes it as a table with the normalisation time share of
LayerNorm vs RMSNorm variants; the figure (``workflows.plots.opprofile``) draws FLOP share beside time share per
class for each variant, with Ivanov et al.'s BERT/V100 numbers as a reference bar.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from workflows.train import device as dev
from workflows.train import step as S
from workflows.io import write_parquet, write_text

CLASSES = ("matmul", "normalisation", "element-wise", "softmax-attention", "optimizer", "other", "framework")
OPTIMIZER_REGION = "archbench::optimizer"
STEP_PREFIX = "ProfilerStep"
EVAL_PREFIX = "autograd::engine::evaluate_function: "
RUNTIME_PREFIXES = ("cuda", "cu", "hip")  # CUDA/ROCm runtime calls (kernel launches, syncs): host-side framework

# aten op name (without "aten::") -> class. "other" entries are listed on purpose: layout and view ops,
# copies, allocation, the embedding lookup and the loss's gather (nll_loss), scalar read-outs.
_TABLE = {
    "matmul": ("mm", "addmm", "bmm", "baddbmm", "addbmm", "linear", "matmul", "_addmm_activation", "mv",
               "addmv", "dot", "einsum", "_scaled_mm"),
    "normalisation": ("layer_norm", "native_layer_norm", "native_layer_norm_backward", "rms_norm",
                      "_fused_rms_norm", "_fused_rms_norm_backward", "group_norm", "native_group_norm",
                      "native_group_norm_backward", "batch_norm", "_batch_norm_impl_index", "native_batch_norm",
                      "native_batch_norm_backward", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
                      "_batch_norm_with_update", "_batch_norm_no_update", "batch_norm_backward", "cudnn_batch_norm",
                      "cudnn_batch_norm_backward"),
    "element-wise": ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "neg", "pow", "sqrt",
                     "rsqrt", "exp", "log", "tanh", "tanh_backward", "sigmoid", "sigmoid_backward", "silu",
                     "silu_backward", "gelu", "gelu_backward", "relu", "threshold_backward", "masked_fill",
                     "masked_fill_", "where", "dropout", "native_dropout", "native_dropout_backward", "sum", "mean",
                     "clamp", "clamp_min", "reciprocal", "lerp_", "addcmul_", "addcdiv_", "sqrt_", "abs", "sin",
                     "cos", "maximum", "minimum", "sgn", "exp_", "log_", "amax", "eq", "bitwise_not", "isneginf",
                     "all", "bernoulli_"),
    "softmax-attention": ("softmax", "_softmax", "_softmax_backward_data", "_safe_softmax", "log_softmax",
                          "_log_softmax", "_log_softmax_backward_data", "logsumexp", "scaled_dot_product_attention",
                          "_scaled_dot_product_attention_math", "_scaled_dot_product_flash_attention_for_cpu",
                          "_scaled_dot_product_flash_attention_for_cpu_backward",
                          "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
                          "_scaled_dot_product_efficient_attention",
                          "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention",
                          "_scaled_dot_product_cudnn_attention_backward", "_flash_attention_forward",
                          "_flash_attention_backward", "_efficient_attention_forward", "_efficient_attention_backward"),
    "other": ("view", "_unsafe_view", "reshape", "transpose", "t", "permute", "expand", "as_strided", "slice",
              "narrow", "select", "split", "split_with_sizes", "chunk", "unsqueeze", "squeeze", "flatten",
              "unflatten", "alias", "detach", "detach_", "contiguous", "clone", "copy_", "_to_copy", "to",
              "type_as", "empty", "empty_like", "empty_strided", "new_empty_strided", "zeros", "zeros_like", "ones",
              "ones_like", "full", "fill_", "zero_", "cat", "stack", "repeat_interleave", "repeat", "index_select",
              "index", "gather", "scatter", "embedding", "embedding_backward", "embedding_dense_backward",
              "nll_loss", "nll_loss_nd", "nll_loss_forward", "nll_loss_backward", "cross_entropy_loss",
              "result_type", "resolve_conj", "resolve_neg", "item", "_local_scalar_dense", "arange", "tril",
              "triu", "lift_fresh", "is_nonzero", "_reshape_alias", "expand_as", "view_as", "_foreach_norm",
              "_foreach_mul_", "linalg_vector_norm", "isfinite", "is_same_size", "slice_backward", "real",
              "scalar_tensor", "resize_"),
}
OP_CLASSES: dict[str, str] = {f"aten::{op}": cls for cls, ops in _TABLE.items() for op in ops}
for _name in ("torch::autograd::AccumulateGrad", EVAL_PREFIX + "torch::autograd::AccumulateGrad", "detach"):
    OP_CLASSES[_name] = "other"  # storing (or adding) a parameter's gradient, outside any autograd node
# composite ops -> the class of their whole subtree and of the backward of every op in it
COMPOSITES = {**{f"aten::{op}": "normalisation" for op in ("layer_norm", "rms_norm", "_fused_rms_norm",
                                                           "native_layer_norm", "group_norm", "batch_norm")},
              **{f"aten::{op}": "softmax-attention" for op in ("logsumexp", "_safe_softmax")}}


def _attention_flops():
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def fwd(shapes):  # (query, key, value, ...)
        return sdpa_flop_count(*map(tuple, shapes[:3]))

    def bwd(shapes):  # (grad_out, query, key, value, ...)
        return sdpa_backward_flop_count(*map(tuple, shapes[:4]))

    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    return {**{f"aten::{n}": fwd for n in names}, **{f"aten::{n}_backward": bwd for n in names}}


# fused attention kernels -> FLOPs from their recorded input shapes (torch.profiler reports none for them)
ATTENTION_FLOPS = _attention_flops()


def event_flops(e) -> int:
    """The profiler's FLOPs of one event, or the analytic count of a fused attention kernel."""
    if e.flops:
        return int(e.flops)
    fn = ATTENTION_FLOPS.get(e.name)
    return int(fn(e.input_shapes)) if fn is not None and e.input_shapes else 0


# ------------------------------------------------------------------------------------------------
def _children(e):
    return sorted(e.cpu_children, key=lambda c: c.time_range.start)


def attribute(events, on_device: bool = False) -> pd.DataFrame:
    """Recorded events of the profiled steps -> one row per event with self time: name, class, how
    ("region", "composite", "table", "node", "step", "unlisted"), flops, time_us (module docstring, Attribution)."""
    cpu = [e for e in events if getattr(e.device_type, "name", "CPU") == "CPU"]
    roots = sorted((e for e in cpu if e.cpu_parent is None), key=lambda e: e.time_range.start)

    # 1. the forward op that created each autograd node: the latest-starting forward event with its number
    creator: dict[int, tuple[float, str, str | None]] = {}  # seq -> (start, name, class of its composite)

    def scan(e, composite: str | None, skip: bool):
        skip = skip or e.name == OPTIMIZER_REGION or e.name.startswith(EVAL_PREFIX)
        composite = composite or COMPOSITES.get(e.name)
        if not skip and e.sequence_nr >= 0 and e.name.startswith("aten::"):
            if e.sequence_nr not in creator or e.time_range.start >= creator[e.sequence_nr][0]:
                creator[e.sequence_nr] = (e.time_range.start, e.name, composite)
        for c in _children(e):
            scan(c, composite, skip)

    for r in roots:
        scan(r, None, False)

    # 2. every event's self time and FLOPs, with the context passed down its subtree
    rows = []

    def walk(e, ctx: str | None, node: tuple | None):
        name = e.name
        if name == OPTIMIZER_REGION:
            ctx = "optimizer"
        elif ctx is None and name in COMPOSITES:
            ctx = COMPOSITES[name]
        elif name.startswith(EVAL_PREFIX) and e.sequence_nr >= 0:
            node = creator.get(e.sequence_nr)
            if ctx is None and node is not None:
                ctx = node[2]
        if ctx is not None:
            cls, how = ctx, "region" if ctx == "optimizer" else "composite"
        elif name.startswith(STEP_PREFIX) or name.startswith(RUNTIME_PREFIXES):
            cls, how = "framework", "step"
        elif name in OP_CLASSES:
            cls, how = OP_CLASSES[name], "table"
        elif node is not None and not name.startswith("aten::"):  # an autograd node's own wrappers
            cls, how = OP_CLASSES.get(node[1], "other"), "node"
        else:
            cls, how = "other", "unlisted"
        t = e.self_device_time_total if on_device else e.self_cpu_time_total
        rows.append({"name": name, "class": cls, "how": how, "flops": event_flops(e), "time_us": float(t)})
        for c in _children(e):
            walk(c, ctx, node)

    for r in roots:
        walk(r, None, None)
    out = pd.DataFrame(rows, columns=["name", "class", "how", "flops", "time_us"])
    if on_device:  # the step's wall time during which no kernel ran
        wall = sum(r.cpu_time_total for r in roots if r.name.startswith(STEP_PREFIX))
        idle = max(0.0, wall - out.time_us.sum())
        out = pd.concat([out, pd.DataFrame([{"name": "device idle", "class": "framework", "how": "step",
                                             "flops": 0, "time_us": idle}])], ignore_index=True)
    return out


def op_table(events, on_device: bool = False) -> pd.DataFrame:
    """Per (op name, class): count, flops, time_us and ``listed`` (the name is in OP_CLASSES or is a
    wrapper the rules place: a step, a region, an autograd node) — where ``other`` came from."""
    a = attribute(events, on_device)
    a["listed"] = a.how != "unlisted"
    g = a.groupby(["name", "class", "listed"], sort=False)
    return g.agg(count=("time_us", "size"), flops=("flops", "sum"), time_us=("time_us", "sum")).reset_index()


def breakdown(events, on_device: bool = False, steps: int = 1) -> pd.DataFrame:
    """One row per class of CLASSES (all of them, zeros included): flops, time_us per step and their shares."""
    a = attribute(events, on_device)
    g = a.groupby("class").agg(flops=("flops", "sum"), time_us=("time_us", "sum")).reindex(CLASSES, fill_value=0)
    g = g.reset_index()
    g["flops"], g["time_us"] = g.flops / steps, g.time_us / steps
    for col, share in (("flops", "flop_share"), ("time_us", "time_share")):
        total = g[col].sum()
        g[share] = g[col] / total if total > 0 else 0.0
    return g[["class", "flops", "flop_share", "time_us", "time_share"]]


# ------------------------------------------------------------------------------------------------
def optimizer_region(phase: str):
    """The step's ``phase`` contexts here: the update (unscaling, clipping, AdamW, zero_grad) inside
    ``OPTIMIZER_REGION``; forward and backward unmarked."""
    return record_function(OPTIMIZER_REGION) if phase == "update" else contextlib.nullcontext()


class ProfiledStep:
    """One variant's model and optimizer on random batches of its run config's shape; ``step`` is the training
    loop's step (``workflows.train.step.train_step``: eager forward + ``losses``, backward, clipping, AdamW,
    zero_grad) with its update inside OPTIMIZER_REGION, then a synchronise."""

    def __init__(self, run: dict, device: torch.device):
        from models import build

        from workflows.train.loop import RunConfig, make_optimizer

        self.cfg = RunConfig.from_dict(run)
        torch.manual_seed(self.cfg.seed)
        self.model = build(self.cfg.model).to(device)
        self.opt = make_optimizer(self.model, self.cfg.train)  # the training loop's AdamW and groups
        self.device, self.dtype = device, dev.resolve_dtype(self.cfg.train.dtype, device)
        self.scaler = S.grad_scaler(device, self.dtype)  # an fp16 run's loss scaler, as the loop has it
        tc = self.cfg.train
        g = torch.Generator().manual_seed(self.cfg.seed)
        shape = (tc.batch_size, self.cfg.model.context_length + 1)
        self.batch = torch.randint(0, self.cfg.model.vocab_size, shape, generator=g).to(device)
        self.tokens = tc.batch_size * self.cfg.model.context_length
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self) -> None:
        x, y = self.batch[:, :-1], self.batch[:, 1:]
        S.train_step(self.model, self.opt, x, y, self.cfg.train, dtype=self.dtype, scaler=self.scaler,
                     phase=optimizer_region)
        dev.synchronize(self.device)


def profile_steps(stepper, steps: int = 5, warmup: int = 2):
    """One unrecorded step, ``warmup`` recorded and discarded (the profiler's warm-up), then ``steps``
    profiled steps; return the profiled steps' events."""
    if steps < 1 or warmup < 1:
        raise ValueError(f"steps={steps} and warmup={warmup} must be at least 1")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if stepper.device.type == "cuda" else [])
    got = {}
    sched = schedule(wait=1, warmup=warmup, active=steps, repeat=1)
    with profile(activities=activities, record_shapes=True, with_flops=True, schedule=sched,
                 on_trace_ready=lambda p: got.setdefault("events", p.events())) as prof:
        for _ in range(1 + warmup + steps):
            stepper.step()
            prof.step()
    return got["events"]


def measure(runs: dict, steps: int = 5, warmup: int = 2, device: str | None = None) -> pd.DataFrame:
    """{variant: run dict} -> the long table (module docstring, Output). Every run config is validated
    before anything is profiled."""
    if not isinstance(runs, dict) or not runs:
        raise ValueError("variants: expected a non-empty mapping {variant: run config dict}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    from workflows.train.loop import RunConfig

    for v, r in runs.items():
        try:
            RunConfig.from_dict(r)
        except ValueError as e:
            raise type(e)(f"variant {v!r}: {e}") from None
    dv = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    frames = []
    for v, r in runs.items():
        s = ProfiledStep(r, dv)
        b = breakdown(profile_steps(s, steps, warmup), on_device=dv.type == "cuda", steps=steps)
        t0 = time.perf_counter()  # the same steps unprofiled: what recording every op costs
        for _ in range(steps):
            s.step()
        plain_us = (time.perf_counter() - t0) / steps * 1e6
        b.insert(0, "variant", v)
        b["device"], b["threads"] = dev.device_name(dv), torch.get_num_threads()
        b["norm"], b["params"], b["tokens_per_step"], b["steps"] = s.cfg.model.norm, s.params, s.tokens, steps
        b["step_us_unprofiled"] = plain_us
        frames.append(b)
        del s
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------
# Ivanov et al. 2021, BERT-large training on a V100 (their Table: share of FLOPs and of runtime by operator
# class). Their "statistical normalisation" is softmax and LayerNorm together.
IVANOV = {"label": "BERT, V100 (Ivanov et al. 2021)",
          "flop_share": {"matmul": 0.9980, "normalisation": 0.0017, "element-wise": 0.0003},
          "time_share": {"matmul": 0.610, "normalisation": 0.255, "element-wise": 0.135}}


def norm_shares(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant: its norm and the normalisation time and FLOP shares."""
    n = df[df["class"] == "normalisation"]
    return n[["variant", "norm", "time_share", "flop_share", "time_us"]].reset_index(drop=True)


def norm_line(df: pd.DataFrame) -> str:
    """'normalisation time share: baseline (rmsnorm) 6.1% · layernorm (layernorm) 4.9%' (and the ratio of
    the LayerNorm to the RMSNorm mean when both kinds were profiled)."""
    n = norm_shares(df)
    parts = [f"{r.variant} ({r.norm}) {r.time_share:.1%}" for r in n.itertuples()]
    line = "normalisation time share: " + " · ".join(parts)
    ln, rms = n[n.norm == "layernorm"], n[n.norm == "rmsnorm"]
    if len(ln) and len(rms) and rms.time_us.mean() > 0:
        line += (f"; LayerNorm / RMSNorm normalisation time per step: {ln.time_us.mean() / rms.time_us.mean():.2f}x")
    return line


def scale_text(df: pd.DataFrame) -> str:
    """The figure's scale and device line."""
    p = sorted(set(df.params.astype(int))) if "params" in df else []
    from workflows.analysis.scale import human

    params = (human(p[0]) if len(p) == 1 else f"{human(p[0])}–{human(p[-1])}") + " params" if p else "params unknown"
    tok = f" · {human(int(df.tokens_per_step.iloc[0]))} tokens/step" if "tokens_per_step" in df else ""
    steps = f" · mean of {int(df.steps.iloc[0])} profiled steps" if "steps" in df else ""
    devices = ", ".join(sorted(set(map(str, df.device))))
    threads = ", ".join(map(str, sorted(set(df.threads))))
    cpu = "" if "cuda" in devices.lower() or "nvidia" in devices.lower() else " — on CPU it is a CPU's answer"
    return f"scale: {params}{tok}{steps} · device: {devices}, {threads} thread(s){cpu}"


def markdown(df: pd.DataFrame) -> str:
    steps = df.groupby("variant", sort=False).agg(prof=("time_us", "sum"), plain=("step_us_unprofiled", "first"))
    timing = "step time profiled / unprofiled: " + " · ".join(
        f"{v} {r.prof / 1e3:.1f} / {r.plain / 1e3:.1f} ms" for v, r in steps.iterrows())
    lines = ["# Where the time goes: operator classes of one training step (torch.profiler)", "",
             scale_text(df), "", norm_line(df), "", timing, "",
             "| variant | class | GFLOP/step | FLOP share | ms/step | time share |", "|---|---|---:|---:|---:|---:|"]
    for r in df.itertuples():
        lines.append(f"| {r.variant} | {r[2]} | {r.flops / 1e9:.4f} | {r.flop_share:.2%} | {r.time_us / 1e3:.3f} | "
                     f"{r.time_share:.1%} |")
    ref = IVANOV
    lines += ["", f"Reference, {ref['label']}: " + ", ".join(
        f"{c} {ref['flop_share'][c]:.2%} of FLOPs / {ref['time_share'][c]:.1%} of runtime" for c in ref["flop_share"])
        + " (their normalisation is softmax and LayerNorm together).", "",
        "Self time per class (workflows/bench/opprofile.py): the optimizer region holds clipping, AdamW and zero_grad; "
        "normalisation includes the ops of a norm written as several ops and their backward; fused attention "
        "kernels stay whole in softmax-attention, their FLOPs counted analytically; framework is Python between "
        "operators (on a GPU, the time no kernel ran).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants-json", help="{variant: run config dict} (workflows.grid.grid.Grid.run_dict)")
    p.add_argument("--out", help="op_profile.parquet; omit with --plot")
    p.add_argument("--plot", type=Path, help="an existing op_profile.parquet: only write its table (--md) and figure "
                                             "(--figure)")
    p.add_argument("--md", help="markdown table (default: --out with .md)")
    p.add_argument("--figure", help="figure .png (a .pdf is written beside it); default: none")
    p.add_argument("--steps", type=int, default=5, help="profiled steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="profiler warm-up steps (after one unrecorded step)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the grid's per-job threads)")
    args = p.parse_args(argv)
    if args.plot:  # an existing table: its markdown and figure only
        if not (args.md or args.figure):
            p.error("--plot needs --md and/or --figure")
        df = pd.read_parquet(args.plot)
    else:
        if not (args.variants_json and args.out):
            p.error("--variants-json and --out are required (or --plot TABLE with --md/--figure)")
        if args.steps < 1 or args.warmup < 1 or args.threads < 1:
            p.error(f"--steps={args.steps}, --warmup={args.warmup} and --threads={args.threads} must be >= 1")
        try:
            runs = json.loads(args.variants_json)
        except json.JSONDecodeError as e:
            p.error(f"--variants-json is not valid JSON: {e}")
        torch.set_num_threads(args.threads)
        df = measure(runs, args.steps, args.warmup)
        write_parquet(args.out, df)
    md = markdown(df)
    if args.md or args.out:
        write_text(args.md or Path(args.out).with_suffix(".md"), md)
    if args.figure:
        from workflows.plots.opprofile import figure

        figure(df, args.figure, CLASSES, IVANOV, scale_text(df))
    if not args.plot:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
