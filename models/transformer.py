"""The decoder-only Transformer: embeddings → L blocks → (final norm) → head → (soft-cap).

Instrumentation is off by default and costs one ``is None`` check per sublayer. With
``forward(tokens, stats=True)`` the model returns ``(logits, stats)`` where stats holds, per layer
and sublayer, the residual stream's mean / std / RMS / min / max, the max attention logit per layer,
and the mean and max over positions of the output log-partition log Z = logsumexp(logits), under the names
models/statistics.py declares.
``forward(tokens, cache=KVCache(...))`` decodes incrementally instead (models/kvcache.py): the tokens run at
the positions after those already cached, and their keys and values are appended to the cache.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import softcap
from .blocks import FINAL_NORM, Block
from .config import ModelConfig
from .init import initialise
from .norms import make_norm
from .positions import ADDITIVE_POSITIONS
from .statistics import ATTN_LOGIT_MAX, EMBED, LOGZ_MAX, LOGZ_MEAN, RESIDUAL, RESIDUAL_MOMENTS

STAT_FIELDS = RESIDUAL_MOMENTS  # the moments of each residual-stream row (models/statistics.py)


def _moments(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return torch.stack([x.mean(), x.std(), x.pow(2).mean().sqrt(), x.amin(), x.amax()])


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        pos_cls = ADDITIVE_POSITIONS.get(cfg.position)
        self.pos = pos_cls(cfg.context_length, cfg.d_model) if pos_cls else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = (make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
                           if cfg.has_final_norm else nn.Identity())  # FINAL_NORM unless final_norm set
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias and not cfg.tie_embeddings)
        initialise(self, cfg)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def forward(self, tokens: torch.Tensor, stats: bool = False, cache=None):
        B, T = tokens.shape
        if cache is not None:
            return self._decode(tokens, cache, stats)
        if T > self.cfg.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length={self.cfg.context_length}")
        x = self.tok_emb(tokens)
        if self.pos is not None:
            x = x + self.pos(T)
        x = self.drop(x)
        recs = [] if stats else None
        emb = x.detach() if stats else None
        for block in self.blocks:
            rec = {} if stats else None
            x = block(x, rec)
            if stats:
                recs.append(rec)
        logits = softcap(self.head(self.final_norm(x)), self.cfg.final_softcap)
        if not stats:
            return logits
        return logits, self._collect(emb, recs, logits.detach())

    def _decode(self, tokens: torch.Tensor, cache, stats: bool) -> torch.Tensor:
        """The tokens at positions cache.length … + T - 1 against everything cached (models/kvcache.py)."""
        if stats:
            raise ValueError("stats=True is not available with a KV cache (decoding is not instrumented)")
        B, T = tokens.shape
        cache.check(B, T)
        x = self.tok_emb(tokens)
        if self.pos is not None:
            x = x + self.pos(T, cache.length)
        for block, layer in zip(self.blocks, cache.layers):
            x = block(x, None, layer)
        cache.length += T
        return softcap(self.head(self.final_norm(x)), self.cfg.final_softcap)

    @torch.no_grad()
    def _collect(self, emb, recs, logits) -> dict:
        rows, tensors = [(EMBED, -1)], [_moments(emb)]
        for i, rec in enumerate(recs):
            for site, x in rec[RESIDUAL]:
                rows.append((site, i))
                tensors.append(_moments(x))
        values = torch.stack(tensors).tolist()
        logz = torch.logsumexp(logits.float(), dim=-1)
        return {
            RESIDUAL: [dict(layer=layer, site=site, **dict(zip(STAT_FIELDS, v)))
                       for (site, layer), v in zip(rows, values)],
            ATTN_LOGIT_MAX.name: torch.stack([r[ATTN_LOGIT_MAX.name] for r in recs]).tolist(),
            LOGZ_MEAN.name: logz.mean().item(),
            LOGZ_MAX.name: logz.amax().item(),
        }

    def layer_of(self, param_name: str) -> int | None:
        """Block index of a parameter name ('blocks.3.…' -> 3), None for embeddings/head/final norm."""
        parts = param_name.split(".")
        return int(parts[1]) if parts[0] == "blocks" else None
