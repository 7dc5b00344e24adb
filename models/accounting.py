"""Parameter, FLOP and memory accounting for a ``ModelConfig``.

FLOPs per token follow the PaLM convention (Chowdhery et al. 2022, App. B):
    training FLOPs / token = 6 N + 12 · L · H · Q · T
with N the number of matmul weight parameters (all Linear layers of the blocks plus the output
projection d·V, counted once even when tied to the input embedding; embedding look-ups, norms and
biases excluded), L layers, H query heads, Q head dim, T sequence length (context_length unless given).
"""
from __future__ import annotations

from torch import nn

from .config import ModelConfig


def count_params(model: nn.Module) -> dict[str, int]:
    """total: unique parameters; nonembed: total minus token and position embeddings (and an untied
    output embedding), the convention of Kaplan et al. 2020."""
    seen, total, embed = set(), 0, 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if name.startswith(("tok_emb.", "pos.", "head.")):
            embed += p.numel()
    return {"total": total, "nonembed": total - embed}


def matmul_params(cfg: ModelConfig) -> int:
    d, H, G, Q, f = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_head, cfg.ffn_dim
    attn = d * (H + 2 * G) * Q + H * Q * d
    ffn = d * f * (3 if cfg.ffn in ("swiglu", "geglu", "reglu") else 2)
    return cfg.n_layers * (attn + ffn) + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token, PaLM convention: 6N + 12·L·H·Q·T (see module docstring)."""
    T = cfg.context_length if seq_len is None else seq_len
    return 6 * matmul_params(cfg) + 12 * cfg.n_layers * cfg.n_heads * cfg.dim_head * T


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_element: int = 2) -> int:
    """Bytes of K and V cached per generated token: 2 · L · n_kv_heads · head_dim · bytes (bf16: 2)."""
    return 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_head * bytes_per_element
