"""The accelerator path of the training loop, proven on the CPU: host syncs per log interval (not per
step), device-side batch offsets, checkpoints that resume on a GPU, peak memory per run, the memory cap
of a shared GPU, flex soft-capped attention, the sustained peak-FLOP/s benchmark, fixed-shape
evaluation, the compile + bf16 path, and that a job compiles its model once. CUDA is stubbed where a
test needs it (nothing here imitates a GPU run's numbers); tests marked ``gpu`` need a real one."""
import copy
import json
import math
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from workflows.train import device as dev
from workflows.train import loop as T
from workflows.data.corpus import train_batch

REPO = Path(__file__).resolve().parents[2]


def run_dict(corpus, model=None, **train):
    return {
        "variant": "g", "seed": 0,
        "data": {"source": str(corpus / "*.txt")},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "context_length": 16,
                  "dropout": 0.1, **(model or {})},
        "train": {"steps": 30, "batch_size": 4, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10, "eval_windows": 8,
                  "log_every": 5, "stats_every": 10, "checkpoint_every": 10, "timing_warmup_steps": 2, **train},
    }


def history(out):
    return pd.read_parquet(out / "history.parquet")


# ---- 1. no per-step host sync on an accelerator ---------------------------------------------------
class FakeEvent:
    """Stands in for torch.cuda.Event(enable_timing=True): records the host clock, counts its syncs."""
    syncs = 0

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        FakeEvent.syncs += 1

    def elapsed_time(self, end):
        return (end.t - self.t) * 1000.0


def count_syncs(monkeypatch):
    calls = []
    real = dev.synchronize
    monkeypatch.setattr(dev, "synchronize", lambda d: calls.append(d) or real(d))
    return calls


def test_event_timed_loop_syncs_once_per_log_interval_not_per_step(corpus, work, tmp_path, monkeypatch):
    cfg = T.RunConfig.from_dict(run_dict(corpus, steps=40, log_every=10, eval_every=20, checkpoint_every=20))
    calls = count_syncs(monkeypatch)
    T.train(cfg, tmp_path / "host", work, threads=1)  # CPU: the host clock after a sync, every step
    assert len(calls) >= 40  # (plus the peak benchmark's, the first time)
    calls.clear()
    monkeypatch.setattr(dev, "uses_events", lambda d: True)  # the CUDA timing path, on CPU tensors
    monkeypatch.setattr(dev, "new_event", FakeEvent)
    FakeEvent.syncs = 0
    m = T.train(cfg, tmp_path / "events", work, threads=1)
    intervals = 40 // 10
    assert 0 < len(calls) + FakeEvent.syncs <= intervals + 1, calls  # bounded by intervals, not steps
    assert math.isfinite(m["tokens_per_s"]) and m["tokens_per_s"] > 0  # the event ticks were read
    assert "CUDA events" in m["throughput_note"]
    pd.testing.assert_frame_equal(history(tmp_path / "host"), history(tmp_path / "events"))  # same training


def test_device_offsets_are_moved_once_and_give_the_host_batches(corpus, work):
    cfg = T.RunConfig.from_dict(run_dict(corpus, steps=12))
    job = T.Job(cfg, work, work / "device" / "peak_flops.json")
    job.begin_run(cfg)
    assert job.offsets is None  # CPU: batches gathered from the memory-mapped tokens per step, as always
    host = [job.batch(cfg, s) for s in range(12)]
    job.train_tokens = torch.from_numpy(job.data.train.astype("int32"))  # the GPU path's token tensor
    job.begin_run(cfg)
    offsets = job.offsets
    assert offsets.shape == (12, 4)
    job.begin_run(cfg)
    assert job.offsets is offsets  # the same run shape: not rebuilt
    for s, (x, y) in enumerate(host):
        dx, dy = job.batch(cfg, s)
        tx, ty = train_batch(job.train_tokens, 4, 16, cfg.seed, s)
        assert torch.equal(dx, x) and torch.equal(dy, y) and torch.equal(dx, tx) and torch.equal(dy, ty)


