"""How much GPU memory a run's first step needs, from its config alone (no GPU, no weights).

Step 0 of every run is an eager statistics step (workflows.train.loop.train_step: the eager module with
``stats=True``, outside torch.compile), so its activations are those of an eager forward: every tensor
autograd saves for backward stays alive until the backward frees it. That step, not the compiled steady
step, sets a job's peak, and a job's ``gpu_mem_mb`` budget (the train rule's resources.gpu_mem_mb, the
per-process cap of workflows.train.device.cap_memory) must hold it.

    python -m workflows.train.memory config/paper.yaml    # every variant's estimate beside the grid's budget
"""
from __future__ import annotations

import argparse
import math
import sys

import torch

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


def first_step_memory(run_cfg, device_type: str = "cuda", dtype: str | None = None) -> dict:
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

    ``activations`` is checked against the tensors autograd actually saves (saved_tensors_hooks on small
    CPU models, tests/test_gpu_path.py): within 10% there, in fp32. Returns the parts and their "total",
    in bytes, and "total_mb" (MiB)."""
    from workflows.train.loop import RunConfig

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
    total = sum(parts.values())
    return {**{k: int(v) for k, v in parts.items()}, "params": P, "total": int(total),
            "total_mb": math.ceil(total / 2**20)}


def grid_budgets(config_path, overrides: dict | None = None, device_type: str = "cuda") -> list[dict]:
    """Every variant of a grid (one row per variant and distinct shape: seeds and LRs share a shape) with its
    train jobs' ``gpu_mem_mb`` (the grid's own value, or ``overrides``: a profile's or --config's) and its
    first-step estimate."""
    from workflows.grid.grid import Grid, load_pipeline_config

    cfg = load_pipeline_config(config_path)
    cfg.update(overrides or {})
    grid = Grid.from_config(cfg)
    rows = []
    for v in grid.variants:
        rc = grid.run_config(v, grid.variant_seeds(v)[0], grid.variant_lrs(v)[0])
        est = first_step_memory(rc, device_type)
        rows.append({"variant": v, "gpu_mem_mb": cfg.get("gpu_mem_mb"), "estimate_mb": est["total_mb"], **est})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="First-step GPU memory of each variant of a grid, beside its budget.")
    p.add_argument("config", help="a grid config (config/paper.yaml)")
    args = p.parse_args(argv)
    rows = grid_budgets(args.config)
    short = 0
    for r in rows:
        fits = r["gpu_mem_mb"] and r["estimate_mb"] <= r["gpu_mem_mb"]
        short += not fits
        print(f"{r['variant']:>22}: {r['estimate_mb']:>7,} MiB (activations {r['activations'] / 2**30:5.1f} GiB, "
              f"logits {r['logits'] / 2**30:4.1f} GiB) of {r['gpu_mem_mb']} MB budget {'ok' if fits else 'SHORT'}")
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
