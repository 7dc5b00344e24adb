"""Smoothed n-gram reference models scored on exactly the evaluation targets the Transformers are scored on.

    python -m workflows.data.ngram --data-json '{"source": "shakespeare", "tokenizer": "bytes"}' --work work \\
        --context 64 --out results/ngram.json [--orders 1 2 3 5]

The model is interpolated absolute discounting (Ney, Essen & Kneser 1994; the interpolated form of Chen &
Goodman 1999, §2.6 and §3) with one fixed discount D (0.75) at every order. With V the vocabulary size, N the
number of training tokens, c(·) training counts, and N1+(h•) the number of distinct tokens that follow the
history h in training:

    p_0(w)    = 1 / V                                                       (uniform)
    p_1(w)    = max(c(w) − D, 0) / N  +  D · N1+(•) / N · p_0(w)            (unigram, never 0)
    p_n(w|h)  = max(c(h,w) − D, 0) / c(h)  +  D · N1+(h•) / c(h) · p_{n−1}(w|h')    if c(h) > 0
              = p_{n−1}(w|h')                                                if c(h) = 0

where h holds the n−1 tokens before w, h' drops its oldest token, and c(h) = Σ_w c(h,w) counts h as a
history (i.e. followed by a token) in the training stream. Every p_n sums to 1 over the vocabulary for
0 < D ≤ 1. Counts come from the whole training stream, n-grams crossing document separators included
(the Transformers train on that same stream).

Scoring (``workflows.data.corpus.eval_starts(len(val), T, W)``, the windows of the runs' final score: W = None,
every non-overlapping window, or ``--windows`` = ``train.final_eval_windows`` evenly spaced ones): window i starting at s has inputs val[s:s+T] and
targets val[s+1:s+T+1]; the target at position j sees only the j+1 tokens val[s..s+j] of its window, as the
Transformer does, so the order-n model conditions on min(n−1, j+1) of them (the lower-order model at a
window's first positions). Losses are mean −ln p over every target, in nats/token, and bits/byte
(nats / ln 2 / bytes per token).

Histories of k tokens are int64 keys (Σ token·V^i, so V^k must stay below 2^62); counts come from np.unique
and look-ups from np.searchsorted, so the Shakespeare bytes (4.4M training tokens) take a few seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from workflows.data.corpus import DataConfig, DataError, eval_starts, eval_window_count, prepare
from workflows.io import write_json

DISCOUNT = 0.75
ORDERS = (1, 2, 3, 5)
KEY_BITS = 62
NAMES = {1: "unigram", 2: "bigram", 3: "trigram"}
METHOD = ("interpolated absolute discounting (D = {d}, unigram interpolated with the uniform distribution), "
          "fitted on the training split, scored on every target of {w} {t}-token windows "
          "of the validation split with each target's history truncated to its window")


def windows_phrase(n_windows: int | None) -> str:
    """How METHOD names the scored windows: every non-overlapping one, or the runs' fixed evenly spaced set."""
    return "every non-overlapping" if n_windows is None else f"the {n_windows:,} evenly spaced"


def order_name(n: int) -> str:
    return NAMES.get(n, f"{n}-gram")


def check_orders(orders, vocab_size: int, discount: float = DISCOUNT) -> tuple[int, ...]:
    """The orders sorted and deduplicated; ValueError if one is not a positive integer, if the longest
    history's key (vocab_size^(max order − 1)) does not fit in 62 bits, or if the discount is not in (0, 1]."""
    given = list(orders)
    if not given or any(isinstance(n, bool) or int(n) != n or n < 1 for n in given):
        raise ValueError(f"orders={given} must be positive integers (1 = unigram, 2 = bigram, ...)")
    orders = tuple(sorted({int(n) for n in given}))
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} must be positive")
    k = orders[-1] - 1
    if vocab_size ** k > 2 ** KEY_BITS:
        raise ValueError(
            f"orders={orders} with vocab_size={vocab_size}: a history of {k} tokens needs "
            f"{k * math.log2(vocab_size):.1f} bits, more than the {KEY_BITS} an int64 key holds; "
            f"use a maximum order of at most {1 + int(KEY_BITS // math.log2(vocab_size))} for this vocabulary")
    if not 0 < discount <= 1:
        raise ValueError(f"discount={discount} must be in (0, 1] (the distributions would not sum to 1)")
    return orders


