"""workflows.bench.opprofile: the operator-class breakdown of a training step, on tiny models (CPU, 1 thread).

References: the self times add up to the profiled steps' wall time (nothing counted twice or dropped); the
matmul-class FLOPs equal torch.utils.flop_counter's count; the fused attention kernels' analytic FLOPs equal
the profiler's own count of the explicit math path; the optimizer class equals the optimizer region's time."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from models.config import CHOICES, ConfigError
from workflows.bench import opprofile as op
from workflows.grid.grid import Grid, load_pipeline_config

REPO = Path(__file__).resolve().parents[2]
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "context_length": 8}
COLUMNS = ["variant", "class", "flops", "flop_share", "time_us", "time_share", "device", "threads"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(model=None, train=None, variant="tiny"):
    return {"variant": variant, "seed": 0, "model": {**TINY, **(model or {})},
            "data": {"source": "shakespeare", "tokenizer": "bytes"},
            "train": {"batch_size": 2, "lr": 1e-3, **(train or {})}}


def events_of(r, steps=1):
    return op.profile_steps(op.ProfiledStep(r, torch.device("cpu")), steps=steps, warmup=1)


def record(fn):
    """Events of one call of fn under the profiler (no schedule), inside a ProfilerStep-like root."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        with record_function("ProfilerStep#0"):
            fn()
    return prof.events()


def test_table_names_only_known_classes():
    assert set(op.OP_CLASSES.values()) <= set(op.CLASSES)
    assert set(op.COMPOSITES.values()) <= set(op.CLASSES)
    from workflows.plots.opprofile import COLORS

    assert set(op.IVANOV["flop_share"]) <= set(op.CLASSES) and set(COLORS) == set(op.CLASSES)
    for ref in ("flop_share", "time_share"):  # the published shares add up to 100%
        assert sum(op.IVANOV[ref].values()) == pytest.approx(1.0, abs=1e-9)


def _builtin_runs():
    """Every variant of the shipped CPU grids (context 8, batch 2, one layer; each distinct model + z-loss
    once) and every value of every categorical axis of ModelConfig on the tiny model."""
    runs = {}
    for path in ("config/config.yaml", "config/cpu-full.yaml"):
        grid = Grid.from_config(load_pipeline_config(REPO / path))
        for v in grid.variants:
            d = grid.run_dict(v, 0, 1e-3)
            d["model"].update(context_length=8, n_layers=1)
            d["train"].update(batch_size=2)
            key = json.dumps([d["model"], d["train"].get("z_loss"), d["data"]], sort_keys=True)
            runs.setdefault(key, (f"{path}:{v}", d))
    for field, values in CHOICES.items():
        for value in values:
            runs.setdefault(f"{field}={value}", (f"{field}={value}", run({field: value})))
    for extra in ({"qk_norm": True}, {"bias": True}, {"attn_softcap": 50.0, "final_softcap": 30.0},
                  {"residual": False}, {"dropout": 0.1}):
        runs.setdefault(json.dumps(extra), (json.dumps(extra), run(extra)))
    return list(runs.values())


@pytest.mark.slow
def test_every_op_of_every_builtin_variant_is_classified_explicitly():
    """'other' only for ops listed as other: no op name of any built-in variant's step is unlisted; and each
    profile's classes are the seven of CLASSES with shares summing to 1."""
    unlisted, profiled = {}, 0
    for name, r in _builtin_runs():
        try:
            ev = events_of(r)
        except ConfigError:  # an axis value this tiny base cannot take (e.g. a norm qk_norm rejects)
            continue
        profiled += 1
        t = op.op_table(ev)
        for op_name in t[~t.listed].name:
            unlisted.setdefault(op_name, []).append(name)
        b = op.breakdown(ev)
        assert list(b["class"]) == list(op.CLASSES)
        assert b.time_share.sum() == pytest.approx(1.0) and b.flop_share.sum() == pytest.approx(1.0)
        assert b.set_index("class").loc["matmul", "flops"] > 0 and b.set_index("class").loc["optimizer", "time_us"] > 0
    assert profiled >= 20
    assert not unlisted, f"op names missing from workflows.bench.opprofile's table: {unlisted}"


