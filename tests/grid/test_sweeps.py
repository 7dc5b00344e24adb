"""Hyperparameter sweeps (workflows/grid/sweeps.py): expansion of each kind of sweep the lecture asks about,
and bad sweeps rejected before any job runs, naming the sweep and the value."""
from pathlib import Path

import pytest
import yaml

from models import ConfigError
from workflows.grid.grid import Grid, load_pipeline_config
from workflows.grid.sweeps import evaluate, expand, nonembed_params, value_label

BASE = {
    "seeds": [0], "lrs": [0.01], "baseline": "baseline",
    "data": {"source": "shakespeare", "tokenizer": "bytes"},
    "model": {"d_model": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "context_length": 32},
    "train": {"steps": 10},
    "variants": {"baseline": {"family": "baseline"}},
}
SWEEPS = {
    "ffn_ratio": {"values": [1, 2, "8/3", 4], "set": {"model.d_ff": "round(value * d_model)"},
                  "model": {"ffn": "gelu"}, "reference": 4, "scale": "log"},
    "head_dim": {"values": [8, 16, 32], "set": {"model.head_dim": "value", "model.n_heads": "d_model // value",
                                                "model.n_kv_heads": "d_model // value"}, "reference": 16},
    "head_dim_x4": {"values": [8, 32], "set": {"model.head_dim": "value", "model.n_heads": 4,
                                               "model.n_kv_heads": 4}},  # head_dim × n_heads ≠ d_model
    "aspect": {"values": [1, 2, 8], "set": {"model.n_layers": "value",
                                            "model.d_model": "iso_nonembed_d_model(value, 8)"}, "scale": "log"},
    "vocab": {"values": [512, 2048], "set": {"data.bpe_vocab_size": "value"}, "data": {"tokenizer": "bpe"}},
    "dropout": {"values": [0, 0.1, 0.3], "set": {"model.dropout": "value"}},
    "weight_decay": {"values": [0, 0.01, 0.1], "set": {"train.weight_decay": "value"}, "lrs": [0.003, 0.01]},
    "grad_clip": {"values": [0.5, 1, None], "set": {"train.grad_clip": "value"}},
}


def grid_of(**sweeps):
    return Grid.from_config({**BASE, "sweeps": sweeps})


def test_every_kind_of_sweep_expands_into_named_variants():
    g = grid_of(**SWEEPS)
    v = g.variants
    assert [n for n in v if n.startswith("ffn_ratio_")] == ["ffn_ratio_1", "ffn_ratio_2", "ffn_ratio_2.67", "ffn_ratio_4"]
    assert {v[n]["family"] for n in v if n != "baseline"} == set(SWEEPS)
    # FFN ratio: d_ff = ratio × d_model (8/3 exact before rounding), fixed overrides kept
    assert [g.run_config(f"ffn_ratio_{x}", 0, 0.01).model.ffn_dim for x in ("1", "2", "2.67", "4")] == [64, 128, 171, 256]
    assert g.run_config("ffn_ratio_1", 0, 0.01).model.ffn == "gelu"
    # head dim at fixed d_model, and head_dim × n_heads ≠ d_model
    m = g.run_config("head_dim_8", 0, 0.01).model
    assert (m.dim_head, m.n_heads, m.d_model) == (8, 8, 64)
    m = g.run_config("head_dim_x4_32", 0, 0.01).model
    assert (m.dim_head, m.n_heads, m.d_model) == (32, 4, 64) and m.dim_head * m.n_heads != m.d_model
    # vocabulary: the data override reaches the run, the model's vocab follows the tokenizer
    r = g.run_config("vocab_2048", 0, 0.01)
    assert (r.data.tokenizer, r.data.bpe_vocab_size, r.model.vocab_size) == ("bpe", 2048, 2048)
    # dropout, weight decay (own LRs), clipping on at several values and off
    assert g.run_config("dropout_0.3", 0, 0.01).model.dropout == 0.3
    assert g.variant_lrs("weight_decay_0.01") == [0.003, 0.01]
    assert g.run_config("weight_decay_0.01", 0, 0.01).train.weight_decay == 0.01
    assert g.run_config("grad_clip_off", 0, 0.01).train.grad_clip is None
    assert g.run_config("grad_clip_0.5", 0, 0.01).train.grad_clip == 0.5
    s = g.summary()["sweeps"]
    assert s["ffn_ratio"]["reference"] == 4 and s["ffn_ratio"]["scale"] == "log"
    assert [x["value"] for x in s["grad_clip"]["values"]] == [0.5, 1, None]
    assert s["ffn_ratio"]["values"][2]["value"] == pytest.approx(8 / 3)