@dataclass
class _Level:
    """Counts for histories of one length k ≥ 1: sorted unique history keys, c(h), N1+(h•), and the
    sorted joint keys index(h)·V + w with their counts c(h,w)."""
    hist: np.ndarray
    count: np.ndarray
    follow: np.ndarray
    joint: np.ndarray
    joint_count: np.ndarray


def _fits(vocab_size: int, n: int) -> bool:
    """Whether the keys of n tokens fit in 62 bits (then an n-gram is one key and one sort counts a level)."""
    return vocab_size ** n <= 2 ** KEY_BITS


def _starts(sorted_keys: np.ndarray) -> np.ndarray:
    new = np.ones(len(sorted_keys), dtype=bool)
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    return np.flatnonzero(new)


def _count(hkey: np.ndarray, w: np.ndarray, V: int, one_key: bool) -> _Level:
    """The _Level of the histories ``hkey`` followed by the tokens ``w`` (both over training positions)."""
    if one_key:  # one sort of the n-gram keys hkey·V + w: the histories come out grouped and sorted
        s = np.sort(hkey * V + w)
        js = _starts(s)
        gram, joint_count = s[js], np.diff(np.append(js, len(s)))
        hk = gram // V
        hs = _starts(hk)
        hist, count, follow = hk[hs], np.add.reduceat(joint_count, hs), np.diff(np.append(hs, len(hk)))
        rank = np.repeat(np.arange(len(hs), dtype=np.int64), follow)
        joint = rank * V + gram % V
    else:  # hkey·V + w would overflow: rank the histories first (np.unique's inverse is slower)
        hist, idx, count = np.unique(hkey, return_inverse=True, return_counts=True)
        joint, joint_count = np.unique(idx.astype(np.int64) * V + w, return_counts=True)
        follow = np.bincount(joint // V, minlength=len(hist))
    f = np.float64
    return _Level(hist, count.astype(f), follow.astype(f), joint, joint_count.astype(f))


class NGramModel:
    """Interpolated absolute discounting up to ``max_order`` (module docstring), fitted on ``train``."""

    def __init__(self, train, vocab_size: int, max_order: int, discount: float = DISCOUNT):
        check_orders((max_order,), vocab_size, discount)
        x = _tokens(train, vocab_size, "train")
        if len(x) == 0:
            raise ValueError("train is empty")
        self.V, self.D, self.max_history = int(vocab_size), float(discount), int(max_order) - 1
        unigram = np.bincount(x, minlength=self.V).astype(np.float64)
        n, types = unigram.sum(), np.count_nonzero(unigram)
        self.p1 = (np.maximum(unigram - self.D, 0) + self.D * types / self.V) / n  # p_1 over the vocabulary
        self.levels: list[_Level] = []
        key = np.zeros(len(x), dtype=np.int64)  # key[t]: the k tokens before t, valid for t >= k
        for k in range(1, self.max_history + 1):
            if len(x) <= k:
                break  # no history of this length in training: every look-up backs off
            key[k:] += x[:-k] * self.V ** (k - 1)
            self.levels.append(_count(key[k:], x[k:], self.V, _fits(self.V, k + 1)))

    def history_key(self, history: np.ndarray, k: int) -> np.ndarray:
        """int64 keys of the last k columns of ``history`` (rows of tokens, newest last)."""
        key = np.zeros(len(history), dtype=np.int64)
        for i in range(1, k + 1):
            key += history[:, -i].astype(np.int64) * self.V ** (i - 1)
        return key

    def _interpolate(self, k: int, key: np.ndarray, w: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """p_{k+1}(w|h) from p_k(w|h') = ``lower``, for histories of k tokens with keys ``key``."""
        if k > len(self.levels):
            return lower  # no training history this long: c(h) = 0 everywhere
        lv = self.levels[k - 1]
        i = np.minimum(np.searchsorted(lv.hist, key), len(lv.hist) - 1)
        seen = lv.hist[i] == key
        jk = i.astype(np.int64) * self.V + w
        j = np.minimum(np.searchsorted(lv.joint, jk), len(lv.joint) - 1)
        c_hw = np.where(seen & (lv.joint[j] == jk), lv.joint_count[j], 0.0)
        c_h = np.where(seen, lv.count[i], 1.0)
        p = (np.maximum(c_hw - self.D, 0) + self.D * lv.follow[i] * lower) / c_h
        return np.where(seen, p, lower)

    def level_probs(self, history: np.ndarray, w: np.ndarray, avail=None) -> list[np.ndarray]:
        """[p_1, p_2, ..., p_{K+1}] of the tokens ``w`` after the rows of ``history`` (shape (n, K), newest
        token last; K ≤ max order − 1), where row i of p_{k+1} uses only its last min(k, avail[i]) tokens
        (``avail``: an int or an array; default K, the whole row)."""
        w = np.asarray(w, dtype=np.int64)
        history = np.asarray(history, dtype=np.int64)
        if history.ndim != 2 or len(history) != len(w):
            raise ValueError(f"history has shape {history.shape}; expected ({len(w)}, K)")
        K = history.shape[1]
        if K > self.max_history:
            raise ValueError(f"a history of {K} tokens is longer than this model's {self.max_history}")
        avail = np.broadcast_to(np.asarray(K if avail is None else avail, dtype=np.int64), w.shape)
        p = self.p1[w]
        out = [p]
        for k in range(1, K + 1):
            sel = np.flatnonzero(avail >= k)
            if len(sel):
                p = p.copy()
                p[sel] = self._interpolate(k, self.history_key(history[sel], k), w[sel], p[sel])
            out.append(p)
        return out

    def prob_table(self, history) -> np.ndarray:
        """p_{k+1}(·|history) over the whole vocabulary for one history of k tokens (oldest first)."""
        h = np.asarray(history, dtype=np.int64).reshape(1, -1)
        return self.level_probs(np.repeat(h, self.V, axis=0), np.arange(self.V))[-1]


def _tokens(a, vocab_size: int, name: str) -> np.ndarray:
    x = np.asarray(a).astype(np.int64, copy=True).ravel()
    if len(x) and (x.min() < 0 or x.max() >= vocab_size):
        raise ValueError(f"{name} has token ids in [{x.min()}, {x.max()}], outside [0, vocab_size={vocab_size})")
    return x


def eval_targets(val, context: int, n_windows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions in ``val``, token ids, available history lengths) of every target of the validation windows
    the runs' final score uses (``workflows.data.corpus.eval_starts(len(val), context, n_windows)``: with None
    every non-overlapping window, else ``train.final_eval_windows`` evenly spaced ones), in window order: the
    target at window position j sits at s+j+1 and has avail = j+1 tokens of its window before it."""
    val = np.asarray(val)
    if context < 1 or len(val) < context + 1:
        raise ValueError(f"the validation split ({len(val)} tokens) holds no window of context={context} (+1) tokens")
    starts = eval_starts(len(val), context, n_windows)
    t = (starts[:, None] + 1 + np.arange(context)[None, :]).ravel()  # target positions
    avail = np.tile(np.arange(1, context + 1), len(starts))
    return t, val[t].astype(np.int64), avail


def ngram_losses(train: np.ndarray, val: np.ndarray, vocab_size: int, context: int, orders=ORDERS,
                 discount: float = DISCOUNT, n_windows: int | None = None) -> dict[int, float]:
    """{order: mean loss in nats/token} of the interpolated absolute-discounting model of each order (module
    docstring: p_1(w) = (max(c(w) − D, 0) + D · N1+(•) / vocab_size) / N, the training unigram interpolated
    with the uniform distribution, never 0; p_n(w|h) = (max(c(h,w) − D, 0) + D · N1+(h•) · p_{n−1}(w|h')) / c(h),
    and an unseen history (c(h) = 0) backs off wholly to p_{n−1}(w|h')), fitted on
    ``train`` and scored on every target of the ``context``-token windows of ``val`` the runs' final score uses
    (``eval_targets``: every non-overlapping one, or ``n_windows`` evenly spaced ones); the target at window position j conditions
    on min(n−1, j+1) tokens, those of its own window."""
    orders = check_orders(orders, vocab_size, discount)
    model = NGramModel(train, vocab_size, orders[-1], discount)
    v = _tokens(val, vocab_size, "val")
    t, w, avail = eval_targets(v, context, n_windows)
    K = min(orders[-1] - 1, context)  # no target has more history than its window
    hist = np.stack([v[np.maximum(t - K + c, 0)] for c in range(K)], axis=1) if K else np.zeros((len(t), 0), np.int64)
    probs = model.level_probs(hist, w, avail)
    return {n: float(-np.log(probs[min(n - 1, K)]).mean()) for n in orders}


def references(data, context: int, orders=ORDERS, discount: float = DISCOUNT, n_windows: int | None = None) -> dict:
    """The n-gram references of a ``workflows.data.corpus.TokenData`` (JSON-able): per order its name, nats/token
    and bits/byte, the number of targets scored and the windows (``n_windows``: the runs' ``final_eval_windows``;
    None: the whole split), the context, the discount and the method in a sentence."""
    vocab = int(data.meta.get("vocab_size") or data.meta.get("config", {}).get("bpe_vocab_size", 256))
    vocab = max(vocab, int(np.max(data.train)) + 1, int(np.max(data.val)) + 1)
    losses = ngram_losses(data.train, data.val, vocab, context, orders, discount, n_windows)
    windows = eval_window_count(len(data.val), context, n_windows)  # the windows scored, as eval_starts counts them
    bpt = data.bytes_per_token
    return {
        "orders": {str(n): {"name": order_name(n), "nats": nats, "bpb": nats / math.log(2) / bpt}
                   for n, nats in losses.items()},
        "eval_tokens": int(windows * context),
        "eval_windows": "all" if n_windows is None else int(windows),
        "context": int(context),
        "discount": float(discount),
        "vocab_size": vocab,
        "bytes_per_token": float(bpt),
        "method": METHOD.format(d=discount, t=context, w=windows_phrase(n_windows)),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-json", required=True, help="the data mapping as JSON (a workflows.grid.config.DataConfig)")
    p.add_argument("--work", default="work", help="work folder (token files, downloads, HF cache)")
    p.add_argument("--context", type=int, required=True, help="T, the models' context length (window size)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--orders", type=int, nargs="+", default=list(ORDERS))
    p.add_argument("--discount", type=float, default=DISCOUNT)
    p.add_argument("--windows", type=int, default=None,
                   help="score the runs' train.final_eval_windows evenly spaced windows (default: the whole split)")
    args = p.parse_args(argv)
    if args.windows is not None and args.windows < 1:
        p.error(f"--windows={args.windows} must be a positive integer (train.final_eval_windows), or left out")
    d = json.loads(args.data_json)
    d = d.get("data", d) if isinstance(d, dict) else d
    try:
        data = prepare(DataConfig.from_dict(d), args.work)
        t0 = time.perf_counter()
        ref = references(data, args.context, args.orders, args.discount, args.windows)
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    write_json(args.out, ref)
    rows = ", ".join(f"{o['name']} {o['nats']:.4f} nats ({o['bpb']:.4f} bpb)" for o in ref["orders"].values())
    print(f"{args.out}: {ref['eval_tokens']:,} targets, T={args.context}: {rows} "
          f"[{time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