# ---- 2a. checkpoints load on the CPU and restore the job's RNG states ----------------------------
def small_run(corpus, work):
    cfg = T.RunConfig.from_dict(run_dict(corpus))
    job = T.Job(cfg, work, work / "device" / "peak_flops.json")
    model, _ = job.model_for(cfg)
    opt = T.make_optimizer(model, cfg.train)
    rec = T.Recorder(cfg, init_loss=math.log(256), bytes_per_token=1.0)
    return cfg, job, model, opt, rec


def test_checkpoint_round_trip_restores_rng_for_a_non_cpu_device(corpus, work, tmp_path):
    cfg, job, model, opt, rec = small_run(corpus, work)
    rec.state.step = 7
    torch.manual_seed(123)
    T.save_checkpoint(tmp_path / "ck.pt", cfg, model, opt, rec, job.device)
    expected = torch.rand(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    # a device other than the CPU ("meta" stands in for a GPU): with map_location=device the saved CPU
    # RNG state would leave the CPU and torch.set_rng_state would raise
    rec2 = T.Recorder(cfg, init_loss=math.log(256), bytes_per_token=1.0)
    assert T.load_checkpoint(tmp_path / "ck.pt", cfg, model, opt, rec2, torch.device("meta"))
    assert torch.equal(torch.rand(5), expected)
    assert isinstance(rec2.state, T.RunState) and rec2.state.step == 7
    ck = torch.load(tmp_path / "ck.pt", weights_only=False)
    assert set(ck["state"]) == {"step", "history", "ema", "above", "timed_tokens", "timed_seconds", "wall",
                                "diverged", "started", "best_val", "segments"}  # checkpointed as a dict, as before
    assert ck["cuda_rng"] is None


def test_checkpoint_touches_only_the_jobs_gpu(corpus, work, tmp_path, monkeypatch):
    cfg, job, model, opt, rec = small_run(corpus, work)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("opened every visible GPU"))
    seen = []
    state = torch.zeros(8, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: seen.append(("get", str(d))) or state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: seen.append(("set", str(d))))
    T.save_checkpoint(tmp_path / "cpu.pt", cfg, model, opt, rec, torch.device("cpu"))
    assert seen == []  # a CPU job does not touch CUDA at all
    T.save_checkpoint(tmp_path / "gpu.pt", cfg, model, opt, rec, torch.device("cuda:1"))
    assert T.load_checkpoint(tmp_path / "gpu.pt", cfg, model, opt, rec, torch.device("cuda:1"))
    assert seen == [("get", "cuda:1"), ("set", "cuda:1")]


# ---- 2b/2c. peak memory per run; the memory cap of a shared GPU ----------------------------------
def test_peak_memory_is_reset_per_run(corpus, work, tmp_path, monkeypatch):
    cuda = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: cuda.append(str(d)))
    dev.reset_peak_memory(torch.device("cuda:0"))
    assert cuda == ["cuda:0"]
    # CPU: the process's peak RSS, reset per run
    cpu = torch.device("cpu")
    dev.reset_peak_memory(cpu)
    big = torch.ones(300 * 2**18)  # 300 MB, touched
    high = dev.peak_memory_mb(cpu)
    del big
    dev.reset_peak_memory(cpu)
    if dev.peak_memory_mb(cpu) > high - 200:
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    resets = []
    real = dev.reset_peak_memory
    monkeypatch.setattr(dev, "reset_peak_memory", lambda d: resets.append(d) or real(d))
    cfgs = [T.RunConfig.from_dict({**run_dict(corpus, steps=5), "seed": s}) for s in (0, 1)]
    T.run_job(cfgs, [tmp_path / "a", tmp_path / "b"], work, threads=1)
    assert len(resets) == 2