def test_self_times_add_up_to_the_step_and_matmul_flops_match_flop_counter():
    """No double counting: the attributed self times sum to the profiled steps' wall time; the matmul
    class's FLOPs (mm, addmm, bmm: the profiler's) equal torch.utils.flop_counter's count of the same step
    (soft-capped attention takes the explicit path on the CPU: every contraction is an mm or a bmm)."""
    from torch.utils.flop_counter import FlopCounterMode

    r = run({"n_layers": 2, "bias": True, "attn_softcap": 30.0})  # explicit attention: bmm in matmul
    s = op.ProfiledStep(r, torch.device("cpu"))
    ev = op.profile_steps(s, steps=2, warmup=1)
    a = op.attribute(ev)
    wall = sum(e.cpu_time_total for e in ev if e.cpu_parent is None and e.name.startswith(op.STEP_PREFIX))
    assert a.time_us.sum() == pytest.approx(wall, rel=1e-6)
    b = op.breakdown(ev, steps=2).set_index("class")
    with FlopCounterMode(display=False) as fc:
        s.step()
    assert b.loc["matmul", "flops"] == pytest.approx(fc.get_total_flops(), rel=1e-9)
    assert b.loc["softmax-attention", "flops"] == 0  # the explicit path has no fused kernel


def test_fused_attention_flops_equal_the_math_paths_counted_matmuls():
    """The analytic count of the CPU flash kernel (GQA 4:2) = the profiler's own count of the math backend's
    bmm (forward); backward = the math backward's bmm + the flash kernel's recompute of QKᵀ."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, G, T, d = 2, 4, 2, 16, 8
    q = torch.randn(B, H, T, d, requires_grad=True)
    k, v = (torch.randn(B, G, T, d, requires_grad=True) for _ in range(2))

    def fwd_bwd():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum().backward()

    fused = op.attribute(record(fwd_bwd))
    fwd_name, bwd_name = "aten::_scaled_dot_product_flash_attention_for_cpu", \
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward"
    assert {fwd_name, bwd_name} <= set(fused.name)
    fwd = fused[fused.name == fwd_name].flops.sum()
    bwd = fused[fused.name == bwd_name].flops.sum()
    with sdpa_kernel(SDPBackend.MATH):
        math_ev = record(fwd_bwd)
    mm = [e for e in math_ev if e.name in ("aten::bmm", "aten::mm", "aten::baddbmm") and e.flops]
    in_bwd = [any(p.name.startswith(op.EVAL_PREFIX) for p in _ancestors(e)) for e in mm]
    math_fwd = sum(e.flops for e, b in zip(mm, in_bwd) if not b)
    math_bwd = sum(e.flops for e, b in zip(mm, in_bwd) if b)
    assert fwd == math_fwd == 2 * 2 * B * H * T * T * d
    assert bwd == math_bwd + fwd // 2
    assert set(fused[fused.name.isin([fwd_name, bwd_name])]["class"]) == {"softmax-attention"}


def _ancestors(e):
    while e.cpu_parent is not None:
        e = e.cpu_parent
        yield e


def test_optimizer_region_is_attributed_to_optimizer():
    """Every event under the region (clipping, AdamW.step, zero_grad) is optimizer and nothing else is; the
    class's time equals the region's total time; AdamW's ops never leak into element-wise."""
    ev = events_of(run(), steps=2)
    a = op.attribute(ev)
    regions = [e for e in ev if e.name == op.OPTIMIZER_REGION]
    assert len(regions) == 2
    under = {id(e) for r in regions for e in _subtree(r)}
    inside = [id(e) in under for e in _walk_order(ev)]
    assert (a["class"][inside] == "optimizer").all() and (a["class"][[not x for x in inside]] != "optimizer").all()
    assert a[a["class"] == "optimizer"].time_us.sum() == pytest.approx(sum(r.cpu_time_total for r in regions))
    # the fused AdamW's kernel (workflows.train.loop.make_optimizer), its step counter and the clipping's norm
    for name in ("Optimizer.step#AdamW.step", "aten::_fused_adamw_", "aten::_foreach_add_", "aten::_foreach_norm"):
        assert set(a[a.name == name]["class"]) == {"optimizer"}, name


def _subtree(e):
    yield e
    for c in e.cpu_children:
        yield from _subtree(c)


def _walk_order(ev):
    """Events in attribute()'s order: roots by start time, children by start time, depth first."""
    for r in sorted((e for e in ev if e.cpu_parent is None), key=lambda e: e.time_range.start):
        yield from _dfs(r)


def _dfs(e):
    yield e
    for c in sorted(e.cpu_children, key=lambda c: c.time_range.start):
        yield from _dfs(c)


