"""The training run: config errors, determinism, resume, divergence, schedule, recorded metrics."""
import json
import math

import pandas as pd
import pytest
import torch

from models import ConfigError
from workflows.train import loop as T
from workflows.data.corpus import DataConfig


def run_dict(corpus, **train):
    return {
        "variant": "t", "seed": 0,
        "data": {"source": str(corpus / "*.txt")},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "context_length": 16, "dropout": 0.1},
        "train": {"steps": 30, "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10, "eval_windows": 8,
                  "log_every": 5, "stats_every": 10, "checkpoint_every": 10, "timing_warmup_steps": 2, **train},
    }


@pytest.mark.parametrize("patch, field", [
    ({"train": {"lrr": 1}}, "lrr"),
    ({"train": {"no_decay": ["norms"]}}, "train.no_decay"),
    ({"model": {"norm": "groupnorm"}}, "norm='groupnorm'"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"train": {"compile": "yes"}}, "train.compile"),
])
def test_bad_run_config_fails_before_data(corpus, monkeypatch, patch, field):
    monkeypatch.setattr(T, "prepare", lambda *a, **k: pytest.fail("data loaded before validation"))
    d = run_dict(corpus)
    for k, v in patch.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) and k in d else v
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        T.RunConfig.from_dict(d)


def test_lr_schedule_warmup_then_cosine_to_floor():
    tc = T.TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert T.lr_at(0, tc) == pytest.approx(0.1) and T.lr_at(9, tc) == pytest.approx(1.0)
    assert T.lr_at(10, tc) == pytest.approx(1.0) and T.lr_at(99, tc) == pytest.approx(0.1)
    lrs = [T.lr_at(s, tc) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert T.lr_at(0, T.TrainConfig(steps=10, lr=2.0, warmup_steps=0)) == pytest.approx(2.0)


def test_param_groups_split_decay_from_norms_biases_embeddings():
    from models import ModelConfig, build

    m = build(ModelConfig(d_model=16, n_layers=1, n_heads=2, bias=True, norm="layernorm", position="learned",
                          tie_embeddings=False))
    decay, no_decay = T.param_groups(m, T.TrainConfig())
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert {"tok_emb.weight", "pos.weight", "final_norm.weight", "final_norm.bias"} <= nd
    assert all(n.endswith("bias") or "norm" in n or n in ("tok_emb.weight", "pos.weight") for n in nd)
    d = {names[id(p)] for p in decay["params"]}
    assert "head.weight" in d and all(n.endswith("weight") and "norm" not in n for n in d)
    assert len(d) + len(nd) == len(list(m.parameters()))
    decay, no_decay = T.param_groups(m, T.TrainConfig(no_decay=[]))
    assert not no_decay["params"]


def test_optimizer_is_fused_and_updates_like_the_for_loop_adamw():
    """make_optimizer's fused AdamW against torch's single-tensor AdamW (the reference implementation) on the
    same model, groups and gradients: equal parameters to float rounding after steps with weight decay."""
    from models import ModelConfig, build

    tc = T.TrainConfig(lr=3e-3, weight_decay=0.1)
    torch.manual_seed(0)
    a = build(ModelConfig(d_model=16, n_layers=1, n_heads=2, bias=True, context_length=8))
    b = build(ModelConfig(d_model=16, n_layers=1, n_heads=2, bias=True, context_length=8))
    b.load_state_dict(a.state_dict())
    start = {n: p.detach().clone() for n, p in a.named_parameters()}
    fused = T.make_optimizer(a, tc)
    assert all(g["fused"] for g in fused.param_groups)
    ref = torch.optim.AdamW(T.param_groups(b, tc), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps,
                            foreach=False)
    x = torch.randint(0, a.cfg.vocab_size, (4, 8))
    for _ in range(5):
        for m, opt in ((a, fused), (b, ref)):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
        assert not torch.equal(p, start[n]), n  # every parameter moved: the comparison is not of two idle models


def test_evaluation_is_the_mean_window_loss_and_training_goes_on_after_it(corpus, work):
    """Job.evaluate (under inference mode) against a naive evaluation: every validation window's summed
    cross-entropy under no_grad, divided by the tokens; then a training step still runs (nothing evaluation
    made is saved for backward)."""
    import torch.nn.functional as F

    from workflows.data.corpus import val_windows

    cfg = T.RunConfig.from_dict(run_dict(corpus, eval_windows=24))
    job = T.Job(cfg, work, work / "device" / "peak.json")
    model, _ = job.model_for(cfg)
    got = job.evaluate(cfg)
    vx, vy = val_windows(job.data.val, cfg.model.context_length, 24)
    model.eval()
    with torch.no_grad():
        want = sum(F.cross_entropy(model(x[None]).flatten(0, 1), y, reduction="sum").item() for x, y in zip(vx, vy))
    model.train()
    assert got == pytest.approx(want / vy.numel(), rel=1e-6)
    assert not torch.is_inference_mode_enabled()
    opt = T.make_optimizer(model, cfg.train)
    x, y = job.batch(cfg, 0)
    T.train_step(model, opt, x, y, cfg.train)
    assert job.evaluate(cfg) != got  # the step changed the weights the next evaluation sees


def read(out):
    return json.loads((out / "metrics.json").read_text()), pd.read_parquet(out / "history.parquet")


def test_run_records_everything_and_is_deterministic(corpus, work, tmp_path):
    cfg = T.RunConfig.from_dict(run_dict(corpus))
    m1 = T.train(cfg, tmp_path / "a", work, threads=1)
    T.train(cfg, tmp_path / "b", work, threads=1)
    (m1, h1), (m2, h2) = read(tmp_path / "a"), read(tmp_path / "b")
    pd.testing.assert_frame_equal(h1, h2)  # same (config, seed) on CPU: bit-identical history
    assert m1["final_val_loss"] == m2["final_val_loss"] < m1["init_loss"] == pytest.approx(math.log(256))
    for key in ("final_val_bpb", "best_val_loss", "tokens_per_s", "mfu", "peak_mem_mb", "params",
                "nonembed_params", "flops_per_token", "wall_time_s", "peak_flops"):
        assert m1[key] is not None and m1[key] > 0, key
    assert m1["status"] == "ok" and not m1["diverged"] and m1["steps_done"] == 30
    assert m1["config"]["train"]["lr"] == 3e-3 and m1["provenance"]["threads"] == 1
    assert {"git_commit", "torch", "device", "text_sha256", "tokenizer_sha256", "started", "ended"} <= set(m1["provenance"])
    assert not (tmp_path / "a" / "checkpoint.pt").exists() and not T.store_of(cfg, work).exists()
    assert (tmp_path / "a" / "config.yaml").exists()
    kinds = set(zip(h1.kind, h1.metric))
    for km in [("train", "loss"), ("train", "lr"), ("train", "grad_norm"), ("val", "loss"), ("val", "bpb"),
               ("layer", "resid_rms"), ("layer", "resid_std"), ("layer", "resid_mean"), ("layer", "resid_maxabs"),
               ("layer", "grad_norm"), ("layer", "update_ratio"), ("layer", "attn_logit_max"), ("logits", "logz_mean")]:
        assert km in kinds, km
    stats_steps = sorted(h1[h1.metric == "update_ratio"].step.unique())
    assert stats_steps == [0, 10, 20]
    assert sorted(h1[(h1.metric == "grad_norm") & (h1.kind == "layer")].layer.unique()) == [0, 1]
    assert (h1[h1.kind == "train"].groupby("metric").size() == 30).all()
    # bpb = nats / ln 2 / bytes-per-token (bytes tokenizer: 1 byte per token)
    assert m1["final_val_bpb"] == pytest.approx(m1["final_val_loss"] / math.log(2))


def die_at(monkeypatch, step_to_die: int, variant=None):
    """Make the next run (of ``variant``, if given) be killed when it asks for the batch of ``step_to_die``."""
    real_batch = T.Job.batch

    def dying(self, cfg, step):
        if step == step_to_die and (variant is None or cfg.variant == variant):
            raise KeyboardInterrupt("killed")
        return real_batch(self, cfg, step)

    monkeypatch.setattr(T.Job, "batch", dying)
    return real_batch


def test_killed_run_resumes_bit_identical(corpus, work, tmp_path, monkeypatch):
    cfg = T.RunConfig.from_dict(run_dict(corpus))
    T.train(cfg, tmp_path / "full", work, threads=1)
    real_batch = die_at(monkeypatch, 25)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path / "resumed", work, threads=1)
    assert (T.store_of(cfg, work) / "checkpoint.pt").exists() and not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(T.Job, "batch", real_batch)
    T.train(cfg, tmp_path / "resumed", work, threads=1)
    (m1, h1), (m2, h2) = read(tmp_path / "full"), read(tmp_path / "resumed")
    pd.testing.assert_frame_equal(h1, h2)
    assert m1["final_val_loss"] == m2["final_val_loss"] and m2["resumed_segments"] == 2
    assert not T.store_of(cfg, work).exists()  # a completed job removes its stores