def test_gpu_memory_cap_from_the_jobs_budget(corpus, work, monkeypatch):
    class Props:
        total_memory = 80 * 2**30

    fractions = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: fractions.append((f, str(d))))
    assert dev.cap_memory(torch.device("cuda:0"), 18000) == pytest.approx(18000 / 81920)
    assert fractions == [(pytest.approx(18000 / 81920), "cuda:0")]
    assert dev.cap_memory(torch.device("cuda:0"), 10**6) == 1.0  # never above the whole device
    monkeypatch.setenv(dev.GPU_MEM_ENV, "18000")
    assert dev.gpu_mem_budget_mb() == 18000 and dev.gpu_mem_budget_mb(5000) == 5000
    monkeypatch.delenv(dev.GPU_MEM_ENV)
    assert dev.gpu_mem_budget_mb() is None and dev.cap_memory(torch.device("cuda:0"), None) is None
    fractions.clear()
    monkeypatch.setenv(dev.GPU_MEM_ENV, "18000")
    job = T.Job(T.RunConfig.from_dict(run_dict(corpus)), work, work / "device" / "peak_flops.json")
    assert job.mem_fraction is None and fractions == []  # a CPU job is not capped
    seen = []
    monkeypatch.setattr(T, "run_job", lambda cfgs, outs, work, threads, peak, gpu_mem_mb: seen.append(gpu_mem_mb) or [])
    cfg_json = json.dumps(run_dict(corpus))
    assert T.main(["--json", cfg_json, "--out", "x", "--gpu-mem-mb", "18000"]) == 0 and seen == [18000.0]


# ---- 2d. flex soft-capped attention equals the explicit path -------------------------------------
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_flex_softcap_attention_equals_explicit(n_kv_heads, monkeypatch):
    from models import ModelConfig, build
    from models import attention as A

    if A.flex_attention is None:
        pytest.skip("no torch.nn.attention.flex_attention in this torch")
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, context_length=32, vocab_size=256,
                      attn_softcap=5.0, position="rope")
    torch.manual_seed(0)
    m = build(cfg).eval()
    x = torch.randint(0, 256, (3, 32))
    assert not A.use_flex(torch.zeros(1), 0.0)  # CPU keeps the explicit path (its results are the references)
    attn = next(mod for mod in m.modules() if isinstance(mod, A.Attention))
    q, k, v = torch.randn(3, 4, 32, 16) * 4, torch.randn(3, n_kv_heads, 32, 16) * 4, torch.randn(3, n_kv_heads, 32, 16)
    with torch.no_grad():  # CPU flex has no backward: forward only
        torch.testing.assert_close(attn.flex(q, k, v), attn.explicit(q, k, v, 0.0), atol=2e-5, rtol=1e-5)
        explicit = m(x)
        monkeypatch.setattr(A, "FLEX", "on")
        torch.testing.assert_close(m(x), explicit, atol=2e-5, rtol=1e-5)