def test_aspect_ratio_sweep_holds_non_embedding_params_fixed():
    g = grid_of(aspect=SWEEPS["aspect"])
    base = g.run_config("baseline", 0, 0.01).model
    target = nonembed_params(base.to_dict(), base.vocab_size)
    for L in (1, 2, 8):
        m = g.run_config(f"aspect_{L}", 0, 0.01).model
        assert m.n_layers == L and (m.n_heads, m.kv_heads) == (base.n_heads, base.kv_heads) and m.d_model % 8 == 0
        got = nonembed_params(m.to_dict(), m.vocab_size)
        assert abs(got / target - 1) < 0.15, (L, m.d_model, got, target)  # the closest multiple of 8
    assert g.run_config("aspect_1", 0, 0.01).model.d_model > base.d_model > g.run_config("aspect_8", 0, 0.01).model.d_model


def test_values_labels_and_expressions():
    assert [value_label(x) for x in (4, 0.1, None, 1e-4)] == ["4", "0.1", "off", "0.0001"]
    assert evaluate("round(value * d_model)", {"value": 8 / 3, "d_model": 64}, {"round": round}) == 171
    with pytest.raises(ConfigError, match="unknown name 'dmodel'"):
        evaluate("value * dmodel", {"value": 1}, {})
    with pytest.raises(ConfigError, match="unknown function '__import__'"):
        evaluate("__import__('os')", {}, {})
    with pytest.raises(ConfigError, match="only arithmetic"):
        evaluate("value.real", {"value": 1}, {})
    with pytest.raises(ConfigError, match="failed: division by zero"):
        evaluate("value / 0", {"value": 1}, {})


@pytest.mark.parametrize("sweep, message", [
    ({"values": [1, 2], "set": {"model.nope": "value"}}, "variant 'bad_1'.*nope"),
    ({"values": [0.5, 1.5], "set": {"model.dropout": "value"}}, r"variant 'bad_1.5'.*dropout=1.5 must be in \[0, 1\)"),
    ({"values": [0.1, "1/10"], "set": {"train.weight_decay": "value"}}, "sweep 'bad', value '1/10'.*'bad_0.1' is already taken"),
    ({"values": [1], "set": {"model.d_ff": "value * width"}}, "sweep 'bad', value 1, model.d_ff.*unknown name 'width'"),
    ({"values": [1], "set": {"optim.lr": "value"}}, "sweep 'bad'.*'model.X', 'train.X' or 'data.X'"),
    ({"values": ["many"], "set": {"model.dropout": "value"}}, "sweep 'bad'.*'many' is not a number"),
    ({"values": [1], "set": {"model.n_layers": "value"}, "scale": "cubic"}, "sweep 'bad'.*scale='cubic'"),
    ({"values": [1], "set": {"model.n_layers": "value"}, "colour": 1}, r"sweep 'bad'.*unknown key\(s\) \['colour'\]"),
])
def test_bad_sweeps_fail_naming_sweep_and_value(sweep, message):
    with pytest.raises(ConfigError, match=message):
        grid_of(bad=sweep)


def test_sweep_name_clash_with_a_variant():
    cfg = {**BASE, "variants": {**BASE["variants"], "wd_0.1": {}},
           "sweeps": {"wd": {"values": [0.1], "set": {"train.weight_decay": "value"}}}}
    with pytest.raises(ConfigError, match="'wd_0.1' is already taken"):
        Grid.from_config(cfg)


def test_schema_accepts_sweeps_and_rejects_unknown_keys(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "sweeps": SWEEPS}))
    cfg = load_pipeline_config(path)
    assert Grid.from_config(cfg).variants["grad_clip_off"]["family"] == "grad_clip"
    path.write_text(yaml.safe_dump({**BASE, "sweeps": {"x": {"values": [1]}}}))
    with pytest.raises(Exception, match="'set' is a required property"):
        load_pipeline_config(path)


def test_sweep_variant_is_planned_by_the_pipeline(tmp_path):
    """A dry run of the Snakefile on a grid with a sweep plans one train job per sweep value, except for a
    value that is the base config itself (dropout 0): its runs are the baseline's, trained once."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    cfg = {**BASE, "sweeps": {"dropout": SWEEPS["dropout"]}, "results": str(tmp_path / "r"),
           "figures": str(tmp_path / "f"), "logs": str(tmp_path / "l"), "work": str(tmp_path / "w")}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(repo / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(path), "--cores", "1", "-p"],
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for v in ("dropout_0.1", "dropout_0.3", "baseline"):
        assert f"variant={v}\n" in out or f"variant={v}" in out.split(), v
    assert "variant=dropout_0" not in out.split()  # = the baseline: no train job of its own
    assert f"dropout_0={tmp_path / 'r'}/runs/baseline/seed0/lr0.01" in out  # aggregate files it under both