def test_checkpoint_of_another_config_is_ignored(corpus, work, tmp_path, monkeypatch):
    cfg = T.RunConfig.from_dict(run_dict(corpus))
    real_batch = die_at(monkeypatch, 15)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path / "x", work, threads=1)
    monkeypatch.setattr(T.Job, "batch", real_batch)
    other = T.RunConfig.from_dict(run_dict(corpus, lr=1e-3))
    store = T.store_of(other, work)
    store.mkdir(parents=True)
    (T.store_of(cfg, work) / "checkpoint.pt").rename(store / "checkpoint.pt")  # a stale checkpoint in its store
    m = T.train(other, tmp_path / "x", work, threads=1)
    assert m["resumed_segments"] == 1 and m["config"]["train"]["lr"] == 1e-3 and m["steps_done"] == 30


def test_job_of_several_runs_equals_separate_runs(corpus, work, tmp_path):
    """One process, one model re-initialised in place per run: bit-identical to one process per run."""
    cfgs = [T.RunConfig.from_dict({**run_dict(corpus, lr=lr), "seed": seed}) for seed, lr in
            [(0, 3e-3), (0, 1e-2), (1, 3e-3)]]
    outs = [tmp_path / "job" / f"r{i}" for i in range(3)]
    T.run_job(cfgs, outs, work, threads=1)
    for i, cfg in enumerate(cfgs):
        T.train(cfg, tmp_path / "alone" / f"r{i}", work, threads=1)
        (m1, h1), (m2, h2) = read(outs[i]), read(tmp_path / "alone" / f"r{i}")
        pd.testing.assert_frame_equal(h1, h2)
        assert m1["final_val_loss"] == m2["final_val_loss"] and m1["seed"] == cfg.seed
    assert read(outs[0])[0]["final_val_loss"] != read(outs[2])[0]["final_val_loss"]  # seeds differ


