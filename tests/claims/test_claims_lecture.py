"""The lecture claims' kinds on synthetic tables: probe_delta (a probe metric of one arm minus another's, paired
by probe seed), profile_share (an operator class's share of the step: reported, never judged), and that the
registry's lecture claims load and name kinds, probes and metrics that exist."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workflows.claims import Evidence
from workflows.claims.registry import load_registry
from workflows.claims.scorecard import evaluate


def run(check, probes=None, tables=None, runs=None) -> pd.Series:
    reg = {"claims": [{"id": "CX", "title": "t", "source": {"paper": "p"}, "published": "n",
                       "checks": [{"id": "a", "what": "w", **check}]}]}
    return evaluate(reg, Evidence(runs, probes or {}, tables=tables or {})).iloc[0]


def probe_table(a=(0.30, 0.25, 0.35), b=(0.10, 0.12, 0.08), metric="mean_attn_saturated_trained"):
    rows = []
    for arm, vals in (("none", a), ("inv_sqrt_d", b)):
        for seed, v in enumerate(vals):
            rows.append({"probe": "attn_saturation", "arm": arm, "seed": seed, "depth": 2, "layer": -1,
                         "metric": metric, "value": v, "params": 50_000, "tokens": 1000})
            rows.append({"probe": "attn_saturation", "arm": arm, "seed": seed, "depth": 2, "layer": 0,
                         "metric": "attn_saturated_trained", "value": 9.0, "params": 50_000, "tokens": 1000})
    return pd.DataFrame(rows)


CHECK = {"kind": "probe_delta", "probe": "attn_saturation", "arm": "none", "control_arm": "inv_sqrt_d",
         "metric": "mean_attn_saturated_trained", "direction": "above", "threshold": 0.0}


def test_probe_delta_is_a_paired_t_interval_over_probe_seeds():
    r = run(CHECK, {"attn_saturation": probe_table()})
    d = np.array([0.30, 0.25, 0.35]) - np.array([0.10, 0.12, 0.08])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert r.effect == pytest.approx(d.mean()) and r.ci_low == pytest.approx(d.mean() - half)
    assert r.verdict == "holds" and r.n == 3
    assert "after the probe's AdamW steps" in r.lr_choice


def test_probe_delta_contradicted_and_not_run():
    r = run(CHECK, {"attn_saturation": probe_table(a=(0.01, 0.02, 0.015))})
    assert r.verdict == "contradicted"
    assert run(CHECK, {}).verdict == "not run"
    assert run({**CHECK, "metric": "absent"}, {"attn_saturation": probe_table()}).verdict == "not run"


def op_table():
    rows = []
    for v, tn in (("baseline", 0.12), ("layernorm", 0.04)):
        for cls, f, t in (("matmul", 0.83, 0.3), ("normalisation", 0.003, tn), ("element-wise", 0.167, 0.58 - tn),
                          ("other", 0.0, 0.12)):
            rows.append({"variant": v, "class": cls, "flops": f * 1e9, "flop_share": f, "time_us": t * 1e5,
                         "time_share": t, "device": "cpu", "threads": 1, "params": 197440, "tokens_per_step": 1024,
                         "steps": 5})
    return pd.DataFrame(rows)


def test_profile_share_is_reported_never_judged():
    c = {"kind": "profile_share", "variant": "baseline", "op_class": "normalisation", "stat": "time_over_flops",
         "direction": "above", "threshold": 10.0}
    r = run(c, tables={"op_profile": op_table()})
    assert r.effect == pytest.approx(0.12 / 0.003) and r.verdict == "not judged"
    r = run({**c, "stat": "time_share_ratio", "control": "layernorm", "direction": "below", "threshold": 1.0},
            tables={"op_profile": op_table()})
    assert r.effect == pytest.approx(3.0) and r.verdict == "not judged"
    assert run(c).verdict == "not run"


def test_lecture_claims_name_existing_kinds_probes_and_metrics():
    from workflows.bench.probes import PROBES

    reg = load_registry("config/claims.yaml")
    lecture = [cl for cl in reg["claims"] if cl["id"].startswith("L")]
    assert [cl["id"] for cl in lecture] == [f"L{i}" for i in range(1, 8)]
    for cl in lecture:
        assert cl["source"]["quote"], cl["id"]
        for c in cl["checks"]:
            if c["kind"] in ("probe", "probe_delta"):
                assert c["probe"] in PROBES and c["probe"] in reg["probes"]
                assert c["arm"] in reg["probes"][c["probe"]]["arms"]