def test_norm_ops_are_attributed_by_their_composite_forward_and_backward():
    """F.rms_norm with autograd runs pow/mean/rsqrt/mul on the CPU: all normalisation, backward included;
    the same ops written by hand outside a norm are element-wise (the composite is what attributes them)."""
    x = torch.randn(4, 8, 16, requires_grad=True)
    w = torch.ones(16, requires_grad=True)
    norm = op.attribute(record(lambda: F.rms_norm(x, (16,), w, 1e-6).sum().backward()))
    names = {"aten::pow", "aten::rsqrt", "aten::mean", "aten::mul"}
    assert set(norm[norm.name.isin(names)]["class"]) == {"normalisation"}
    backward = norm[norm.name.str.startswith(op.EVAL_PREFIX) & norm.name.str.contains("Pow|Rsqrt|Mean")]
    assert len(backward) == 3 and set(backward["class"]) == {"normalisation"}
    by_hand = op.attribute(record(lambda: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w)
                                  .sum().backward()))
    assert set(by_hand[by_hand.name.isin(names)]["class"]) == {"element-wise"}
    ln = op.attribute(record(lambda: F.layer_norm(x, (16,), w, None, 1e-5).sum().backward()))
    assert set(ln[ln.name.str.contains("layer_norm")]["class"]) == {"normalisation"}
    assert "aten::native_layer_norm_backward" in set(ln.name)


def test_matmul_heavy_toy_has_matmul_as_top_flop_class():
    """A wide MLP (d 256, batch 64): matmul is the top FLOP class, above 95% of the FLOPs."""
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    x = torch.randn(64, 256)
    b = op.breakdown(record(lambda: mlp(x).pow(2).mean().backward())).set_index("class")
    assert b.flop_share.idxmax() == "matmul" and b.loc["matmul", "flop_share"] > 0.95
    # the same through a run config: a wide model at a short context
    b = op.breakdown(events_of(run({"d_model": 128, "n_heads": 4, "n_kv_heads": 4}))).set_index("class")
    assert b.flop_share.idxmax() == "matmul"


def test_measure_long_table_and_norm_line():
    df = op.measure({"rms": run(), "ln": run({"norm": "layernorm"})}, steps=1, warmup=1, device="cpu")
    assert list(df.columns[:8]) == COLUMNS
    assert list(df.variant.unique()) == ["rms", "ln"] and len(df) == 2 * len(op.CLASSES)
    for _, g in df.groupby("variant"):
        assert g.flop_share.sum() == pytest.approx(1.0) and g.time_share.sum() == pytest.approx(1.0)
    assert set(df.threads) == {1} and df.norm.tolist()[0] == "rmsnorm"
    line = op.norm_line(df)
    assert "rms (rmsnorm)" in line and "ln (layernorm)" in line and "LayerNorm / RMSNorm" in line
    md = op.markdown(df)
    assert op.IVANOV["label"] in md and md.count("| rms |") == len(op.CLASSES)


def test_bad_input_is_refused_before_any_compute():
    with pytest.raises(ValueError, match="non-empty mapping"):
        op.measure({})
    with pytest.raises(ConfigError, match=r"variant 'bad'.*norm='nope'.*layernorm"):
        op.measure({"ok": run(), "bad": run({"norm": "nope"})})
    with pytest.raises(ValueError, match="steps=0"):
        op.measure({"ok": run()}, steps=0)


def test_figure_is_written(tmp_path):
    from workflows.plots.opprofile import figure
    from workflows.plots.style import SUBTITLE_GID

    df = op.measure({"baseline": run(), "layernorm": run({"norm": "layernorm"})}, steps=1, warmup=1)
    fig = figure(df, None, op.CLASSES, op.IVANOV, op.scale_text(df))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[:2] == ["baseline", "layernorm"] and labels[-1].replace("\n", " ") == op.IVANOV["label"]
    sub = [t for t in fig.texts if t.get_gid() == SUBTITLE_GID]
    assert len(sub) == 1 and "CPU's answer" in sub[0].get_text() and "device:" in sub[0].get_text()
    figure(df, tmp_path / "op_profile.png", op.CLASSES, op.IVANOV, op.scale_text(df))
    for ext in ("png", "pdf"):
        assert (tmp_path / f"op_profile.{ext}").stat().st_size > 5000


