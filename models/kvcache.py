"""KV-cached incremental decoding: prefill a prompt, then one token at a time.

``KVCache(cfg, batch_size)`` preallocates every layer's keys and values, each of shape
(B, n_kv_heads, max_len, head_dim) (the layout of HF's static cache and litgpt's ``KVCache``): the cache
holds the K/V *heads*, not the query heads, so it shrinks by n_heads / n_kv_heads with GQA and MQA
(``nbytes`` = 2 · layers · B · max_len · n_kv_heads · head_dim · bytes per element). ``length`` is the number
of tokens cached so far; ``model(tokens, cache=cache)`` runs the new tokens at positions
``length … length + T - 1``, appends their K/V and advances ``length``. A step that would run past
``max_len`` (at most the model's ``context_length``) raises before any compute.

``generate(model, prompt, max_new_tokens)`` is greedy (``temperature=0``) or samples from the softmax at
``temperature`` (optionally the ``top_k`` largest logits) with a ``torch.Generator``. Decoding is inference
only: the cached path has no dropout and no instrumentation (``stats``).
"""
from __future__ import annotations

import torch


class LayerCache:
    """One layer's slice of a ``KVCache``: ``update`` writes the new K/V and returns everything cached."""

    def __init__(self, owner: "KVCache", k: torch.Tensor, v: torch.Tensor):
        self.owner, self.k, self.v = owner, k, v

    @property
    def start(self) -> int:
        return self.owner.length

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, n_kv_heads, T, head_dim) of the new tokens -> (B, n_kv_heads, length + T, head_dim)."""
        s, T = self.owner.length, k.shape[-2]
        self.k[:, :, s:s + T] = k
        self.v[:, :, s:s + T] = v
        return self.k[:, :, :s + T], self.v[:, :, :s + T]


class KVCache:
    """Preallocated keys and values of every layer (module docstring)."""

    def __init__(self, cfg, batch_size: int, max_len: int | None = None, device=None,
                 dtype: torch.dtype = torch.float32):
        max_len = cfg.context_length if max_len is None else max_len
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer")
        if not 1 <= max_len <= cfg.context_length:
            raise ValueError(f"max_len={max_len} must be between 1 and context_length={cfg.context_length}")
        self.cfg, self.batch_size, self.max_len = cfg, batch_size, max_len
        shape = (cfg.n_layers, 2, batch_size, cfg.kv_heads, max_len, cfg.dim_head)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.layers = [LayerCache(self, self.kv[i, 0], self.kv[i, 1]) for i in range(cfg.n_layers)]
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K and V: 2 · layers · B · max_len · n_kv_heads · head_dim · element size."""
        return self.kv.numel() * self.kv.element_size()

    def reset(self, length: int = 0) -> None:
        """Forget every token after the first ``length`` (0: an empty cache)."""
        if not 0 <= length <= self.max_len:
            raise ValueError(f"length={length} must be between 0 and max_len={self.max_len}")
        self.length = length

    def check(self, B: int, T: int) -> None:
        """Raise before any compute when B × T new tokens do not fit."""
        if B != self.batch_size:
            raise ValueError(f"batch of {B} sequences, but the cache was allocated for batch_size={self.batch_size}")
        if self.length + T > self.max_len:
            raise ValueError(f"{T} new token(s) after {self.length} cached exceed the cache's max_len={self.max_len}"
                             f" (context_length={self.cfg.context_length})")


def kv_cache_bytes(cfg, batch_size: int, length: int, bytes_per_element: int = 4) -> int:
    """2 · layers · B · T · n_kv_heads · head_dim · bytes: K and V of ``length`` tokens of ``batch_size`` sequences."""
    return 2 * cfg.n_layers * batch_size * length * cfg.kv_heads * cfg.dim_head * bytes_per_element


def next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, vocab) logits of the last position -> (B, 1) token ids: argmax at temperature 0, else a sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """prompt: (B, T) token ids -> (B, T + max_new_tokens): one prefill, then one cached step per token."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be a positive integer or None")
    B, T = prompt.shape
    p = next(model.parameters())
    cache = KVCache(model.cfg, B, T + max_new_tokens, device=p.device, dtype=p.dtype)  # raises when too long
    was_training = model.training
    model.eval()
    try:
        out, x = [prompt], prompt
        for _ in range(max_new_tokens):
            x = next_token(model(x, cache=cache)[:, -1], temperature, top_k, generator)
            out.append(x)
    finally:
        model.train(was_training)
    return torch.cat(out, dim=1)
