"""Data: markdown stripping, play split, local files through `datasets`, tokenizers, token files, the
training split's unigram entropy in meta.json."""
import json
import math

import numpy as np
import pytest
import torch

from workflows.data import corpus as D


def test_strip_markdown_removes_markup_and_keeps_text():
    md = "# Hamlet\n\n## ACT I\n\n_Enter HAMLET_\n\n**HAMLET**  \nTo be, or not to be  \nthat is the question.\n"
    out = D.strip_markdown(md)
    assert out == "Hamlet\n\nACT I\n\nEnter HAMLET\n\nHAMLET\nTo be, or not to be\nthat is the question.\n"
    assert "snake_case_word" in D.strip_markdown("a snake_case_word here")


def test_play_split_is_deterministic_whole_plays():
    plays = {f"genre/play-{i:02d}": f"text {i}" for i in range(38)}
    train, val = D.split_plays(plays)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(plays)
    assert len(val) == 4 and D.split_plays(dict(reversed(list(plays.items())))) == (train, val)


def test_local_text_files_round_trip_bytes(corpus, work):
    cfg = D.DataConfig(source=str(corpus / "*.txt"))
    data = D.prepare(cfg, work)
    assert data.meta["vocab_size"] == 256 and data.bytes_per_token == 1.0
    text = bytes(np.asarray(data.train[:200]).tolist()).decode()
    assert "quick brown fox" in text
    total = sum(len(p.read_text().encode()) + 2 for p in corpus.glob("*.txt"))
    assert len(data.train) + len(data.val) == total  # every byte (plus separators) lands in one split
    assert data.meta["train"]["documents"] + data.meta["val"]["documents"] == 12


def test_jsonl_text_field_and_error_naming_it(tmp_path, work):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"story number {i} " * 20}) for i in range(20)))
    data = D.prepare(D.DataConfig(source=str(f), text_field="body"), work)
    assert len(data.train) > len(data.val) > 0
    with pytest.raises(D.DataError, match="text_field='text'"):
        D.prepare(D.DataConfig(source=str(f)), work)


def test_bpe_is_trained_on_train_split_and_compresses(corpus, work):
    data = D.prepare(D.DataConfig(source=str(corpus / "*.txt"), tokenizer="bpe", bpe_vocab_size=300), work)
    assert data.meta["vocab_size"] <= 300 and data.bytes_per_token > 1.2
    assert (data.folder / "tokenizer.json").exists() and int(np.max(data.train)) < 300


def test_corrupt_token_file_is_named_and_rebuilt(corpus, work):
    cfg = D.DataConfig(source=str(corpus / "doc0*.txt"))
    data = D.prepare(cfg, work)
    good = np.array(data.train)
    path = data.folder / "train.bin"
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(D.DataError, match="train.bin is corrupt"):
        D.read_tokens(data.folder)
    assert np.array_equal(np.array(D.prepare(cfg, work).train), good)
    (data.folder / "val.bin").unlink()
    with pytest.raises(D.DataError, match="val.bin is missing"):
        D.read_tokens(data.folder)