class Fp32Norm(torch.nn.Module):
    """What CUDA autocast does to a norm: it runs in fp32 and returns fp32, whatever its input's dtype."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm.float()

    def forward(self, x):
        return self.norm(x.float())


@pytest.mark.parametrize("cap", [5.0, None])
@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_qk_norm_under_cuda_autocast_gives_attention_one_dtype(cap, n_kv_heads, monkeypatch):
    """QK-norm with fp32 norms (CUDA autocast) beside a bf16 v: q and k reach flex_attention (soft-capped)
    and SDPA (plain) in v's dtype. Before, flex got fp32 q, k and bf16 v (its compiled backward on CUDA
    rejects that) and SDPA raised at once."""
    from models import ModelConfig, build
    from models import attention as A

    if A.flex_attention is None:
        pytest.skip("no torch.nn.attention.flex_attention in this torch")
    cfg = ModelConfig(d_model=64, n_layers=1, n_heads=4, n_kv_heads=n_kv_heads, context_length=16, vocab_size=256,
                      attn_softcap=cap, qk_norm=True, position="rope", dropout=0.0)
    torch.manual_seed(0)
    attn = next(m for m in build(cfg).modules() if isinstance(m, A.Attention)).eval()
    fp32_out = {}
    qkv32 = torch.randn(2, 16, sum(attn.split_sizes))
    with torch.no_grad():
        fp32_out["heads"] = attn.heads(qkv32)
        fp32_out["y"] = attn.attend(qkv32)
    reference = attn
    attn = copy.deepcopy(attn).to(torch.bfloat16)
    attn.q_norm, attn.k_norm = Fp32Norm(attn.q_norm), Fp32Norm(attn.k_norm)
    qkv = qkv32.bfloat16()
    assert attn.q_norm(qkv[..., :16]).dtype == torch.float32  # the mixed case, built directly
    seen = []
    real_flex, F_sdpa = A.flex_attention, torch.nn.functional.scaled_dot_product_attention

    def flex(q, k, v, **kw):
        seen.append(("flex", q.dtype, k.dtype, v.dtype))
        return real_flex(q, k, v, **kw)

    def sdpa(q, k, v, **kw):
        seen.append(("sdpa", q.dtype, k.dtype, v.dtype))
        return F_sdpa(q, k, v, **kw)

    monkeypatch.setattr(A, "flex_attention", flex)
    monkeypatch.setattr(A.F, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(A, "FLEX", "on")
    with torch.no_grad():  # CPU flex has no backward: forward only
        q, k, v = attn.heads(qkv)
        y = attn.attend(qkv)
    assert q.dtype == k.dtype == v.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert seen == [("flex" if cap else "sdpa",) + (torch.bfloat16,) * 3]
    torch.testing.assert_close(y.float(), fp32_out["y"], atol=0.05, rtol=0.05)
    # the fp32 path is untouched: q, k, v as split, normed and rotated, bit for bit
    monkeypatch.undo()
    attn = reference
    B, T = qkv32.shape[:2]
    q, k, v = qkv32.split(attn.split_sizes, dim=-1)
    q = attn.rope(attn.q_norm(q.view(B, T, 4, attn.hd).transpose(1, 2)))
    k = attn.rope(attn.k_norm(k.view(B, T, n_kv_heads, attn.hd).transpose(1, 2)))
    v = v.view(B, T, n_kv_heads, attn.hd).transpose(1, 2)
    for a, b in zip(fp32_out["heads"], (q, k, v)):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(attn.attend(qkv32), fp32_out["y"])


def test_flex_softcap_attention_compiled_by_inductor_equals_explicit(monkeypatch):
    """The path a CUDA job takes (flex inside the inductor-compiled model), forward only on the CPU: with
    RoPE and the fused qkv projection it returned wrong values until flex got contiguous inputs."""
    import shutil

    from models import ModelConfig, build
    from models import attention as A

    if A.flex_attention is None or not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("needs flex_attention and a C++ compiler (inductor on CPU)")
    torch.manual_seed(0)
    m = build(ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, context_length=32, vocab_size=256,
                          attn_softcap=5.0, position="rope")).eval()
    x = torch.randint(0, 256, (2, 32))
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            explicit = m(x)
            monkeypatch.setattr(A, "FLEX", "on")
            compiled = torch.compile(m, fullgraph=True)(x)  # fullgraph: no graph break around flex
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, explicit, atol=1e-5, rtol=1e-5)


# ---- 2e. sustained peak FLOP/s --------------------------------------------------------------------
def test_peak_flops_is_sustained_and_cached_per_device_and_dtype(tmp_path, monkeypatch):
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: calls.append(1) or real_mm(*a, **k))
    rate = dev.measure_peak_flops(torch.device("cpu"), torch.float32, n=128, iters=6, repeats=3, warmup_s=0.0)
    assert rate > 0 and len(calls) == 1 + 3 * 6  # a warm-up, then windows of back-to-back matmuls
    monkeypatch.setattr(torch, "mm", real_mm)
    measured = []
    monkeypatch.setattr(dev, "measure_peak", lambda d, t: measured.append(t) or {
        "flops": 1e9, "n": 512, "products_per_window": 3, "windows": 5, "products": 20, "seconds": 1.0,
        "budget_s": 2.0})
    threads = torch.get_num_threads()
    try:
        a = dev.peak_flops(torch.device("cpu"), torch.float32, tmp_path / "peak.json")
        torch.set_num_threads(1 if threads > 1 else 2)
        b = dev.peak_flops(torch.device("cpu"), torch.float32, tmp_path / "peak.json")
    finally:
        torch.set_num_threads(threads)
    dev.peak_flops(torch.device("cpu"), torch.bfloat16, tmp_path / "peak.json")
    assert a["key"] == b["key"] and "threads" not in a["key"] and measured == [torch.float32, torch.bfloat16]
    cache = json.loads((tmp_path / "peak.json").read_text())
    assert len(cache) == 2
    assert a["flops"] == 1e9 and a["measurement"] == {"n": 512, "products_per_window": 3, "windows": 5,
                                                       "products": 20, "seconds": 1.0, "budget_s": 2.0}


class VirtualClock:
    """A clock that only a fake matmul advances: 2n³ FLOPs at ``rate`` FLOP/s per product."""

    def __init__(self, rate):
        self.t, self.rate, self.sizes = 0.0, rate, []

    def __call__(self):
        return self.t

    def mm(self, a, b, out=None):
        self.sizes.append(a.shape[0])
        self.t += 2 * a.shape[0] ** 3 / self.rate


@pytest.mark.parametrize("rate, n, per_window", [
    (1e8, 128, 3),       # a tenth of a GFLOP/s: the smallest size, still 5 windows
    (6e8, 256, 3),       # bf16 on an AVX2-only EPYC (0.6 GFLOP/s): 27 s a product at n=2048 before
    (2.3e9, 512, 2),     # bf16 with oneDNN held to AVX2 on an AVX512 machine
    (1e11, 1024, 3),     # fp32 on one core
    (1e12, 2048, 3),     # the CPU's largest size
])
def test_peak_measurement_stays_within_its_time_budget_whatever_the_speed(rate, n, per_window, monkeypatch):
    """The budget logic on a virtual clock: nothing here depends on how fast this CPU is."""
    vc = VirtualClock(rate)
    monkeypatch.setattr(dev, "clock", vc)
    monkeypatch.setattr(torch, "mm", vc.mm)
    m = dev.measure_peak(torch.device("cpu"), torch.bfloat16)
    assert m["budget_s"] == dev.PEAK_BUDGET_S["cpu"] == 2.0
    assert m["seconds"] == pytest.approx(vc.t, abs=1e-3) and vc.t <= m["budget_s"]  # the whole measurement
    assert (m["n"], m["products_per_window"], m["windows"]) == (n, per_window, 5)
    assert m["products"] == len(vc.sizes) and vc.sizes[-5 * per_window:] == [n] * (5 * per_window)
    assert m["flops"] == pytest.approx(rate)
    assert max(vc.sizes) <= dev.PEAK_MAX_N["cpu"]


def test_peak_measurement_on_cuda_keeps_the_large_size_within_its_budget(monkeypatch):
    """An H100-like rate (700 TFLOP/s bf16) keeps n=8192 and 50 products a window (CUDA events on the
    virtual clock); a slow GPU gets a smaller size, not a longer measurement."""
    for rate, n, per_window in [(7e14, 8192, 50), (1e12, 4096, 4)]:
        vc = VirtualClock(rate)

        class Event:
            def record(self):
                self.t = vc.t

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return (end.t - self.t) * 1000.0

        monkeypatch.setattr(dev, "clock", vc)
        monkeypatch.setattr(dev, "new_event", Event)
        monkeypatch.setattr(torch, "mm", vc.mm)
        monkeypatch.setattr(torch, "randn", lambda *s, **k: torch.empty(s[0], s[1]))
        monkeypatch.setattr(torch, "empty", lambda *s, **k: torch.zeros(1).expand(s[0], s[1]))
        monkeypatch.setattr(torch, "Generator", lambda device=None: type("G", (), {"manual_seed": lambda self, s: self})())
        m = dev.measure_peak(torch.device("cuda"), torch.bfloat16)
        monkeypatch.undo()
        assert (m["n"], m["products_per_window"], m["budget_s"]) == (n, per_window, 4.0)
        assert vc.t <= m["budget_s"] and m["flops"] == pytest.approx(rate)


# ---- 2f + 3. fixed-shape evaluation; compile and bf16 on the CPU; one compile per job --------------
@pytest.fixture
def counting_backend(monkeypatch):
    """A torch.compile backend that counts the graphs it is given and runs them eagerly."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(T, "COMPILE_BACKEND", counting)
    yield graphs
    torch._dynamo.reset()


