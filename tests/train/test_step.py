"""workflows.train.step: the one training step that the loop, the speed bench, the operator profile, the
micro-benchmarks and the probes call.

References: (a) the speed bench's step and the loop's step, from the same weights (one ``models.build`` under a
fixed seed), on the same batch and dropout RNG, give the same loss, gradients and update (torch.equal, fp32
CPU); (b) every other path calls the same function (a counting wrapper in its place); (c) a short training run's
per-step losses, gradient norms and final score are the literal values the loop produced before the step moved
into its own module."""
from __future__ import annotations

import pytest
import torch

from models import ModelConfig, build
from workflows.bench import micro, opprofile as op, probes as P, speed
from workflows.train import loop as T
from workflows.train import step as S

from test_train import run_dict  # the training tests' tiny run (same folder)

CPU = torch.device("cpu")


def params(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def recording(real, record: dict, prepare=None):
    """A train_step that records its first call: weights before and after, the batch, the gradients the step
    clips (at on_grads: complete, unscaled) and its result; ``prepare(model, x, y)`` may set the inputs first."""

    def step(model, opt, x, y, tc, **k):
        if record:
            return real(model, opt, x, y, tc, **k)
        if prepare is not None:
            x, y = prepare(model, x, y)
        inner = k.pop("on_grads", None)

        def on_grads():
            record["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
            if inner is not None:
                inner()

        record.update(before=params(model), x=x.clone(), y=y.clone(), kwargs=dict(k))
        r = real(model, opt, x, y, tc, on_grads=on_grads, **k)
        record.update(after=params(model), result=r)
        return r

    return step


# ---- (a) the speed bench's step is the loop's step ------------------------------------------------
def test_speed_bench_step_equals_the_loops_step(corpus, work, tmp_path, monkeypatch):
    # min_lr_ratio 1, no warmup: the loop's scheduled LR at step 0 is exactly train.lr, the LR the bench keeps,
    # so the updates compare too; z-loss and dropout on, so both terms and the RNG take part
    run = run_dict(corpus, steps=1, warmup_steps=0, min_lr_ratio=1.0, z_loss=1e-2, stats_every=0,
                   checkpoint_every=0, eval_every=1, timing_warmup_steps=0)
    cfg = T.RunConfig.from_dict(run)
    torch.manual_seed(1234)
    ref = build(ModelConfig.from_dict({**run["model"], "vocab_size": cfg.model.vocab_size})).state_dict()
    g = torch.Generator().manual_seed(99)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.context_length + 1), generator=g)
    x0, y0 = tokens[:, :-1], tokens[:, 1:]

    def same_start(model, x, y):  # the loop's step starts from the reference weights, batch and dropout RNG
        model.load_state_dict(ref)
        torch.manual_seed(7)
        return x0, y0

    loop = {}
    monkeypatch.setattr(T, "train_step", recording(S.train_step, loop, same_start))
    T.train(cfg, tmp_path / "loop", work, threads=1)
    assert loop and loop["kwargs"]["lr"] == cfg.train.lr and loop["kwargs"]["loss_fn"] is not None

    bench = {}
    monkeypatch.setattr(S, "train_step", recording(S.train_step, bench))
    s = speed.Stepper(run, CPU)
    s.model.load_state_dict(ref)
    s.batch = tokens.clone()
    torch.manual_seed(7)
    s.step()
    assert bench and torch.equal(bench["x"], loop["x"]) and torch.equal(bench["y"], loop["y"])
    for key in ("before", "grads", "after"):
        assert bench[key].keys() == loop[key].keys()
        for n in loop[key]:
            assert torch.equal(bench[key][n], loop[key][n]), (key, n)
    assert torch.equal(bench["result"].loss, loop["result"].loss)
    assert torch.equal(bench["result"].grad_norm, loop["result"].grad_norm)
    assert any(not torch.equal(loop["before"][n], loop["after"][n]) for n in loop["before"])  # it did update


