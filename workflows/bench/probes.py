"""Probes: measurements for the claims scorecard that are not training runs.

    python -m workflows.bench.probes --probe grad_init --config-json '{...}' (--registry config/claims.yaml |
        --arms-json '{arm: overrides}') --out results/probes/grad_init.parquet [--work work] [--threads 1]

Each probe builds fresh models (untrained, or trained a few steps by the trained probes below) and
writes one long table (``PROBE_COLUMNS``): one row per (arm, seed, depth, layer, metric). ``layer`` is
the block index for per-layer rows and -1 for whole-model rows (derived statistics such as a
last/first ratio, and the embedding row). The arms of a probe — which ``ModelConfig`` overrides it
compares — are part of the claim and live in the registry (``probes:`` section of
config/claims.yaml); its sizes (seeds, batches, depths, model width, training steps) come from the
pipeline config's ``claims.probes`` section (``ProbeSettings`` below, CPU-cheap defaults).

A probe model is: the grid's architecture axes (``model:`` of the pipeline config, without its shape
fields) ← the probe's shape (``ProbeSettings.model``) ← the arm's overrides ← ``n_layers = depth``;
the vocabulary is the tokenizer's.

Probes
- ``grad_init`` (C1, C16): per-layer gradient norms at initialisation on real training batches. For
  every batch the loss is back-propagated and the Frobenius norm of each layer's gradient is taken
  (the FFN output projection ``W2`` of Xiong et al. 2020 Thm 1 — ``ffn_down`` — and the whole block —
  ``block``); the per-layer value is the mean over ``batches`` batches (the expected gradient norm).
  The norm of the batch-averaged gradient is recorded too (``*_of_mean``). Derived per model:
  ``ratio_<group>`` = last / first layer, ``last_<group>`` = last layer.
- ``resid_init`` (C17): residual-stream RMS per layer at initialisation (``model(x, stats=True)``),
  mean over batches; derived ``last_embed_ratio`` = RMS after the last block / RMS of the embedding.
- ``kv_cache`` (C10): KV-cache bytes per token (bf16) from ``models.kv_cache_bytes_per_token`` and as
  measured from the K and V tensors a forward pass produces; derived ``ratio_vs_expected`` =
  (bytes of the MHA arm / bytes of this arm) ÷ (n_heads / n_kv_heads): exactly 1 when the cache
  shrinks in the ratio n_heads : n_kv_heads.
- ``softcap`` (C15): the largest soft-capped attention logit and final logit, divided by their cap,
  on a model whose query/key and output weights are scaled by ``softcap_scale`` so that the raw
  (uncapped) logits exceed the caps; also the cap function itself on inputs up to ±1e30 in fp32 and
  bf16. A capped metric is NaN when the raw logits never exceeded the cap (the probe proved nothing).

Trained probes measure at init and again after ``train_steps`` AdamW steps on training batches (the
training loop's ``losses`` and ``make_optimizer`` with ``TrainConfig``'s defaults otherwise: weight decay
0.1 on matrices, the warmup-cosine ``lr_at`` schedule to ``train_lr``, gradient clipping at 1); metric names end in ``_init`` or ``_trained``, ``loss_<phase>`` is the loss on the
measurement batches and ``train_steps`` the steps taken. ``tokens`` is the measured tokens at init and the
training tokens after training.
- ``attn_saturation`` (the lecture's "√d_k scaling solves softmax saturation, overflow, small
  gradients"): the attention probabilities of every layer, recomputed as softmax(cap(q·kᵀ·scale) + causal
  mask) from the q, k of the layer's own projection (a forward hook; ``attention_heads`` /
  ``attention_probs``, tested equal to the model's attention output). Per layer, over the query rows that
  see more than one key (row 0 is one-hot by construction): ``attn_entropy`` (mean row entropy, nats),
  ``attn_entropy_ratio`` (mean of entropy / ln(keys seen): 1 uniform, 0 one-hot), ``attn_saturated``
  (share of rows whose top probability exceeds ``SATURATED``), ``attn_logit_std`` (std of the softmax's
  input logits over the causal entries), ``attn_logit_absmax`` (largest |logit|: overflow),
  ``qkv_grad_norm`` (Frobenius norm of the loss gradient on the q/k/v projection weight, mean over
  batches: the lecture's "small gradients" of a saturated softmax). Derived per model: ``mean_<metric>`` over layers, and
  ``attn_entropy_uniform`` = the mean ln(keys seen) of those rows (the entropy of uniform attention).
- ``feature_corr`` (the lecture's "LayerNorm reduces the covariance between features"): the mean
  |off-diagonal Pearson correlation| between the d_model features (``mean_abs_corr``; tokens of the
  measurement batches are the samples) of the residual stream going into (``corr_in_<site>``) and coming
  out of (``corr_out_<site>``) every norm of the residual stream (hooks on the blocks' norm modules; not
  QK-norm), ``<site>`` = the sublayer site (``attn``, ``ffn``, ``attn+ffn``; ``_in`` / ``_out`` appended for
  sandwich's two norms), and the final norm at layer -1 (site ``final``). Derived per model:
  ``mean_corr_in``, ``mean_corr_out`` over every norm, ``corr_ratio`` = out / in (< 1: the norm
  decorrelates; exactly 1 for ``norm: none``), and ``corr_null`` = E|r| of independent Gaussian features
  at the same number of samples (the noise floor: r² ~ Beta(1/2, (N - 2)/2)).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from scipy.special import beta
from torch import nn

from models import ModelConfig, build, count_params, kv_cache_bytes_per_token
from models.attention import Attention
from models.attention import softcap as cap_fn
from models.checks import ConfigError, check_types, from_mapping
from workflows.data.corpus import DataConfig, prepare, train_batch
# the probes' seeds and their seed_offset shift are the grid's (the Snakefile applies them without torch)
from workflows.grid.config import DEFAULT_PROBE_SEEDS as DEFAULT_SEEDS, offset_probe_seeds  # noqa: F401
from workflows.io import write_parquet
from workflows.train import step as S
from workflows.train.loop import TrainConfig, lr_at, make_optimizer

PROBE_COLUMNS = ("probe", "arm", "seed", "depth", "layer", "metric", "value", "params", "tokens")
SHAPE_FIELDS = ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                "d_ff")
DEFAULT_MODEL = {"d_model": 64, "n_heads": 4, "n_kv_heads": None, "context_length": 64}


@dataclass
class ProbeSettings:
    """Sizes of the probes: the pipeline config's ``claims.probes`` section (defaults: CPU-cheap)."""

    seeds: list = field(default_factory=lambda: list(DEFAULT_SEEDS))
    batch_size: int = 8
    model: dict = field(default_factory=dict)  # shape fields over DEFAULT_MODEL
    grad_depths: list = field(default_factory=lambda: [3, 6, 12])
    grad_batches: int = 16
    resid_depths: list = field(default_factory=lambda: [1, 2, 4, 8, 12, 16, 24])
    resid_batches: int = 2
    kv_depth: int = 4
    softcap_depth: int = 2
    softcap_scale: float = 300.0
    train_steps: int = 200  # AdamW steps of the trained probes (attn_saturation, feature_corr)
    train_lr: float = 3e-3
    measure_batches: int = 2  # batches each measurement of a trained probe pools
    saturation_depth: int = 2
    corr_depth: int = 4

    def __post_init__(self):
        check_types(self, ConfigError)
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"claims.probes.seeds={self.seeds} must be a non-empty list of integers >= 0")
        for name in ("grad_depths", "resid_depths"):
            v = getattr(self, name)
            if not v or any(not isinstance(d, int) or d < 1 for d in v):
                raise ConfigError(f"claims.probes.{name}={v} must be a non-empty list of positive integers")
        for name in ("batch_size", "grad_batches", "resid_batches", "kv_depth", "softcap_depth", "measure_batches",
                     "saturation_depth", "corr_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"claims.probes.{name}={getattr(self, name)} must be a positive integer")
        if self.train_steps < 0:
            raise ConfigError(f"claims.probes.train_steps={self.train_steps} must be >= 0")
        for name in ("softcap_scale", "train_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"claims.probes.{name}={getattr(self, name)} must be > 0")
        allowed = set(SHAPE_FIELDS) - {"n_layers", "vocab_size"}
        bad = sorted(set(self.model) - allowed)
        if bad:
            raise ConfigError(f"claims.probes.model has {bad}; only shape fields are allowed: {sorted(allowed)}")

    @classmethod
    def from_dict(cls, d) -> "ProbeSettings":
        return from_mapping(cls, d, ConfigError, "claims.probes config")


def probe_model_config(grid_model: dict, settings: ProbeSettings, arm: dict, depth: int, vocab_size: int):
    """grid architecture axes ← probe shape ← arm overrides ← depth (see module docstring)."""
    base = {k: v for k, v in (grid_model or {}).items() if k not in SHAPE_FIELDS}
    cfg = {**base, **DEFAULT_MODEL, **settings.model, **(arm or {}), "n_layers": depth, "vocab_size": vocab_size}
    return ModelConfig.from_dict(cfg)


class Probe:
    """What every probe needs: settings, arms, training tokens, and the rows it writes."""

    def __init__(self, name: str, arms: dict, settings: ProbeSettings, grid_model: dict, data: dict | None,
                 work: Path):
        self.name, self.arms, self.settings, self.grid_model = name, arms, settings, grid_model
        self.rows: list[tuple] = []
        self.tokens = None
        self.vocab_size = 256
        if data is not None:
            dc = DataConfig.from_dict(data)
            self.vocab_size = dc.vocab_size
            self._data = (dc, work)

    def train_tokens(self):
        if self.tokens is None:
            self.tokens = np.asarray(prepare(*self._data).train)
        return self.tokens

    def model(self, arm: str, depth: int, seed: int):
        cfg = probe_model_config(self.grid_model, self.settings, self.arms[arm], depth, self.vocab_size)
        torch.manual_seed(seed)
        return cfg, build(cfg)

    def instances(self, depths):
        """(arm, depth, seed, cfg, model, total params) for every arm × depth × seed, models freshly seeded."""
        for arm in self.arms:
            for depth in depths:
                for seed in self.settings.seeds:
                    cfg, model = self.model(arm, depth, seed)
                    yield arm, depth, seed, cfg, model, count_params(model)["total"]

    def batch(self, cfg, seed: int, i: int):
        # batches a pure function of (probe seed, index), distinct from the training runs' streams
        return train_batch(self.train_tokens(), self.settings.batch_size, cfg.context_length, 7919 + seed, i)

    def phases(self, cfg, model, seed):
        """The trained probes' measurement phases: yields ("init", measured tokens), then trains the model
        (``train``) and yields ("trained", training tokens); the model is in eval mode while it is measured."""
        tokens = self.settings.measure_batches * self.settings.batch_size * cfg.context_length
        for phase in PHASES:
            if phase == "trained":
                tokens = self.train(cfg, model, seed)
            model.eval()
            yield phase, tokens

    def train(self, cfg, model, seed: int) -> int:
        """``train_steps`` AdamW steps on training batches (indices after the measurement batches), each the
        training loop's step (``workflows.train.step.train_step``: fp32, eager, no z-loss, clipping at 1, the
        warmup-cosine LR); returns the training tokens seen."""

        s = self.settings
        tc = TrainConfig(steps=max(s.train_steps, 1), lr=s.train_lr, warmup_steps=s.train_steps // 10,
                         batch_size=s.batch_size)
        opt = make_optimizer(model, tc)
        model.train()
        for step in range(s.train_steps):
            x, y = self.batch(cfg, seed, s.measure_batches + step)
            S.train_step(model, opt, x, y, tc, lr=lr_at(step, tc))
        model.eval()
        return s.train_steps * s.batch_size * cfg.context_length

    def add(self, arm, seed, depth, layer, metric, value, params, tokens):
        self.rows.append((self.name, arm, int(seed), int(depth), int(layer), metric, float(value), int(params),
                          int(tokens)))

    def frame(self):
        return pd.DataFrame(self.rows, columns=list(PROBE_COLUMNS))


# ------------------------------------------------------------------------------------------------
def _ffn_down(name: str) -> bool:
    return name.endswith(".down.weight")


def _layer_norms(named, depth: int, pick, tensor_of) -> np.ndarray:
    """Per-layer L2 norm over the block parameters selected by ``pick`` of ``tensor_of(name, param)``."""
    sq = np.zeros(depth)
    for n, q, layer in named:
        t = tensor_of(n, q) if layer is not None and pick(n) else None
        if t is not None:
            sq[layer] += t.double().pow(2).sum().item()
    return np.sqrt(sq)


def grad_init(p: Probe) -> None:
    s = p.settings
    groups = {"ffn_down": _ffn_down, "block": lambda n: True}
    for arm, depth, seed, cfg, model, params in p.instances(s.grad_depths):
        model.train()
        named = [(n, q, model.layer_of(n)) for n, q in model.named_parameters()]
        per_batch = {g: np.zeros((s.grad_batches, depth)) for g in groups}
        total = {n: torch.zeros_like(q) for n, q, layer in named if layer is not None}
        for b in range(s.grad_batches):
            x, y = p.batch(cfg, seed, b)
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            for g, pick in groups.items():
                per_batch[g][b] = _layer_norms(named, depth, pick, lambda n, q: q.grad)
            for n, q, layer in named:
                if layer is not None and q.grad is not None:
                    total[n] += q.grad / s.grad_batches
        tokens = s.grad_batches * s.batch_size * cfg.context_length
        for g, pick in groups.items():
            mean = per_batch[g].mean(axis=0)
            of_mean = _layer_norms(named, depth, pick, lambda n, q: total[n])
            for layer in range(depth):
                p.add(arm, seed, depth, layer, f"grad_{g}", mean[layer], params, tokens)
                p.add(arm, seed, depth, layer, f"grad_{g}_of_mean", of_mean[layer], params, tokens)
            with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 when gradients underflow
                ratio = np.float64(mean[-1]) / np.float64(mean[0])
            p.add(arm, seed, depth, -1, f"ratio_{g}", ratio, params, tokens)
            p.add(arm, seed, depth, -1, f"last_{g}", mean[-1], params, tokens)


def resid_init(p: Probe) -> None:
    s = p.settings
    for arm, depth, seed, cfg, model, params in p.instances(s.resid_depths):
        model.eval()
        rms = np.zeros(depth + 1)  # index 0: embedding, i + 1: after block i (its last sublayer)
        with torch.no_grad():
            for b in range(s.resid_batches):
                x, _ = p.batch(cfg, seed, b)
                _, st = model(x, stats=True)
                last = {}
                for r in st["residual"]:
                    last[r["layer"]] = r["rms"]  # rows are in order: the last site of a layer wins
                rms += np.array([last[i] for i in range(-1, depth)]) / s.resid_batches
        tokens = s.resid_batches * s.batch_size * cfg.context_length
        p.add(arm, seed, depth, -1, "resid_rms_embed", rms[0], params, tokens)
        for layer in range(depth):
            p.add(arm, seed, depth, layer, "resid_rms", rms[layer + 1], params, tokens)
        p.add(arm, seed, depth, -1, "last_embed_ratio", rms[-1] / rms[0], params, tokens)


def kv_cache(p: Probe) -> None:
    s = p.settings
    depth = s.kv_depth
    measured, cfgs = {}, {}
    for arm in p.arms:
        for seed in s.seeds:
            cfg, model = p.model(arm, depth, seed)
            cfgs[arm] = cfg
            seen = []

            def hook(mod, inp, out, attn):
                _, k, v = out.split(attn.split_sizes, dim=-1)
                seen.append((k.shape[-1] + v.shape[-1]) * 2)  # elements per token per layer, bf16 bytes

            hooks = [m.qkv.register_forward_hook(lambda mod, i, o, a=m: hook(mod, i, o, a))
                     for m in model.modules() if isinstance(m, Attention) and hasattr(m, "qkv")]
            with torch.no_grad():
                x, _ = p.batch(cfg, seed, 0)
                model(x)
            for h in hooks:
                h.remove()
            if len(seen) != cfg.n_layers:
                raise RuntimeError(f"kv_cache probe: arm {arm!r} has {len(seen)} hooked attention layers of "
                                   f"{cfg.n_layers} (a parallel block fuses K/V into another projection)")
            measured[(arm, seed)] = (sum(seen), count_params(model)["total"],
                                     s.batch_size * cfg.context_length)
    ref = [a for a, c in cfgs.items() if c.kv_heads == c.n_heads]
    for (arm, seed), (nbytes, params, tokens) in measured.items():
        cfg = cfgs[arm]
        p.add(arm, seed, depth, -1, "bytes_measured", nbytes, params, tokens)
        p.add(arm, seed, depth, -1, "bytes_formula", kv_cache_bytes_per_token(cfg), params, tokens)
        p.add(arm, seed, depth, -1, "n_heads", cfg.n_heads, params, tokens)
        p.add(arm, seed, depth, -1, "n_kv_heads", cfg.kv_heads, params, tokens)
        if ref and cfgs[ref[0]].n_heads == cfg.n_heads:
            mha_bytes = measured[(ref[0], seed)][0]
            ratio = mha_bytes / nbytes
            p.add(arm, seed, depth, -1, "mha_ratio", ratio, params, tokens)
            p.add(arm, seed, depth, -1, "ratio_vs_expected", ratio / (cfg.n_heads / cfg.kv_heads), params, tokens)


def softcap(p: Probe) -> None:
    s = p.settings
    depth = s.softcap_depth
    for arm in p.arms:
        for seed in s.seeds:
            cfg, model = p.model(arm, depth, seed)
            if cfg.attn_softcap is None or cfg.final_softcap is None:
                raise ConfigError(f"softcap probe: arm {arm!r} must set attn_softcap and final_softcap")
            model.eval()
            params = count_params(model)["total"]
            with torch.no_grad():
                for name, q in model.named_parameters():
                    if name.endswith(("qkv.weight", "proj.weight")) or name in ("head.weight", "tok_emb.weight"):
                        q.mul_(s.softcap_scale)
            capped_attn = []

            def wrap(attn):
                orig = attn.explicit

                def explicit(q, k, v, drop):
                    sc = cap_fn((q @ attn._repeat_kv(k).transpose(-2, -1)) * attn.scale, attn.cap)
                    T = q.shape[-2]
                    mask = torch.ones(T, T, dtype=torch.bool).tril()
                    capped_attn.append(sc.masked_fill(~mask, 0.0).abs().amax().item())
                    return orig(q, k, v, drop)

                attn.explicit = explicit

            for m in model.modules():
                if isinstance(m, Attention):
                    wrap(m)
            raw_final = []
            h = model.head.register_forward_hook(lambda mod, i, o: raw_final.append(o.abs().amax().item()))
            with torch.no_grad():
                x, _ = p.batch(cfg, seed, 0)
                logits, st = model(x, stats=True)
            h.remove()
            tokens = s.batch_size * cfg.context_length
            raw_attn = max(abs(v) for v in st["attn_logit_max"])
            cap_a, cap_f = cfg.attn_softcap, cfg.final_softcap
            p.add(arm, seed, depth, -1, "attn_raw_over_cap", raw_attn / cap_a, params, tokens)
            p.add(arm, seed, depth, -1, "final_raw_over_cap", raw_final[0] / cap_f, params, tokens)
            p.add(arm, seed, depth, -1, "attn_capped_over_cap",
                  max(capped_attn) / cap_a if raw_attn > cap_a else math.nan, params, tokens)
            p.add(arm, seed, depth, -1, "final_capped_over_cap",
                  logits.abs().amax().item() / cap_f if raw_final[0] > cap_f else math.nan, params, tokens)
            xs = torch.cat([torch.logspace(-3, 30, 400), -torch.logspace(-3, 30, 400),
                            torch.tensor([0.0, float("inf"), -float("inf")])])
            worst = max(cap_fn(xs.to(dt), c).abs().float().max().item() / c
                        for dt in (torch.float32, torch.bfloat16) for c in (cap_a, cap_f))
            p.add(arm, seed, depth, -1, "fn_max_over_cap", worst, params, 0)


# ------------------------------------------------------------------------------------------------
# trained probes: attention saturation and feature correlation, at init and after training
SATURATED = 0.99  # a row is saturated when its top attention probability exceeds this
PHASES = ("init", "trained")


def attention_heads(attn, qkv):
    """q, k (RoPE'd) and v of shape (B, heads, T, head_dim) from the output of ``attn``'s q/k/v projection,
    prepared as ``models.attention.Attention.attend`` prepares them (split, heads, QK-norm, RoPE)."""
    return attn.heads(qkv)


def attention_probs(attn, q, k):
    """(probabilities, logits, causal mask) of ``attn``: softmax(cap(q·kᵀ·scale) + mask), float32;
    logits (B, heads, T, T) are the softmax's inputs before the mask."""

    T = q.shape[-2]
    logits = cap_fn((q.float() @ attn._repeat_kv(k.float()).transpose(-2, -1)) * attn.scale, attn.cap)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1), logits, mask


def saturation_stats(probs, logits, mask) -> dict:
    """Row statistics of causal attention (rows that see more than one key): mean entropy (nats), mean
    entropy / ln(keys seen), share of rows with top probability > ``SATURATED``, the mean ln(keys seen)
    (uniform attention's entropy), and the std and largest |value| of the logits over the causal entries."""
    T = probs.shape[-1]
    rows = probs[..., 1:, :].double()  # row t sees t + 1 keys; row 0 is one-hot by construction
    seen = torch.arange(2, T + 1, dtype=torch.float64, device=probs.device)
    entropy = torch.special.entr(rows).sum(-1)
    causal = logits[..., mask].double()
    return {"attn_entropy": entropy.mean().item(),
            "attn_entropy_ratio": (entropy / seen.log()).mean().item(),
            "attn_saturated": (rows.amax(-1) > SATURATED).double().mean().item(),
            "attn_entropy_uniform": seen.log().mean().item(),
            "attn_logit_std": causal.std().item(),
            "attn_logit_absmax": causal.abs().max().item()}


def _qkv_projections(model):
    """(layer, attention module, projection whose output holds q|k|v first) per block."""
    out = []
    for i, block in enumerate(model.blocks):
        for sub in block.sublayers:
            f = sub.f
            if hasattr(f, "qkv"):
                out.append((i, f, f.qkv))
            elif hasattr(f, "attn") and hasattr(f, "proj"):  # a parallel block's fused input projection
                out.append((i, f.attn, f.proj))
    return out


def attn_saturation(p: Probe) -> None:
    s = p.settings
    depth = s.saturation_depth
    for arm, _, seed, cfg, model, params in p.instances([depth]):
        projs = _qkv_projections(model)
        if len(projs) != depth:
            raise RuntimeError(f"attn_saturation probe: arm {arm!r} has {len(projs)} attention layers of {depth}")
        seen = {}
        hooks = [proj.register_forward_hook(lambda mod, i, o, layer=layer: seen.__setitem__(layer, o.detach()))
                 for layer, _, proj in projs]
        for phase, tokens in p.phases(cfg, model, seed):
            acc = {layer: {} for layer in range(depth)}
            loss_sum = 0.0
            for b in range(s.measure_batches):
                x, y = p.batch(cfg, seed, b)
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
                loss.backward()
                loss_sum += loss.item() / s.measure_batches
                with torch.no_grad():
                    for layer, attn, proj in projs:
                        q, k, _ = attention_heads(attn, seen[layer][..., :sum(attn.split_sizes)])
                        st = saturation_stats(*attention_probs(attn, q, k))
                        g = proj.weight.grad[:sum(attn.split_sizes)]
                        st["qkv_grad_norm"] = torch.linalg.norm(g).item()
                        for m, v in st.items():
                            acc[layer][m] = acc[layer].get(m, 0.0) + v / s.measure_batches
            model.zero_grad(set_to_none=True)
            for layer in range(depth):
                for m, v in acc[layer].items():
                    if m != "attn_entropy_uniform":
                        p.add(arm, seed, depth, layer, f"{m}_{phase}", v, params, tokens)
            for m in acc[0]:
                if m != "attn_entropy_uniform":
                    p.add(arm, seed, depth, -1, f"mean_{m}_{phase}", np.mean([acc[i][m] for i in range(depth)]),
                          params, tokens)
            p.add(arm, seed, depth, -1, f"loss_{phase}", loss_sum, params, tokens)
        p.add(arm, seed, depth, -1, "attn_entropy_uniform", acc[0]["attn_entropy_uniform"], params, 0)
        p.add(arm, seed, depth, -1, "train_steps", s.train_steps, params, 0)
        for h in hooks:
            h.remove()


def mean_abs_corr(x) -> float:
    """Mean |off-diagonal Pearson correlation| between the features (last axis) of ``x``, every other axis
    a sample (float64 ``torch.corrcoef``); features of zero variance are left out."""
    z = x.detach().reshape(-1, x.shape[-1]).double()
    keep = z.std(dim=0) > 0
    z = z[:, keep]
    d = z.shape[1]
    if d < 2:
        return math.nan
    r = torch.corrcoef(z.T)
    off = ~torch.eye(d, dtype=torch.bool, device=r.device)
    return r[off].abs().mean().item()


def null_abs_corr(n: int) -> float:
    """E|r| of two independent Gaussian samples of size ``n``: r² ~ Beta(1/2, (n - 2)/2), so
    E|r| = B(1, (n - 2)/2) / B(1/2, (n - 2)/2)."""
    return float(beta(1.0, (n - 2) / 2) / beta(0.5, (n - 2) / 2))


def _residual_norms(model):
    """(layer, site, norm module) of every norm on the residual stream: the blocks' sublayer norms (not
    QK-norm) and the final norm (layer -1, site "final") where there is one."""
    out = []
    for i, block in enumerate(model.blocks):
        for site, sub in zip(block.sites, block.sublayers):
            names = [n for n in ("norm", "norm_in", "norm_out") if isinstance(getattr(sub, n, None), nn.Module)]
            for n in names:
                out.append((i, site if n == "norm" else f"{site}_{n.removeprefix('norm_')}", getattr(sub, n)))
    if not isinstance(model.final_norm, nn.Identity):
        out.append((-1, "final", model.final_norm))
    return out


def feature_corr(p: Probe) -> None:
    s = p.settings
    depth = s.corr_depth
    for arm, _, seed, cfg, model, params in p.instances([depth]):
        norms = _residual_norms(model)
        seen = {}

        def hook(mod, inp, out, key):
            seen.setdefault(key, []).append((inp[0].detach(), out.detach()))

        hooks = [m.register_forward_hook(lambda mod, i, o, key=(layer, site): hook(mod, i, o, key))
                 for layer, site, m in norms]
        for phase, tokens in p.phases(cfg, model, seed):
            seen.clear()
            with torch.no_grad():
                for b in range(s.measure_batches):
                    model(p.batch(cfg, seed, b)[0])
            ins, outs = [], []
            for (layer, site), pairs in seen.items():
                c_in = mean_abs_corr(torch.cat([a for a, _ in pairs]))
                c_out = mean_abs_corr(torch.cat([b for _, b in pairs]))
                ins.append(c_in)
                outs.append(c_out)
                p.add(arm, seed, depth, layer, f"corr_in_{site}_{phase}", c_in, params, tokens)
                p.add(arm, seed, depth, layer, f"corr_out_{site}_{phase}", c_out, params, tokens)
            m_in, m_out = np.nanmean(ins), np.nanmean(outs)
            p.add(arm, seed, depth, -1, f"mean_corr_in_{phase}", m_in, params, tokens)
            p.add(arm, seed, depth, -1, f"mean_corr_out_{phase}", m_out, params, tokens)
            p.add(arm, seed, depth, -1, f"corr_ratio_{phase}", m_out / m_in, params, tokens)
        n = s.measure_batches * s.batch_size * cfg.context_length
        p.add(arm, seed, depth, -1, "corr_null", null_abs_corr(n), params, 0)
        p.add(arm, seed, depth, -1, "train_steps", s.train_steps, params, 0)
        for h in hooks:
            h.remove()


PROBES = {"grad_init": grad_init, "resid_init": resid_init, "kv_cache": kv_cache, "softcap": softcap,
          "attn_saturation": attn_saturation, "feature_corr": feature_corr}


def run_probe(name: str, arms: dict, settings: ProbeSettings | dict, grid_model: dict, data: dict | None,
              work: str | Path = "work"):
    """Run probe ``name`` over ``arms`` ({arm: ModelConfig overrides}); returns its long table."""
    if name not in PROBES:
        raise ConfigError(f"unknown probe {name!r}; known probes: {sorted(PROBES)}")
    if not arms:
        raise ConfigError(f"probe {name!r} has no arms")
    if isinstance(settings, dict):
        settings = ProbeSettings.from_dict(settings)
    p = Probe(name, arms, settings, grid_model, data, Path(work))
    PROBES[name](p)
    return p.frame()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", required=True, choices=sorted(PROBES))
    ap.add_argument("--config-json", required=True,
                    help='JSON {"model": grid model, "data": data config, "probes": claims.probes settings}')
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--registry", help="claims registry (its probes: section holds the arms)")
    src.add_argument("--arms-json", help="the probe's arms as JSON {arm: ModelConfig overrides}")
    ap.add_argument("--out", required=True, help="output .parquet")
    ap.add_argument("--work", default="work")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = json.loads(args.config_json)
    if args.arms_json:
        spec = {"arms": json.loads(args.arms_json)}
    else:
        with open(args.registry) as f:
            spec = ((yaml.safe_load(f) or {}).get("probes") or {}).get(args.probe)
        if not spec:
            print(f"error: {args.registry} defines no probe {args.probe!r}", file=sys.stderr)
            return 2
    t0 = time.time()
    try:
        df = run_probe(args.probe, spec.get("arms") or {}, cfg.get("probes") or {}, cfg.get("model") or {},
                       cfg.get("data") or {}, args.work)
    except ConfigError as e:
        print(f"error: probe {args.probe}: {e}", file=sys.stderr)
        return 2
    write_parquet(args.out, df)
    print(f"probe {args.probe}: {len(df)} rows, {df.arm.nunique()} arms, {time.time() - t0:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