def test_compiled_evaluation_has_one_batch_shape(corpus, work, counting_backend):
    eager_cfg = T.RunConfig.from_dict(run_dict(corpus, eval_windows=10, compile="off"))
    compiled_cfg = T.RunConfig.from_dict(run_dict(corpus, eval_windows=10, compile="on"))
    job = T.Job(eager_cfg, work, work / "device" / "peak_flops.json")
    job.model_for(eager_cfg)
    eager = job.evaluate(eager_cfg)
    assert [x.shape[0] for x, _ in job.eval_batches(eager_cfg)["batches"]] == [4, 4, 2]  # as today, on CPU
    job.model_for(compiled_cfg)
    compiled = job.evaluate(compiled_cfg)
    ev = job.eval_batches(compiled_cfg)
    assert {tuple(x.shape) for x, _ in ev["batches"]} == {(4, 16)}
    assert ev["record"] == {"windows": 10, "tokens": 160, "batch_size": 4, "batches": 3, "padded_windows": 2,
                            "fixed_shape": True}
    assert compiled == pytest.approx(eager, rel=1e-5)  # padding windows are ignored by the loss
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == len(counting_backend) == 1  # no dynamic recompile


def test_compile_and_bf16_train_on_cpu_with_statistics(corpus, work, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = T.RunConfig.from_dict(run_dict(corpus, steps=12, stats_every=4, eval_every=6, eval_windows=10,
                                         compile="on", dtype="bfloat16", checkpoint_every=0))
    m = T.train(cfg, tmp_path / "c", work, threads=1)
    h = history(tmp_path / "c")
    losses = h[(h.kind == "train") & (h.metric == "loss")].value
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses) and m["status"] == "ok"
    assert sorted(h[h.metric == "update_ratio"].step.unique()) == [0, 4, 8]
    prov = m["provenance"]
    assert prov["compiled"] is True and prov["dtype"] == "bfloat16" and prov["compile_backend"] == "aot_eager"
    assert prov["eval_batches"]["fixed_shape"] and prov["eval_batches"]["padded_windows"] == 2
    assert m["config"]["train"]["compile"] == "on" and m["config"]["train"]["dtype"] == "bfloat16"
    assert not torch._dynamo.utils.counters["graph_break"]  # statistics steps do not split the graph
    torch._dynamo.reset()