@pytest.mark.slow
def test_cli_writes_table_markdown_and_figure(tmp_path):
    runs = json.dumps({"baseline": run(), "layernorm": run({"norm": "layernorm"})})
    out = tmp_path / "res" / "op_profile.parquet"
    proc = subprocess.run([sys.executable, "-m", "workflows.bench.opprofile", "--variants-json", runs, "--out", str(out),
                           "--figure", str(tmp_path / "fig" / "op_profile.png"), "--steps", "1", "--warmup", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_parquet(out)
    assert list(df.columns[:8]) == COLUMNS and set(df.variant) == {"baseline", "layernorm"}
    assert "normalisation time share" in (tmp_path / "res" / "op_profile.md").read_text()
    assert (tmp_path / "fig" / "op_profile.pdf").exists()


def test_schema_takes_a_profile_mapping():
    from snakemake.utils import validate

    cfg = load_pipeline_config(REPO / "config" / "micro.yaml")
    validate({**cfg, "profile": {"variants": ["baseline"], "steps": 3}}, str(REPO / "workflows/schemas/config.schema.json"))
    for bad in ({"steps": 3}, {"variants": ["baseline"], "steps": 0}, {"variants": ["baseline"], "reps": 2}):
        with pytest.raises(Exception):
            validate({**cfg, "profile": bad}, str(REPO / "workflows/schemas/config.schema.json"))


def _dry_run(tmp_path, profile_cfg):
    """`snakemake -n` of a Snakefile that includes common.smk and profile.smk and asks for PROFILE_OUTPUTS."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "micro.yaml").read_text())
    if profile_cfg is not None:
        cfg["profile"] = profile_cfg
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rules = REPO / "workflows" / "rules"
    (tmp_path / "Snakefile").write_text(
        f'configfile: "{tmp_path / "config.yaml"}"\ninclude: "{rules / "common.smk"}"\n'
        f'include: "{rules / "profile.smk"}"\n\nrule all:\n    input:\n        PROFILE_OUTPUTS,\n')
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(tmp_path / "Snakefile"), "-n", "--cores", "2",
                           "--directory", str(tmp_path), "--workflow-profile", "none"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_rule_file_plans_one_job_only_with_a_profile_mapping(tmp_path):
    proc = _dry_run(tmp_path, {"variants": ["baseline", "qk_norm"], "steps": 2})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "rule op_profile:" in out and "op_profile.parquet" in out and "op_profile.pdf" in out
    proc = _dry_run(tmp_path, None)
    assert proc.returncode == 0 and "op_profile" not in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    proc = _dry_run(tmp_path, {"variants": ["baseline", "nope"]})
    assert proc.returncode != 0 and "profile.variants" in proc.stdout + proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_profile_uses_device_time_and_lists_every_op():
    """On a GPU: device (kernel) time per class plus the idle time as framework, bf16 autocast as the loop."""
    ev = op.profile_steps(op.ProfiledStep(run({"d_model": 64, "n_heads": 4, "n_kv_heads": 2}), torch.device("cuda")),
                          steps=2, warmup=1)
    t = op.op_table(ev, on_device=True)
    assert t.listed.all(), t[~t.listed]
    b = op.breakdown(ev, on_device=True, steps=2).set_index("class")
    assert b.time_share.sum() == pytest.approx(1.0) and b.loc["matmul", "time_us"] > 0
    assert b.loc["optimizer", "time_us"] > 0 and b.loc["softmax-attention", "flops"] > 0


def test_norm_backward_nodes_in_a_model_are_exactly_the_norms():
    """In a one-layer pre-norm RMSNorm model (3 norms), the backward nodes attributed to normalisation are the
    6 of each norm's graph (pow, mean, +eps, rsqrt, two muls); the residual adds right after stay element-wise."""
    a = op.attribute(events_of(run({"n_kv_heads": 2})))
    nodes = a[a.name.str.startswith(op.EVAL_PREFIX)]
    norm_nodes = nodes[nodes["class"] == "normalisation"].name.str.removeprefix(op.EVAL_PREFIX)
    assert sorted(norm_nodes.value_counts().items()) == [("AddBackward1", 3), ("MeanBackward1", 3),
                                                          ("MulBackward0", 6), ("PowBackward0", 3),
                                                          ("RsqrtBackward0", 3)]
    assert set(nodes[nodes.name == op.EVAL_PREFIX + "AddBackward0"]["class"]) == {"element-wise"}
