"""The decode bench (workflows/bench/decode.py) on a tiny model: one row per arm × rep × batch × context with the
columns the figure and the claims read, arms that differ only in n_kv_heads, KV bytes by the formula,
the device and thread count recorded, the CLI writing the table and the figure (PNG readable, PDF), and
bad settings rejected by name before anything is built."""
from __future__ import annotations

import json

import matplotlib.image as mpimg
import pandas as pd
import pytest
import torch

from models import ConfigError
from workflows.bench import decode

TINY = {"d_model": 32, "n_heads": 4, "n_layers": 2, "head_dim": None, "d_ff": None}
BASE = {"vocab_size": 61, "n_kv_heads": 2, "norm": "rmsnorm", "ffn": "swiglu", "position": "rope"}


def test_measure_rows_columns_and_arms():
    df = decode.measure(BASE, TINY, batches=[1, 3], contexts=[4, 9], reps=2, steps=2, warmup=0)
    assert list(df.columns) == decode.COLUMNS
    assert len(df) == 3 * 2 * 2 * 2
    assert df.groupby(["arm", "rep", "batch_size", "context"]).size().eq(1).all()
    assert dict(df.groupby("arm").n_kv_heads.first()) == {"mha": 4, "gqa": 2, "mqa": 1}
    assert (df.tokens_per_s > 0).all() and (df.us_per_token - 1e6 / df.tokens_per_s).abs().max() < 1e-6
    hd = 32 // 4
    assert (df.kv_bytes == 2 * 2 * df.batch_size * df.context * df.n_kv_heads * hd * 4).all()
    assert (df.kv_bytes_per_token == 2 * 2 * df.n_kv_heads * hd * 4).all()
    assert df.threads.eq(torch.get_num_threads()).all() and df.device.str.len().gt(0).all()
    p = df.groupby("arm").params.first()  # the same model otherwise: only the K/V projections shrink
    assert p.mha - p.mqa == 2 * 2 * (4 - 1) * hd * 32
    # every rep visits the arms in a rotated order, so no arm always runs first
    firsts = df.groupby(["rep", "batch_size", "context"], sort=False).arm.first()
    assert set(firsts) == {"mha", "gqa", "mqa"}


def test_decoder_decodes_from_the_cached_context():
    cfg = decode.arm_configs(BASE, TINY, 12)["mqa"]
    d = decode.Decoder(cfg, [2], torch.device("cpu"), torch.float32)
    d.decode(2, 5, 3)
    assert d.caches[2].length == 8
    d.decode(2, 9, 3)  # the last position of the cache
    assert d.caches[2].length == 12
    with pytest.raises(ValueError, match="max_len=12"):
        d.decode(2, 10, 3)


def test_default_model_is_the_grid_baseline_scaled():
    cfgs = decode.arm_configs(decode.default_model(), None, 1032)
    mha = cfgs["mha"]
    assert (mha.d_model, mha.n_heads, mha.n_layers, mha.dim_head, mha.context_length) == (256, 8, 4, 32, 1032)
    assert {a: c.kv_heads for a, c in cfgs.items()} == {"mha": 8, "gqa": 2, "mqa": 1}
    rest = [{k: v for k, v in c.to_dict().items() if k != "n_kv_heads"} for c in cfgs.values()]
    assert rest[0] == rest[1] == rest[2]  # the arms differ in n_kv_heads only


@pytest.mark.parametrize("kw, match", [
    (dict(batches=[0]), "--batch"), (dict(contexts=[]), "--context"), (dict(reps=0), "--reps"),
    (dict(steps=0), "--steps"), (dict(dtype="fp8"), "--dtype.*float32"),
])
def test_bad_settings_raise_before_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        decode.measure(BASE, TINY, **{**dict(batches=[1], contexts=[4], reps=1, steps=1), **kw})


def test_bad_model_raises_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="n_heads=3"):
        decode.arm_configs(BASE, {**TINY, "n_heads": 3, "d_model": 48}, 16)
    with pytest.raises(ConfigError, match="ffn='nope'"):
        decode.arm_configs({**BASE, "ffn": "nope"}, TINY, 16)
    with pytest.raises(ConfigError, match="arms.*choose from"):
        decode.arm_configs(BASE, TINY, 16, arms=("mha", "xqa"))
    assert set(decode.arm_configs(BASE, {**TINY, "n_heads": 2, "d_model": 32}, 16, arms=("mha", "mqa"))) == {"mha", "mqa"}


def test_cli_writes_table_and_figure(tmp_path):
    out, figs = tmp_path / "r" / "decode.parquet", tmp_path / "f"
    rc = decode.main(["--out", str(out), "--batch", "1", "2", "--context", "3", "6", "--reps", "2", "--steps", "1",
                      "--threads", "1", "--model-json", json.dumps(BASE), "--overrides-json", json.dumps(TINY),
                      "--figures", str(figs)])
    assert rc == 0
    df = pd.read_parquet(out)
    assert len(df) == 3 * 2 * 2 * 2 and df.threads.eq(1).all()
    png, pdf = figs / "decode.png", figs / "decode.pdf"
    assert mpimg.imread(png).shape[0] > 100 and pdf.read_bytes().startswith(b"%PDF")
    png.unlink()
    assert decode.main(["--plot", str(out), "--figures", str(figs)]) == 0 and png.exists()
    assert not list(figs.glob(".*tmp"))  # written atomically


def test_figure_subtitle_states_scale_and_device(tmp_path, monkeypatch):
    from workflows.plots import decode as decode_plot

    df = decode.measure(BASE, TINY, batches=[1], contexts=[4, 8], reps=2, steps=1, warmup=0)
    texts = []
    real = decode_plot.add_subtitle

    def spy(fig, text, **kw):
        texts.append(text)
        return real(fig, text, **kw)

    monkeypatch.setattr(decode_plot, "add_subtitle", spy)
    decode_plot.figure(df, tmp_path, decode.ARMS)
    assert set(decode_plot.ARM_COLORS) == set(decode.ARMS)
    assert len(texts) == 1 and "d_model 32" in texts[0] and "float32" in texts[0]
    assert df.device.iloc[0] in texts[0] and "torch threads" in texts[0]