def test_a_compiled_job_compiles_its_model_once(corpus, work, tmp_path, monkeypatch, counting_backend):
    cfgs = [T.RunConfig.from_dict({**run_dict(corpus, lr=lr, steps=10, compile="on", eval_windows=10,
                                               checkpoint_every=0), "seed": seed})
            for seed, lr in [(0, 3e-3), (1, 1e-2), (2, 3e-3)]]
    after = []
    real_fit = T.fit
    monkeypatch.setattr(T, "fit", lambda job, cfg, store: (real_fit(job, cfg, store), after.append(
        (len(counting_backend), torch._dynamo.utils.counters["stats"]["unique_graphs"])))[0])
    T.run_job(cfgs, [tmp_path / f"r{i}" for i in range(3)], work, threads=1)
    assert len(after) == 3 and after[0][0] > 0
    assert after[0] == after[1] == after[2]  # runs 2 and 3 reuse run 1's graphs: no recompilation
    assert len(counting_backend) == 2  # the training step (forward + loss) and the evaluation forward
    assert not torch._dynamo.utils.counters["graph_break"]
    finals = [json.loads((tmp_path / f"r{i}" / "metrics.json").read_text())["final_val_loss"] for i in range(3)]
    assert len(set(finals)) == 3 and all(math.isfinite(f) for f in finals)