def test_cut_off_job_keeps_finished_runs_and_resumes_the_cut_one(corpus, work, tmp_path, monkeypatch):
    """Killed during its second run: on restart (outputs deleted, as Snakemake does) the first run is
    copied from its store, not retrained, and the second resumes from its checkpoint."""
    import shutil

    cfgs = [T.RunConfig.from_dict({**run_dict(corpus, lr=lr), "variant": v}) for v, lr in
            [("first", 3e-3), ("second", 1e-2), ("third", 3e-3)]]
    outs = [tmp_path / "job" / c.variant for c in cfgs]
    real_batch = die_at(monkeypatch, 25, variant="second")
    with pytest.raises(KeyboardInterrupt):
        T.run_job(cfgs, outs, work, threads=1)
    first = read(outs[0])[0]
    assert (T.store_of(cfgs[1], work) / "checkpoint.pt").exists() and not outs[1].exists()
    shutil.rmtree(tmp_path / "job")  # Snakemake removes the outputs of an incomplete job
    monkeypatch.setattr(T.Job, "batch", real_batch)
    trained = []
    real_fit = T.fit
    monkeypatch.setattr(T, "fit", lambda job, cfg, store: trained.append(cfg.variant) or real_fit(job, cfg, store))
    T.run_job(cfgs, outs, work, threads=1)
    assert trained == ["second", "third"]
    again = read(outs[0])[0]
    assert again == first and again["resumed_segments"] == 1  # the finished run, as it was
    m2 = read(outs[1])[0]
    assert m2["resumed_segments"] == 2 and m2["steps_done"] == 30
    T.train(cfgs[1], tmp_path / "uncut", work, threads=1)
    pd.testing.assert_frame_equal(read(outs[1])[1], read(tmp_path / "uncut")[1])


