"""How much GPU memory a run's first step needs, from its config alone (no GPU, no weights).

Step 0 of every run is an eager statistics step (workflows.train.step.train_step: the eager module with
``stats=True``, outside torch.compile), so its activations are those of an eager forward: every tensor
autograd saves for backward stays alive until the backward frees it. That step, not the compiled steady
step, sets a job's peak, and a job's ``gpu_mem_mb`` budget (the train rule's resources.gpu_mem_mb, the
per-process cap of workflows.train.device.cap_memory) must hold it, with the data the job keeps on the GPU
(``device_data``: its cached validation windows, and its training tokens only where ``tokens_on_device`` puts
them there, the rule the training loop follows).

    python -m workflows.train.memory config/paper.yaml    # every variant's estimate beside the grid's budget
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from workflows.data.corpus import eval_window_count

# The training token stream lives on the GPU (int32; workflows.train.loop.Job gathers the windows there) only when it
# takes at most this share of the job's memory budget (gpu_mem_mb; a job without one: of its GPU's memory); otherwise
# each step's windows are gathered on the host from the memory-mapped split and copied from pinned memory without
# blocking, as nanoGPT does. The budget is for the step (weights, optimizer state, activations); the stream on the GPU
# only spares the host one gather and one copy of B·(T+1) token ids per step, which overlap the GPU's work anyway,
# so it may take a tenth of the budget at most: config/ladder-gpu.yaml's ~4.4 B tokens (~17 GiB as int32) would
# take a third of its 52000 MB, several times its first step's headroom.
TOKENS_ON_DEVICE_SHARE = 0.10
TOKEN_BYTES = 4  # a training token id on the GPU: int32 (uint16 on disk)
INDEX_BYTES = 8  # the cached validation windows (x and y) and a run's window offsets on the GPU: int64

# norms per block, by norm position (pre: before attention and FFN; sandwich: before and after both)
NORMS_PER_BLOCK = {"pre": 2, "post": 2, "reordered": 2, "sandwich": 4}


def param_count(model_cfg) -> int:
    """Parameters of the model (built on the meta device: no memory, no initialisation cost)."""
    from models import build

    with torch.device("meta"):
        model = build(model_cfg)
    return sum(p.numel() for p in model.parameters())


def explicit_attention(model_cfg, device_type: str) -> bool:
    """Whether attention materialises the T×T scores (models/attention.py): soft-capped attention outside
    flex_attention (CPU, or attention dropout), and SDPA with dropout on the CPU (its math kernel)."""
    if model_cfg.attn_softcap is not None:
        return not (device_type == "cuda" and model_cfg.dropout == 0.0)
    return device_type != "cuda" and model_cfg.dropout > 0.0


def saved_elements_per_token(model_cfg, device_type: str = "cuda") -> dict:
    """Elements that autograd saves per token in an eager forward (see ``first_step_memory``)."""
    c = model_cfg
    d, H, G, hd, f, T = c.d_model, c.n_heads, c.kv_heads, c.dim_head, c.ffn_dim, c.context_length
    from models.ffn import is_gated

    gated = ":" not in c.ffn and is_gated(c.ffn)
    sites = NORMS_PER_BLOCK.get(c.norm_position, 2)
    norm = d if c.norm == "none" else 3 * d  # the next linear's input; a norm adds its input and normalised x
    attn = ((H + 2 * G) * hd      # the fused q/k/v projection's output (v is a view of it)
            + (H + G) * hd        # q and k after RoPE (or QK-norm)
            + 2 * H * hd + H)     # attention output and log-sum-exp; the output projection's input
    if c.qk_norm:
        attn += 2 * (H + G) * hd  # QK-norm's input and normalised q, k
    if explicit_attention(c, device_type):
        attn += 1.5 * H * T + 2 * H * hd  # scores (soft-capped, softmax) and a mask; K/V repeated per head
    per_layer = (sites * norm  # each norm: its input, the normalised tensor, its output
                 + attn
                 + (4 * f if gated else 2 * f))  # FFN: up output, activation, (gate x up), the down input
    if c.dropout > 0:
        per_layer += 3 * d
    final = 3 * d if c.has_final_norm else d
    return {"per_layer": per_layer, "layers": c.n_layers * per_layer + final}


def first_step_memory(run_cfg, device_type: str = "cuda", dtype: str | None = None, budget_mb: float | None = None,
                      work=None) -> dict:
    """Bytes of a run's first (eager statistics) training step at its peak, as a sum of parts (an upper
    estimate: the parts need not all be alive at once).

    With P parameters, N = batch_size · context_length tokens, V the vocabulary, L layers, d the width, H/G
    query/KV heads of dimension hd, f the FFN width, T the context:

      state        16 P    fp32 weights, gradients and AdamW's two moments (4 + 4 + 8 bytes per parameter)
      casts         2 P    bf16/fp16 copies of the weights that autocast keeps for the backward (low precision)
      activations   4 N (L·a + n_f)   every saved tensor counted at 4 bytes (fp32; most are 2 under bf16
                   autocast, so on a GPU this part is an upper bound), with per layer and token
                   a = 3d·norms (d without norms) + (H+2G)hd + (H+G)hd + 2H·hd + H [+ 2(H+G)hd QK-norm] [+ 1.5·H·T + 2H·hd
                   when the scores are materialised] + (4f gated | 2f plain) [+ 3d with dropout]
                   and n_f = 3d for the final norm
      logits       16 N·V  the head's output, the fp32 log-softmax cross-entropy saves, and the fp32
                   gradient and its cast in the backward (4 bytes each)
      stats        10 B·H·T²  the statistics step's max attention logit (scores in bf16, their fp32 copy,
                   the masked copy; freed after each layer)
      data         what the job keeps on the GPU (``device_data``): its training tokens when they are placed
                   there (the job's budget ``budget_mb`` decides), its cached validation windows and a run's
                   window offsets; counted from the token files under ``work`` if built there, else bounded
                   from the config

    ``activations`` is checked against the tensors autograd actually saves (saved_tensors_hooks on small
    CPU models, tests/train/test_gpu_path.py): within 10% there, in fp32. Returns the parts and their "total",
    in bytes, "total_mb" (MiB), and the data part's "data_parts", "data_placement" and "data_note"."""
    from workflows.grid.config import RunConfig

    if isinstance(run_cfg, dict):
        run_cfg = RunConfig.from_dict(run_cfg)
    m, tc = run_cfg.model, run_cfg.train
    dtype = dtype or tc.dtype
    low = dtype in ("bfloat16", "float16") or (dtype == "auto" and device_type == "cuda")
    P = param_count(m)
    N = tc.batch_size * m.context_length
    parts = {
        "state": 16 * P,
        "casts": 2 * P if low else 0,
        "activations": 4 * N * saved_elements_per_token(m, device_type)["layers"],
        "logits": 16 * N * m.vocab_size,
        "stats": 10 * tc.batch_size * m.n_heads * m.context_length ** 2,
    }
    data = device_data(run_cfg, budget_mb, work, device_type)
    parts["data"] = data["total"]
    total = sum(parts.values())
    return {**{k: int(v) for k, v in parts.items()}, "params": P, "total": int(total),
            "total_mb": math.ceil(total / 2**20), "data_placement": data["placement"], "data_note": data["note"],
            "data_parts": {k: data[k] for k in ("train_tokens", "val_windows", "offsets")}}


# ---- the data a job keeps on the GPU --------------------------------------------------------------
def token_bounds(data_cfg) -> dict | None:
    """Token counts of a hub corpus bounded from its config, before it is tokenised: {"train", "val", "how"}.
    The stream stops after ``data.max_chars`` characters, and a token (a byte, or a byte-level BPE token, ~4.3
    characters of English on average at vocabulary 8192) covers at least one character of ASCII text: train ≤
    max_chars tokens (a document's separator and UTF-8 characters of several bytes, rare in FineWeb-Edu, are not
    counted). The validation split is ``val_fraction`` of the documents, drawn at random: its expected share of
    the bound, val_fraction · max_chars, not a hard bound. None for the other sources: their counts are known
    once tokenised (``token_counts``)."""
    if data_cfg.kind != "hub":
        return None
    val = math.ceil(data_cfg.val_fraction * data_cfg.max_chars)
    return {"train": int(data_cfg.max_chars), "val": val,
            "how": f"bounded by data.max_chars: train <= {data_cfg.max_chars:.3g} tokens, validation ~ "
                   f"val_fraction x max_chars = {val:.3g} tokens"}


def token_counts(data_cfg, work) -> dict | None:
    """{"train", "val"}: the token counts of the data config's token files under ``work`` (their meta.json), or None
    when they are not built there."""
    try:
        meta = json.loads((Path(work) / "data" / data_cfg.key() / "meta.json").read_text())
        return {"train": int(meta["train"]["tokens"]), "val": int(meta["val"]["tokens"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tokens_on_device(data_cfg, n_tokens: int | None, budget_mb: float) -> bool | None:
    """The placement rule of a job's training tokens (workflows.train.loop.Job): on the GPU when TOKEN_BYTES per
    token fit TOKENS_ON_DEVICE_SHARE of ``budget_mb`` (MiB, as workflows.train.device.cap_memory reads a budget).
    The count that decides is the larger of the real one (``n_tokens``) and, for a hub corpus, its config's
    bound (``token_bounds``): the budget is checked from the config before the corpus is tokenised, and a job
    places its tokens as that check did. None when neither count is known (a local corpus not tokenised yet)."""
    bound = token_bounds(data_cfg)
    counts = [n for n in (n_tokens, bound["train"] if bound else None) if n is not None]
    if not counts:
        return None
    return TOKEN_BYTES * max(counts) <= TOKENS_ON_DEVICE_SHARE * budget_mb * 2**20


def held_eval_windows(n_val: int | None, seq_len: int, n_windows: int | None, batch_size: int, padded: bool):
    """Validation windows one of a job's evaluation caches holds (workflows.train.loop.Job.eval_batches): the
    curve's ``n_windows`` or every window of the split (``None``; workflows.data.corpus.eval_starts), the last
    batch padded to the full batch size when ``padded`` (a compiled job). With ``n_val`` unknown, ``n_windows``
    (an upper bound), or None for the whole split."""
    if n_val is None:
        if n_windows is None:
            return None
        w = max(1, n_windows)
    else:
        w = eval_window_count(n_val, seq_len, n_windows)
    return -(-w // batch_size) * batch_size if padded else w


def device_data(run_cfg, budget_mb: float | None = None, work=None, device_type: str = "cuda") -> dict:
    """Bytes of the data a job keeps on the GPU (workflows.train.loop.Job) while a run's first step runs, an
    upper estimate, as parts and their "total", with "placement" of the training tokens ("device", "host", or
    "device or host" when it cannot be decided here) and a "note" saying where the counts came from:

      train_tokens  4 per training token when they are on the GPU (``tokens_on_device``; undecided: the most the
                    rule lets them take, TOKENS_ON_DEVICE_SHARE of the budget)
      val_windows   16 T per validation window (x and y, int64) of both evaluation caches, which stay for the
                    job's life: the curve's eval_windows and the final score's final_eval_windows (by default
                    the whole validation split), each padded to whole batches when compiled
      offsets       8 · steps · batch_size: a run's window offsets, moved once to the GPU with its tokens

    Counts come from the token files under ``work`` when built there, else from the config (``token_bounds``).
    Nothing on the CPU: a CPU job's data is in host memory."""
    data, tc, T = run_cfg.data, run_cfg.train, run_cfg.model.context_length
    zero = {"train_tokens": 0, "val_windows": 0, "offsets": 0}
    if device_type != "cuda":
        return {**zero, "total": 0, "placement": "host", "note": "CPU: the data stays in host memory"}
    counts = token_counts(data, work) if work is not None else None
    bound = token_bounds(data)
    n_train = counts["train"] if counts else (bound["train"] if bound else None)
    n_val = counts["val"] if counts else (bound["val"] if bound else None)
    how = ("counted in the token files" if counts else bound["how"] if bound
           else "not tokenised yet (python -m workflows.data builds the token files)")
    if budget_mb:
        on = tokens_on_device(data, counts["train"] if counts else None, budget_mb)
    else:  # no budget: the job's share is of its GPU's memory, unknown here; counted as on it
        on = True if n_train is not None else None
    if on:
        tokens, placement = TOKEN_BYTES * n_train, "device"
    elif on is None:  # undecided: the most the rule lets them take
        tokens, placement = int(TOKENS_ON_DEVICE_SHARE * budget_mb * 2**20) if budget_mb else 0, "device or host"
    else:
        tokens, placement = 0, "host"
    padded = tc.compile == "on" or tc.compile == "auto"
    windows, unknown = 0, False
    for n in {tc.eval_windows, tc.final_eval_windows}:
        w = held_eval_windows(n_val, T, n, tc.batch_size, padded)
        unknown |= w is None
        windows += w or 0
    parts = {"train_tokens": tokens, "val_windows": 2 * INDEX_BYTES * T * windows,
             "offsets": INDEX_BYTES * tc.steps * tc.batch_size if tokens else 0}
    budget = f"{TOKENS_ON_DEVICE_SHARE:.0%} of {budget_mb:g} MB" if budget_mb else "no budget"
    note = (f"training tokens on the {placement} ({how}; {TOKEN_BYTES} bytes each on the GPU, {budget}"
            + ((f": up to {tokens / 2**30:.2f} GiB counted" if tokens else ": not counted")
               if placement == "device or host" else "") + "); "
            f"{windows:,} validation windows cached" + (" (whole split: unknown until tokenised, not counted)"
                                                         if unknown else ""))
    return {**parts, "total": sum(parts.values()), "placement": placement, "note": note}


def grid_budgets(config_path, overrides: dict | None = None, device_type: str = "cuda", work=None) -> list[dict]:
    """Every variant of a grid (one row per variant and distinct shape: seeds and LRs share a shape) with its
    train jobs' ``gpu_mem_mb`` (the grid's own value, or ``overrides``: a profile's or --config's) and its
    first-step estimate, the data the job keeps on the GPU included (token counts from the token files under
    ``work``, by default the grid's work folder, when built there)."""
    from workflows.grid.grid import Grid, load_pipeline_config

    cfg = load_pipeline_config(config_path)
    cfg.update(overrides or {})
    grid = Grid.from_config(cfg)
    rows = []
    for v in grid.variants:
        rc = grid.run_config(v, grid.variant_seeds(v)[0], grid.variant_lrs(v)[0])
        est = first_step_memory(rc, device_type, budget_mb=cfg.get("gpu_mem_mb"), work=work or cfg.get("work", "work"))
        rows.append({"variant": v, "gpu_mem_mb": cfg.get("gpu_mem_mb"), "estimate_mb": est["total_mb"], **est,
                     "run": rc})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="First-step GPU memory of each variant of a grid, beside its budget.")
    p.add_argument("config", help="a grid config (config/paper.yaml)")
    p.add_argument("--work", help="where to look for the grid's token files (default: the grid's work folder); "
                   "without them the token counts are bounded from the config")
    args = p.parse_args(argv)
    rows = grid_budgets(args.config, work=args.work)
    short, notes = 0, {}
    for r in rows:
        fits = r["gpu_mem_mb"] and r["estimate_mb"] <= r["gpu_mem_mb"]
        short += not fits
        print(f"{r['variant']:>22}: {r['estimate_mb']:>7,} MiB (activations {r['activations'] / 2**30:5.1f} GiB, "
              f"logits {r['logits'] / 2**30:4.1f} GiB, data {r['data'] / 2**30:4.2f} GiB) of {r['gpu_mem_mb']} MB "
              f"budget {'ok' if fits else 'SHORT'}")
        notes.setdefault(r["data_note"], []).append(r["variant"])
    for note, variants in notes.items():  # the data line: where the tokens live and where the counts came from
        print(f"data ({'every variant' if len(notes) == 1 else ', '.join(variants)}): {note}")
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