# ---- 5. the GPU grid and the GPU check -------------------------------------------------------------
def test_gpu_config_loads_through_the_grid_loader():
    """config/gpu.yaml in the default grid's regime, and its header's arithmetic: runs = pilot + evaluation, PaLM
    FLOPs of every run, at 30% MFU of 790 TFLOP/s bf16 within one evening."""
    from workflows.grid.grid import Grid, load_pipeline_config

    from models import build, count_params, flops_per_token

    cfg = load_pipeline_config(REPO / "config" / "gpu.yaml")
    grid = Grid.from_config(cfg)
    default = Grid.from_config(load_pipeline_config(REPO / "config" / "config.yaml"))
    # the default's axes and its stress trio, and the three its 30 CPU minutes moved to cpu-full.yaml (LayerNorm,
    # MHA and MQA)
    assert set(default.variants) <= set(grid.variants)
    assert set(grid.variants) - set(default.variants) == {"layernorm", "mha", "mqa"}
    assert grid.lr_pilot and not set(grid.pilot_seeds) & set(grid.seeds) and len(grid.seeds) >= 3
    assert cfg["data"]["source"].startswith("hf:") and cfg["model"]["init"] == "xavier"
    total, runs = 0.0, 0
    for v in grid.variants:
        rc = grid.run_config(v, grid.variant_seeds(v)[0], grid.variant_lrs(v)[0])
        assert rc.model.context_length >= 512 and rc.model.init == "xavier"
        assert rc.train.final_eval_windows * rc.model.context_length >= 256 * 1024  # a fixed set of >= 256k tokens
        assert 10e6 <= count_params(build(rc.model))["total"] < 100e6, v
        stress = v.startswith("stress_")
        assert len(grid.variant_lrs(v)) == (1 if stress else 2), v  # a fixed stress LR, or two candidates
        n = len(grid.variant_seeds(v)) + len(grid.pilot_job_runs(v))
        runs += n
        total += n * rc.train.steps * rc.train.batch_size * rc.model.context_length * flops_per_token(rc.model)
    assert runs == 16 + 32 + 12
    assert total == pytest.approx(2.47e18, rel=0.01) and total / (0.30 * 790e12) < 3 * 3600


