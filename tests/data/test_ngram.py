"""N-gram references (workflows.data.ngram): the vectorised interpolated absolute discounting against a naive
dict-and-loops implementation, normalisation, a known Markov chain, the window truncation of histories,
the int64 key limit, and references()/the CLI on a tiny token folder."""
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from workflows.data import ngram as NG


def naive_losses(train, val, V, T, orders, D=0.75):
    """Obviously-correct reference: counts in dicts, one recursive probability per target, loops over windows."""
    train, val = [int(t) for t in train], [int(t) for t in val]
    K = max(orders) - 1
    counts = defaultdict(Counter)  # history tuple -> Counter of next tokens
    for t in range(len(train)):
        for k in range(0, K + 1):
            if t - k >= 0:
                counts[tuple(train[t - k:t])][train[t]] += 1

    def p(w, h):
        if not h:
            c = counts[()]
            n = sum(c.values())
            return max(c[w] - D, 0) / n + D * len(c) / n / V
        lower = p(w, h[1:])
        c = counts.get(h)
        if not c:
            return lower
        n = sum(c.values())
        return max(c[w] - D, 0) / n + D * len(c) / n * lower

    total = {n: 0.0 for n in orders}
    targets = 0
    for s in range(0, ((len(val) - 1) // T) * T, T):
        for j in range(T):
            seen = val[s:s + j + 1]  # the window's tokens up to the target
            w = val[s + j + 1]
            targets += 1
            for n in orders:
                h = tuple(seen[len(seen) - min(n - 1, len(seen)):])
                total[n] -= math.log(p(w, h))
    return {n: total[n] / targets for n in orders}, p


def small_corpus(seed=0, V=6):
    rng = np.random.default_rng(seed)
    # some structure (a sticky chain) so that higher orders see repeated histories; token V-1 never in train
    train = [0]
    for _ in range(400):
        train.append(train[-1] if rng.random() < 0.4 else int(rng.integers(0, V - 1)))
    val = rng.integers(0, V, size=53)  # includes the unseen token and unseen histories; a ragged tail
    return np.array(train, dtype=np.uint16), val.astype(np.uint16)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("T", [5, 1, 7])
def test_matches_naive_implementation(seed, T):
    train, val = small_corpus(seed)
    orders = (1, 2, 3, 4, 5)
    fast = NG.ngram_losses(train, val, 6, T, orders)
    slow, _ = naive_losses(train, val, 6, T, orders)
    assert set(fast) == set(orders)
    for n in orders:
        assert fast[n] == pytest.approx(slow[n], abs=1e-9, rel=0), n
    assert len({round(v, 6) for v in fast.values()}) > 1  # the orders do differ here


def test_matches_naive_on_the_two_counting_paths(monkeypatch):
    """The one-sort n-gram keys and the rank-the-histories-first fallback (for keys too wide) agree."""
    train, val = small_corpus(3)
    slow, _ = naive_losses(train, val, 6, 5, (1, 2, 3))
    monkeypatch.setattr(NG, "_fits", lambda V, n: False)
    fast = NG.ngram_losses(train, val, 6, 5, (1, 2, 3))
    for n in slow:
        assert fast[n] == pytest.approx(slow[n], abs=1e-9, rel=0)


def test_probabilities_match_naive_and_sum_to_one():
    train, val = small_corpus(2)
    V = 6
    _, p = naive_losses(train, val, V, 5, (4,))
    model = NG.NGramModel(train, V, 4)
    t = train.tolist()
    as_history = {tuple(t[i - k:i]) for k in (1, 2, 3) for i in range(k, len(t))}  # followed by a token
    histories = [(), (0,), (5,), (1, 1), (5, 5), (2, 2, 2), (0, 1, 2), (5, 0, 1), (3, 5, 3)]
    histories += sorted(h for h in as_history if len(h) == 3)[:5]
    for h in histories:
        table = model.prob_table(h)
        assert table.shape == (V,) and (table > 0).all()
        assert table.sum() == pytest.approx(1.0, abs=1e-12), h
        for w in range(V):
            assert table[w] == pytest.approx(p(w, h), abs=1e-12), (h, w)
    assert sum(h in as_history for h in histories) >= 8 and sum(h not in as_history for h in histories[1:]) >= 3
    # an unseen history backs off wholly to the lower order
    np.testing.assert_allclose(model.prob_table((5, 5)), model.prob_table((5,)), rtol=0, atol=0)
    np.testing.assert_allclose(model.prob_table((5,)), model.prob_table(()), rtol=0, atol=0)
    # the unigram: the training frequencies interpolated with the uniform distribution
    c = np.bincount(train, minlength=V)
    expect = (np.maximum(c - 0.75, 0) + 0.75 * np.count_nonzero(c) / V) / c.sum()
    np.testing.assert_allclose(model.prob_table(()), expect, rtol=1e-15)


def markov_sample(P, n, rng):
    u = rng.random(n)
    cum = np.cumsum(P, axis=1)
    x = np.empty(n, dtype=np.int64)
    x[0] = 0
    for t in range(1, n):
        x[t] = min(np.searchsorted(cum[x[t - 1]], u[t], side="right"), len(P) - 1)
    return x


def test_known_markov_chain():
    rng = np.random.default_rng(7)
    V = 8
    P = rng.dirichlet(np.full(V, 0.3), size=V)
    evals, evecs = np.linalg.eig(P.T)
    pi = np.real(evecs[:, np.argmin(abs(evals - 1))])
    pi /= pi.sum()
    rate = float(-(pi[:, None] * P * np.log(np.where(P > 0, P, 1))).sum())  # the chain's entropy rate
    x = markov_sample(P, 240_000, rng)
    out = NG.ngram_losses(x[:200_000], x[200_000:], V, 32, (1, 2, 3, 5))
    assert out[2] == pytest.approx(rate, abs=0.02)
    assert out[1] > out[2] + 0.2
    assert out[1] == pytest.approx(float(-(pi * np.log(pi)).sum()), abs=0.02)  # the stationary entropy
    assert out[3] < out[2] + 0.01 and out[5] < out[2] + 0.03


def test_history_is_truncated_to_the_window():
    train, val = small_corpus(4)
    one = NG.ngram_losses(train, val, 6, 1, (1, 2, 3, 5))
    assert one[3] == one[2] and one[5] == one[2]  # with T = 1 the one history token makes every order a bigram
    assert one[1] != one[2]
    # orders=(1,): every position, the first included, is the unigram
    model = NG.NGramModel(train, 6, 1)
    _, w, _ = NG.eval_targets(val, 5)
    assert NG.ngram_losses(train, val, 6, 5, (1,))[1] == pytest.approx(-np.log(model.p1[w]).mean(), abs=1e-15)
    # at T = 2 the 5-gram's second positions use two tokens: equal to the trigram, not the whole-stream 5-gram
    two = NG.ngram_losses(train, val, 6, 2, (3, 5))
    assert two[3] == two[5]
    assert NG.ngram_losses(train, val, 6, 8, (3,))[3] != NG.ngram_losses(train, val, 6, 8, (5,))[5]


def test_evaluates_the_same_targets_as_the_models():
    from workflows.data.corpus import eval_starts

    val = np.arange(23) % 6
    t, w, avail = NG.eval_targets(val, 5)
    starts = eval_starts(len(val), 5, None)
    assert len(w) == len(starts) * 5 == 20
    np.testing.assert_array_equal(w.reshape(-1, 5), np.stack([val[s + 1:s + 6] for s in starts]))
    np.testing.assert_array_equal(avail[:6], [1, 2, 3, 4, 5, 1])


def test_keys_that_do_not_fit_in_int64_are_refused():
    train = np.array([0, 1, 2, 3] * 10)
    with pytest.raises(ValueError, match=r"orders=\(1, 5\) with vocab_size=65536"):
        NG.ngram_losses(train, train, 2**16, 4, (1, 5))
    assert NG.check_orders((5, 1, 3, 3), 2**15) == (1, 3, 5)  # 4 × 15 = 60 bits fit
    with pytest.raises(ValueError, match="vocab_size"):
        NG.NGramModel(train, 2**21, 4)  # 3 × 21 = 63 bits
    with pytest.raises(ValueError, match="orders"):
        NG.check_orders((0, 2), 6)
    with pytest.raises(ValueError, match="discount"):
        NG.ngram_losses(train, train, 6, 4, (1, 2), discount=1.5)
    with pytest.raises(ValueError, match="vocab_size=3"):
        NG.ngram_losses(train, train, 3, 4, (1, 2))  # token 3 is outside the vocabulary


def test_references_and_cli(tmp_path, capsys):
    from workflows.data.corpus import DataConfig, prepare

    rng = np.random.default_rng(0)
    for i in range(4):
        words = rng.choice(["to be", "or not", "that is", "the question", "whether", "'tis nobler"], 300)
        (tmp_path / f"doc{i}.txt").write_text(" ".join(words) + "\n")
    d = {"source": str(tmp_path / "*.txt"), "tokenizer": "bytes", "val_fraction": 0.25}
    work = tmp_path / "work"
    out = tmp_path / "ngram.json"
    assert NG.main(["--data-json", json.dumps(d), "--work", str(work), "--context", "16", "--out", str(out),
                    "--orders", "1", "2", "3"]) == 0
    ref = json.loads(out.read_text())
    data = prepare(DataConfig.from_dict(d), work)
    assert ref == json.loads(json.dumps(NG.references(data, 16, (1, 2, 3))))
    assert [(k, v["name"]) for k, v in ref["orders"].items()] == [("1", "unigram"), ("2", "bigram"), ("3", "trigram")]
    assert ref["eval_tokens"] == (len(data.val) - 1) // 16 * 16 and ref["context"] == 16 and ref["discount"] == 0.75
    losses = NG.ngram_losses(data.train, data.val, 256, 16, (1, 2, 3))
    for n, v in ref["orders"].items():
        assert v["nats"] == pytest.approx(losses[int(n)])
        assert v["bpb"] == pytest.approx(v["nats"] / math.log(2) / data.bytes_per_token)
    assert ref["orders"]["3"]["nats"] < ref["orders"]["2"]["nats"] < ref["orders"]["1"]["nats"]
    assert "interpolated absolute discounting" in ref["method"]
    assert "trigram" in capsys.readouterr().out


def test_with_final_eval_windows_it_scores_the_runs_fixed_windows():
    # catches: the references scored on the whole split while the runs' final score uses train.final_eval_windows
    # evenly spaced windows (config/gpu.yaml: 512 of ~2,300) — "the same evaluation tokens" would then be false
    from workflows.data.corpus import val_windows

    train, val = small_corpus(4)
    T, N = 5, 7
    t, w, avail = NG.eval_targets(val, T, N)
    _, vy = val_windows(val, T, N)  # what a run with final_eval_windows=N scores
    np.testing.assert_array_equal(w, vy.flatten().numpy())
    np.testing.assert_array_equal(avail, np.tile(np.arange(1, T + 1), N))
    # the mean over those windows equals each window's bigram score taken by hand from the model's table
    model = NG.NGramModel(train, 6, 2)
    starts = (t[::T] - 1).tolist()
    naive = []
    for s in starts:
        for j in range(T):
            h = int(val[s + j])  # the bigram sees the token before the target, always inside the window
            naive.append(-np.log(model.prob_table((h,))[int(val[s + j + 1])]))
    assert NG.ngram_losses(train, val, 6, T, (1, 2), n_windows=N)[2] == pytest.approx(np.mean(naive), rel=1e-12)
    assert NG.ngram_losses(train, val, 6, T, (2,), n_windows=N)[2] != NG.ngram_losses(train, val, 6, T, (2,))[2]


def test_cli_windows_flag_scores_the_final_windows_and_refuses_below_one(tmp_path, capsys):
    from workflows.data.corpus import DataConfig, prepare

    rng = np.random.default_rng(1)
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(" ".join(rng.choice(["to be", "or not", "that is"], 200)) + "\n")
    d = {"source": str(tmp_path / "*.txt"), "tokenizer": "bytes", "val_fraction": 0.3}
    work, out = tmp_path / "work", tmp_path / "ngram.json"
    assert NG.main(["--data-json", json.dumps(d), "--work", str(work), "--context", "8", "--out", str(out),
                    "--orders", "1", "2", "--windows", "5"]) == 0
    ref = json.loads(out.read_text())
    data = prepare(DataConfig.from_dict(d), work)
    assert ref["eval_tokens"] == 5 * 8 and ref["eval_windows"] == 5 and "the 5 evenly spaced 8-token" in ref["method"]
    assert ref["orders"]["2"]["nats"] == pytest.approx(NG.ngram_losses(data.train, data.val, 256, 8, (1, 2), n_windows=5)[2])
    assert NG.references(data, 8, (1, 2))["eval_windows"] == "all"
    with pytest.raises(SystemExit):
        NG.main(["--data-json", json.dumps(d), "--work", str(work), "--context", "8", "--out", str(out), "--windows", "0"])
    assert "--windows=0" in capsys.readouterr().err


@pytest.mark.parametrize("windows", [None, 12])
def test_the_pipeline_scores_the_references_on_the_final_windows(tmp_path, windows):
    # catches: rule ngram not passing train.final_eval_windows (the references on other targets than the runs')
    import copy

    from tests.grid.test_seed_offset import BASE, dry_run

    cfg = copy.deepcopy(BASE)
    cfg["train"]["final_eval_windows"] = windows
    rc, out = dry_run(tmp_path, cfg)
    assert rc == 0, out[-3000:]
    cmd = [line for line in out.splitlines() if "-m workflows.data.ngram" in line]
    assert len(cmd) == 1 and "--context 32" in cmd[0]
    assert ("--windows 12 " in cmd[0]) == (windows == 12) and ("--windows" in cmd[0]) == (windows is not None)