def test_crashed_run_is_recorded_and_the_job_goes_on(corpus, work, tmp_path, monkeypatch):
    cfgs = [T.RunConfig.from_dict({**run_dict(corpus), "variant": v}) for v in ("bad", "good")]
    real_fit = T.fit

    def fit(job, cfg, store):
        if cfg.variant == "bad":
            raise RuntimeError("boom")
        return real_fit(job, cfg, store)

    monkeypatch.setattr(T, "fit", fit)
    with pytest.raises(RuntimeError, match="1 of 2 runs crashed"):
        T.run_job(cfgs, [tmp_path / c.variant for c in cfgs], work, threads=1)
    crash = json.loads((T.store_of(cfgs[0], work) / "crash.json").read_text())
    assert "boom" in crash["error"] and crash["config"]["variant"] == "bad"
    assert read(tmp_path / "good")[0]["status"] == "ok"


def test_nan_loss_is_recorded_as_divergence_not_raised(corpus, work, tmp_path, monkeypatch):
    cfg = T.RunConfig.from_dict(run_dict(corpus))
    real_step = T.train_step
    calls = []

    def poisoned(*a, **k):
        r = real_step(*a, **k)
        calls.append(1)
        return r._replace(loss=torch.tensor(float("nan"))) if len(calls) > 12 else r

    monkeypatch.setattr(T, "train_step", poisoned)
    m = T.train(cfg, tmp_path / "nan", work, threads=1)
    assert m["diverged"] and m["status"] == "diverged" and "non-finite" in m["diverged_reason"]
    assert m["diverged_step"] == 14 and m["final_val_loss"] is None  # detected at the log check after step 12
    assert (tmp_path / "nan" / "history.parquet").exists()


def test_huge_lr_diverges_early(corpus, work, tmp_path):
    cfg = T.RunConfig.from_dict(run_dict(corpus, lr=30.0, grad_clip=None, warmup_steps=0, steps=60,
                                         divergence_patience=3))
    m = T.train(cfg, tmp_path / "hot", work, threads=1)
    assert m["diverged"] and m["steps_done"] < 60
    assert "stayed above" in m["diverged_reason"] or "non-finite" in m["diverged_reason"]


def test_z_loss_pulls_log_partition_toward_zero(corpus, work, tmp_path):
    base = dict(steps=40, stats_every=39, lr=1e-2)
    m0 = T.train(T.RunConfig.from_dict(run_dict(corpus, **base)), tmp_path / "z0", work, threads=1)
    m1 = T.train(T.RunConfig.from_dict(run_dict(corpus, z_loss=1.0, **base)), tmp_path / "z1", work, threads=1)
    z = [read(tmp_path / n)[1].query("metric == 'logz_mean' and step == 39").value.item() for n in ("z0", "z1")]
    assert abs(z[1]) < abs(z[0])


def test_cli_reports_bad_config_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {norm_position: middle}\n")
    assert T.main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "norm_position='middle'" in err and "pre" in err and not (tmp_path / "o").exists()