def test_gpu_check_names_what_is_missing(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPU_CHECK_PYTHON": "/usr/bin/false",
           "GPU_CHECK_CORPUS": str(tmp_path / "no-corpus")}
    r = subprocess.run(["bash", str(REPO / "workflows/cluster/gpu-check.sh"), "--check-only"], env=env,
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    for missing in ("nvidia-smi", "torch", "snakemake", "datasets", "tokenizers", "corpus"):
        assert f"MISSING {missing}:" in out, (missing, out)
    # with this project's venv, the Python packages are found and only the GPU (and corpus) are missing
    env["GPU_CHECK_PYTHON"] = str(REPO / ".venv" / "bin" / "python")
    if not Path(env["GPU_CHECK_PYTHON"]).exists():
        return
    r = subprocess.run(["bash", str(REPO / "workflows/cluster/gpu-check.sh"), "--check-only"], env=env,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "MISSING nvidia-smi:" in out and "MISSING torch.cuda:" in out
    for present in ("snakemake", "datasets", "tokenizers"):
        assert f"ok {present}:" in out, (present, out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resume_is_possible_and_syncs_are_bounded(corpus, work, tmp_path, monkeypatch):
    """On a real GPU: a cut-off run resumes from its checkpoint (it crashed every time before)."""
    cfg = T.RunConfig.from_dict(run_dict(corpus, device="cuda", compile="off"))
    real_batch = T.Job.batch

    def dying(self, c, step):
        if step == 25:
            raise KeyboardInterrupt("killed")
        return real_batch(self, c, step)

    monkeypatch.setattr(T.Job, "batch", dying)
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, tmp_path / "r", work)
    monkeypatch.setattr(T.Job, "batch", real_batch)
    calls = count_syncs(monkeypatch)
    m = T.train(cfg, tmp_path / "r", work)
    assert m["resumed_segments"] == 2 and m["steps_done"] == 30 and len(calls) <= 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_flex_softcap_matches_explicit_with_gradients():
    from models import ModelConfig, build
    from models import attention as A

    cfg = ModelConfig(d_model=128, n_layers=1, n_heads=4, n_kv_heads=2, context_length=256, vocab_size=256,
                      attn_softcap=5.0, dropout=0.0)
    attn = next(m for m in build(cfg).cuda().modules() if isinstance(m, A.Attention))
    q = (torch.randn(2, 4, 256, 32, device="cuda") * 3).requires_grad_()
    k = (torch.randn(2, 2, 256, 32, device="cuda") * 3).requires_grad_()
    v = torch.randn(2, 2, 256, 32, device="cuda").requires_grad_()
    assert A.use_flex(q, 0.0) and not A.use_flex(q, 0.1)
    outs = []
    for fn in (attn.flex, lambda q, k, v: attn.explicit(q, k, v, 0.0)):
        y = fn(q, k, v)
        y.square().sum().backward()
        outs.append((y.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()))
        q.grad = k.grad = v.grad = None
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_compiled_model_with_flex_softcap_matches_explicit(monkeypatch):
    from models import ModelConfig, build
    from models import attention as A

    torch.manual_seed(0)
    m = build(ModelConfig(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, context_length=256, vocab_size=256,
                          attn_softcap=5.0, position="rope")).cuda()
    x = torch.randint(0, 256, (4, 256), device="cuda")
    results = []
    for flex in ("off", "on"):
        monkeypatch.setattr(A, "FLEX", flex)
        torch._dynamo.reset()
        loss = torch.compile(m)(x).float().logsumexp(-1).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in m.parameters()]))
        m.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


# ---- the speed bench times the training regime -----------------------------------------------------
def test_speed_bench_steps_in_the_training_loops_regime(corpus, work, monkeypatch, counting_backend):
    """workflows.bench.speed's Stepper uses the autocast dtype and compile setting a training job would use for the
    same config (before, it timed fp32 eager steps on CUDA whatever the runs did)."""
    from workflows.bench import speed

    for train in ({}, {"compile": "on", "dtype": "bfloat16"}, {"compile": "off", "dtype": "float16"}):
        cfg = T.RunConfig.from_dict(run_dict(corpus, steps=3, **train))
        job = T.Job(cfg, work, work / "device" / "peak_flops.json")
        job.model_for(cfg)
        s = speed.Stepper(cfg.to_dict(), torch.device("cpu"))
        assert (s.regime["dtype"], s.regime["compiled"]) == (job.dtype, job.compiled), train
        autocasts = []
        real = torch.autocast
        monkeypatch.setattr(torch, "autocast", lambda *a, **k: autocasts.append((a, k)) or real(*a, **k))
        graphs = len(counting_backend)
        s.step()
        monkeypatch.setattr(torch, "autocast", real)
        assert autocasts == [(("cpu",), {"dtype": job.dtype, "enabled": job.dtype != torch.float32})]
        assert (len(counting_backend) > graphs) == job.compiled  # the compiled forward + loss ran
    # on CUDA by default: bf16 autocast and compiled, as the training loop (workflows.train.loop) has it
    cuda = speed.regime(T.RunConfig.from_dict(run_dict(corpus)), torch.device("cuda"))
    assert cuda["dtype"] == dev.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert cuda["compiled"] and cuda["compile_backend"] == getattr(T.COMPILE_BACKEND, "__name__", T.COMPILE_BACKEND)
    rows = speed.measure({"g": run_dict(corpus, compile="on", dtype="bfloat16")}, reps=1, steps=1, warmup=1,
                         device="cpu")
    assert rows.dtype.tolist() == ["bfloat16"] and rows.compiled.tolist() == [True]