# ---- (b) every path calls the one function -----------------------------------------------------------
def test_every_path_calls_the_one_step(corpus, work, monkeypatch):
    calls = []
    real = S.train_step

    def counting(model, opt, x, y, tc, **k):
        calls.append(k)
        return real(model, opt, x, y, tc, **k)

    assert T.train_step is S.train_step and T.losses is S.losses  # the loop's names are the step module's
    monkeypatch.setattr(S, "train_step", counting)
    tiny = {"variant": "v", "seed": 0, "data": {"source": str(corpus / "*.txt")},
            "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 8}, "train": {"batch_size": 2}}

    speed.Stepper(tiny, CPU).step()
    assert len(calls) == 1 and calls[0]["loss_fn"] is not None

    op.ProfiledStep(tiny, CPU).step()
    assert len(calls) == 2 and calls[1]["phase"] is op.optimizer_region

    probe = P.Probe("feature_corr", {"a": {}}, P.ProbeSettings.from_dict(
        {"seeds": [0], "batch_size": 2, "model": {"d_model": 16, "n_heads": 2, "context_length": 8},
         "train_steps": 3, "corr_depth": 1}), {}, {"source": str(corpus / "*.txt"), "tokenizer": "bytes"}, work)
    cfg, model = probe.model("a", 1, 0)
    probe.train(cfg, model, 0)
    assert len(calls) == 5 and [c["lr"] for c in calls[2:]] == [T.lr_at(s, T.TrainConfig(
        steps=3, lr=probe.settings.train_lr, warmup_steps=0)) for s in range(3)]

    class Local(T.RunConfig):  # the micro-benchmark's model on the test corpus
        @classmethod
        def from_dict(cls, d):
            return T.RunConfig.from_dict({**d, "data": {"source": str(corpus / "*.txt")},
                                          "model": {**d["model"], "context_length": 16}})

    monkeypatch.setattr(micro, "RunConfig", Local)
    b = micro.Bench("tiny", 2, str(work), 2, "off")
    b.step(0)
    b.step(1)
    assert len(calls) == 7 and [c["stats"] for c in calls[5:]] == [True, False] and calls[5]["on_grads"] is not None
    phases = micro.phase_times(b, 2)
    assert len(calls) == 9 and set(phases) == {"forward", "backward", "optimizer"}


# ---- (c) the loop's results did not move ---------------------------------------------------------------
# Recorded from the loop before its step moved into workflows.train.step (fp32 and fp16 autocast on a CPU,
# torch 2.13): train loss and pre-clip gradient norm per step, and the final validation loss. Bit-identical on
# the machine that recorded them; compared within a tolerance because another CPU's kernels (AVX2 vs AVX-512,
# oneDNN's fp16 paths) may differ in the last bits. What the fp32 pin catches, measured (largest relative change
# of a train loss): the z-loss dropped 5e-5, no clipping 2.2e-4, LR 3e-3 -> 2.9e-3 4.6e-3; not a change of the clip
# threshold itself (0.5 -> 0.6: 2e-7, AdamW is nearly invariant to the gradient's scale) nor a reordering of
# operations. test (a) compares the bench's step with the loop's exactly.
PINNED = {
    "fp32": {
        "train": dict(steps=12, stats_every=5, z_loss=1e-3, grad_clip=0.5, checkpoint_every=0, eval_every=6),
        "loss": [5.518408298492432, 5.486330032348633, 5.500258445739746, 5.442182540893555, 5.295915126800537,
                 5.131475448608398, 5.003326416015625, 4.89965295791626, 4.833446979522705, 4.807928085327148,
                 4.746646404266357, 4.735003471374512],
        "grad_norm": [1.6004105806350708, 1.5902031660079956, 1.5481888055801392, 1.7300339937210083,
                      1.9141391515731812, 1.4708960056304932, 1.4633586406707764, 1.5379834175109863,
                      1.3970317840576172, 1.4260514974594116, 1.3513778448104858, 1.5349528789520264],
        "final": 4.723203510449831,
        "rel": 1e-5,
    },
    "fp16": {
        "train": dict(steps=6, stats_every=0, checkpoint_every=0, dtype="float16"),
        "loss": [5.518414497375488, 5.4863152503967285, 5.5002570152282715, 5.442105770111084, 5.295805931091309,
                 5.13140344619751],
        "grad_norm": [1.6007801294326782, 1.5902897119522095, 1.5477291345596313, 1.7287230491638184,
                      1.911516547203064, 1.4707142114639282],
        "final": 5.013463840898137,
        "rel": 1e-3,
    },
}


def test_a_short_run_matches_the_loop_before_the_step_moved(corpus, work, tmp_path):
    import pandas as pd

    for name, pin in PINNED.items():
        m = T.train(T.RunConfig.from_dict(run_dict(corpus, **pin["train"])), tmp_path / name, work, threads=1)
        h = pd.read_parquet(tmp_path / name / "history.parquet")
        train = h[h.kind == "train"].sort_values("step")
        rel = pin["rel"]
        assert train[train.metric == "loss"].value.tolist() == pytest.approx(pin["loss"], rel=rel), name
        assert train[train.metric == "grad_norm"].value.tolist() == pytest.approx(pin["grad_norm"], rel=rel), name
        assert m["final_val_loss"] == pytest.approx(pin["final"], rel=rel), name