def test_divergence_is_a_returned_reason_and_the_recorder_prints_nothing(corpus, capsys):
    cfg = T.RunConfig.from_dict(run_dict(corpus, divergence_patience=3))
    rec = T.Recorder(cfg, init_loss=math.log(256), bytes_per_token=1.0)
    for step in range(3):
        rec.step(step, torch.tensor(9.0), torch.tensor(1.0), 1e-3, 0.01, timed=True)
        reason = rec.check_divergence(step)  # no exception: a reason or None
        assert (reason is None) == (step < 2), (step, reason)
    assert "stayed above" in reason and rec.state.above == 3
    rec = T.Recorder(cfg, init_loss=math.log(256), bytes_per_token=1.0)
    rec.step(0, torch.tensor(float("nan")), torch.tensor(1.0), 1e-3, 0.01, timed=True)
    assert rec.check_divergence(0) == "non-finite train loss (nan) at step 0"
    assert rec.val(5, 3.0) is None and rec.state.best_val == 3.0
    assert rec.val(6, float("inf")) == "non-finite validation loss at step 6"
    assert "val 3.0000" in rec.progress(5, 3.0, 1e-3)
    assert capsys.readouterr().out == ""  # printing is the loop's
    assert isinstance(rec.state, T.RunState) and rec.state.to_dict()["history"][0][:3] == (0, "train", "loss")


def test_runs_of_one_model_with_different_eval_windows_use_their_own_windows(corpus, work, tmp_path):
    """Validation windows are cached by what defines them, not by the model: a job whose runs differ only in
    eval_windows evaluates each on its own windows, exactly as separate processes do."""
    cfgs = [T.RunConfig.from_dict(run_dict(corpus, eval_windows=n, steps=10)) for n in (8, 12)]
    T.run_job(cfgs, [tmp_path / "job" / f"w{i}" for i in range(2)], work, threads=1)
    for i, cfg in enumerate(cfgs):
        T.train(cfg, tmp_path / "alone" / f"w{i}", work, threads=1)
        (m1, h1), (m2, h2) = read(tmp_path / "job" / f"w{i}"), read(tmp_path / "alone" / f"w{i}")
        pd.testing.assert_frame_equal(h1, h2)
        assert m1["provenance"]["eval_batches"]["windows"] == cfg.train.eval_windows
    (w0, _), (w1, _) = read(tmp_path / "job" / "w0"), read(tmp_path / "job" / "w1")
    assert w0["last_val_loss"] != w1["last_val_loss"]  # the curves' own windows
    assert w0["final_val_loss"] == w1["final_val_loss"]  # one final set: the whole validation split
    assert w0["final_eval_tokens"] == w0["provenance"]["final_eval_batches"]["tokens"] > 12 * cfgs[1].model.context_length


def test_fp16_runs_scale_the_loss_and_unscale_before_clipping(corpus, work, tmp_path, monkeypatch):
    """fp16 autocast trains through a GradScaler (bf16 and fp32 do not): the loss is scaled before backward, the
    gradients are unscaled before clipping (so the recorded pre-clip norm is the true one) and the optimizer steps
    through the scaler; its state goes into the checkpoint."""
    calls = []

    class Counting(torch.amp.GradScaler):
        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def unscale_(self, optimizer):
            calls.append("unscale")
            return super().unscale_(optimizer)

        def step(self, optimizer, *a, **k):
            calls.append("step")
            return super().step(optimizer, *a, **k)

    monkeypatch.setattr(torch.amp, "GradScaler", Counting)
    cfg = T.RunConfig.from_dict(run_dict(corpus, steps=6, stats_every=0, checkpoint_every=3, dtype="float16"))
    m = T.train(cfg, tmp_path / "fp16", work, threads=1)
    assert m["status"] == "ok" and math.isfinite(m["final_val_loss"])
    assert calls[:3] == ["scale", "unscale", "step"] and calls.count("step") == 6
    calls.clear()
    T.train(T.RunConfig.from_dict(run_dict(corpus, steps=3, stats_every=0)), tmp_path / "fp32", work, threads=1)
    assert calls == []  # fp32: no scaler
