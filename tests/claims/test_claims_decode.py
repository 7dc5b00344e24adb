"""The decode_ratio claims kind on synthetic decode tables (the shape workflows/bench/decode.py writes): the
geometric-mean ratio of the paired reps and its t interval (against stats.ratio_ci and a hand computation),
holds / contradicted by the fixed bound, inconclusive below min reps, GPU-only checks, "not judged" when other
processes shared the CPU (or the bench cannot tell), and "not run" for a missing table, cell or arm."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workflows.analysis import stats
from workflows.claims import Evidence
from workflows.claims.scorecard import evaluate

CHECK = {"kind": "decode_ratio", "treatment": "mqa", "control": "mha", "batch_size": 64, "context": 1024,
         "direction": "above", "threshold": 1.5, "min_seeds": 3}
MHA = [100.0, 104.0, 98.0, 101.0, 97.0]
MQA = [310.0, 300.0, 330.0, 305.0, 290.0]


def table(mqa=MQA, mha=MHA, device="AMD EPYC 7B13", shared=0.01, cells=((64, 1024), (1, 128))) -> pd.DataFrame:
    rows = []
    for B, T in cells:
        for arm, kv, values in (("mha", 8, mha), ("gqa", 2, [v * 1.5 for v in mha]), ("mqa", 1, mqa)):
            for rep, v in enumerate(values):
                rows.append({"arm": arm, "n_kv_heads": kv, "rep": rep, "batch_size": B, "context": T, "steps": 8,
                             "tokens_per_s": v if (B, T) == (64, 1024) else 50.0, "params": 3_000_000,
                             "device": device, "threads": 2, "other_cpu_share": shared})
    return pd.DataFrame(rows)


def row(check=CHECK, tables=None) -> pd.Series:
    reg = {"claims": [{"id": "CX", "title": "t", "source": {"paper": "p"}, "published": "n",
                       "checks": [{"id": "a", "what": "w", **check}]}]}
    ev = Evidence(None, {}, tables={"decode": table()} if tables is None else tables)
    return evaluate(reg, ev).iloc[0]


def test_ratio_and_interval_over_paired_reps():
    r = row()
    logs = np.log(np.array(MQA) / np.array(MHA))
    half = sps.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    assert r.effect == pytest.approx(math.exp(logs.mean()))
    assert (r.ci_low, r.ci_high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert (r.effect, r.ci_low, r.ci_high) == pytest.approx(stats.ratio_ci([a / b for a, b in zip(MQA, MHA)]))
    assert r.verdict == "holds" and r.n == 5 and "batch 64, context 1024" in r.notes


def test_pairs_by_rep_not_by_position():
    """Rows in another order pair the same way (by the rep column)."""
    shuffled = table().sample(frac=1.0, random_state=3)
    assert row(tables={"decode": shuffled}).effect == pytest.approx(row().effect)


def test_fixed_bound_decides():
    assert row(tables={"decode": table(mqa=[v * 1.02 for v in MHA])}).verdict == "contradicted"  # ~1.02 < 1.5
    gqa = {**CHECK, "treatment": "gqa", "direction": "above", "threshold": 1.2}
    assert row(gqa).verdict == "holds" and row(gqa).effect == pytest.approx(1.5)
    other_cell = {**CHECK, "batch_size": 1, "context": 128, "interval": [0.9, 1.1]}
    del other_cell["direction"], other_cell["threshold"]
    r = row(other_cell)
    assert r.effect == pytest.approx(1.0) and r.verdict == "holds"


def test_too_few_reps_is_inconclusive():
    r = row(tables={"decode": table(mqa=MQA[:2], mha=MHA[:2])})
    assert r.verdict == "inconclusive" and "2 reps, needs ≥ 3" in r.reason


def test_shared_cpu_is_not_judged():
    r = row(tables={"decode": table(shared=0.4)})
    assert r.verdict == "not judged" and "40%" in r.reason and r.effect == pytest.approx(row().effect)
    assert row(tables={"decode": table(shared=math.nan)}).verdict == "not judged"
    no_col = table().drop(columns="other_cpu_share")
    assert row(tables={"decode": no_col}).verdict == "not judged"
    assert row({**CHECK, "max_shared": 0.5}, tables={"decode": table(shared=0.4)}).verdict == "holds"
    # on a GPU the host's other processes do not decide the timing
    assert row(tables={"decode": table(device="NVIDIA H100 80GB HBM3", shared=0.4)}).verdict == "holds"


def test_gpu_only_check_on_a_cpu_is_inconclusive():
    r = row({**CHECK, "device": "cuda"})
    assert r.verdict == "inconclusive" and "GPU" in r.reason
    assert row({**CHECK, "device": "cuda"}, tables={"decode": table(device="NVIDIA H200")}).verdict == "holds"


def test_missing_table_cell_or_arm_is_not_run():
    r = row(tables={})
    assert r.verdict == "not run" and "no decode table" in r.reason
    r = row({**CHECK, "context": 4096})
    assert r.verdict == "not run" and "context=4096" in r.reason and "(64, 1024)" in r.reason
    only_mha = table()[lambda d: d.arm != "mqa"]
    r = row(tables={"decode": only_mha})
    assert r.verdict == "not run" and "'mqa'" in r.reason