def test_hub_offline_fails_fast_with_advice(monkeypatch, work):
    monkeypatch.setattr(D, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    cfg = D.DataConfig(source="hf:roneneldan/TinyStories")
    with pytest.raises(D.DataError, match="cannot reach huggingface.co") as e:
        D.prepare(cfg, work)
    msg = str(e.value)
    assert f"work/data/{cfg.key()}/" in msg and "python -m workflows.data --json" in msg
    assert "Shakespeare fallback" in msg and "data.source 'shakespeare', tokenizer 'bytes'" in msg


def test_hub_source_offline_names_the_token_files_and_the_shakespeare_fallback(tmp_path):
    """The GPU grid's FineWeb-Edu source with HF_HUB_OFFLINE=1 and an empty cache, as on an offline GPU node:
    the data CLI (what the pipeline's data rule runs) exits with one clear error, not a hub traceback."""
    import os
    import subprocess
    import sys

    source = {"source": "hf:HuggingFaceFW/fineweb-edu:sample-10BT", "tokenizer": "bpe", "bpe_vocab_size": 8192}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    r = subprocess.run([sys.executable, "-m", "workflows.data.corpus", "--json", json.dumps(source), "--work",
                        str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and out.startswith("error: data.source='hf:HuggingFaceFW/fineweb-edu:sample-10BT'"), out
    assert "Traceback" not in out and "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set" in out, out
    key = D.DataConfig.from_dict(source).key()
    assert f"copy work/data/{key}/ to {tmp_path / 'work' / 'data' / key}/" in out, out
    assert "Shakespeare fallback" in out and "data={source: shakespeare, tokenizer: bytes}" in out, out
    assert not (tmp_path / "work" / "data" / key / "train.bin").exists()


@pytest.mark.parametrize("kw, field", [
    ({"tokenizer": "wordpiece"}, "data.tokenizer"),
    ({"source": "/nonexistent/*.txt"}, "data.source"),
    ({"val_fraction": 1.5}, "data.val_fraction"),
    ({"bpe_vocab_size": 100}, "data.bpe_vocab_size"),
])
def test_bad_data_config_names_field(kw, field):
    with pytest.raises(D.DataError, match=field):
        D.DataConfig(**kw)


def test_batches_are_pure_functions_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.uint16)
    a = D.train_batch(tokens, 4, 16, seed=3, step=7)
    b = D.train_batch(tokens, 4, 16, seed=3, step=7)
    c = D.train_batch(tokens, 4, 16, seed=3, step=8)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # y is x shifted by one
    t = torch.from_numpy(tokens.astype(np.int32))
    assert torch.equal(D.train_batch(t, 4, 16, 3, 7)[0], a[0])  # device path gathers the same windows
    x1, _ = D.val_windows(tokens, 16, 8)
    x2, _ = D.val_windows(tokens, 16, 8)
    assert torch.equal(x1, x2) and x1.shape == (8, 16)


def test_unigram_entropy_by_hand():
    # "aab": p(a) = 2/3, p(b) = 1/3 → H = ln 3 − (2/3) ln 2 = 0.636514168 nats
    h, bpb = D.unigram_entropy(list(b"aab"), n_bytes=3)
    assert h == pytest.approx(math.log(3) - 2 / 3 * math.log(2), rel=1e-12)
    assert h == pytest.approx(0.636514168294813, rel=1e-12)
    assert bpb == pytest.approx(h / math.log(2))  # bytes tokenizer: one token per byte
    h2, bpb2 = D.unigram_entropy([7, 7, 9, 9], n_bytes=8)  # 2 tokens of 2 bytes each → ln 2 / token
    assert h2 == pytest.approx(math.log(2)) and bpb2 == pytest.approx(0.5)  # 1 bit/token over 2 bytes
    assert D.unigram_entropy([5, 5, 5], 3) == (0.0, 0.0)
    assert math.isnan(D.unigram_entropy([1, 2], None)[1])


def test_meta_records_the_train_unigram_entropy(tmp_path, work):
    src = tmp_path / "tiny.txt"
    src.write_text("abracadabra " * 50)
    cfg = D.DataConfig(source=str(src))
    key = cfg.key()
    data = D.prepare(cfg, work)
    assert data.folder.name == key  # the cache key does not depend on meta.json's content
    train = bytes(np.asarray(data.train).tolist())
    counts = {b: train.count(bytes([b])) for b in set(train)}
    ref = -sum(c / len(train) * math.log(c / len(train)) for c in counts.values())
    m = json.loads((data.folder / "meta.json").read_text())["train"]
    assert m["unigram_entropy_nats_per_token"] == pytest.approx(ref, rel=1e-12)
    assert m["unigram_entropy_bits_per_byte"] == pytest.approx(ref / math.log(2), rel=1e-12)  # bytes: same
    assert D.train_unigram_entropy(data.folder / "meta.json") == pytest.approx(
        {"nats_per_token": ref, "bits_per_byte": ref / math.log(2)})
    # a cache written before the field existed: computed from train.bin, meta.json left as it is
    meta_path = data.folder / "meta.json"
    old = json.loads(meta_path.read_text())
    for k in ("unigram_entropy_nats_per_token", "unigram_entropy_bits_per_byte"):
        del old["train"][k]
    meta_path.write_text(json.dumps(old))
    before = meta_path.read_bytes()
    assert D.train_unigram_entropy(meta_path)["nats_per_token"] == pytest.approx(ref, rel=1e-12)
    assert meta_path.read_bytes() == before
    assert D.prepare(cfg, work).folder == data.folder  # still a valid cache (no rebuild needed)
