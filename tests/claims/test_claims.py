"""The claims scorecard: the verdict rule, every evaluator kind on synthetic run tables whose answer is
known (holds / contradicted / inconclusive / not run), the registry and the paper grid, the probes on
tiny models, and the CLI end to end."""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from scipy import stats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workflows import claims
from workflows.claims import Evidence, RegistryError, combine, evaluate, judge, load_registry  # noqa: E402

L0 = math.log(256)
NOISE = [0.004, -0.003, 0.001, -0.002, 0.0, 0.003]
BASE = dict(init_loss=L0, tokens_per_s=1000.0, max_attn_logit=5.0, final_logz_mean=3.0, grad_spike_score=0.0,
            params=10_000, nonembed_params=8_000, tokens_seen=50_000, device="AMD EPYC 7B13", attention="gqa",
            norm="rmsnorm")


def arm(variant, losses, **cols):
    """Rows of one variant. losses: {lr: [final loss per seed, None = diverged]}; cols: constants or
    callables (seed, lr) -> value for other columns."""
    rows = []
    for lr, vals in losses.items():
        for seed, v in enumerate(vals):
            row = {**BASE, "variant": variant, "seed": seed, "lr": lr, "diverged": v is None,
                   "status": "diverged" if v is None else "ok", "final_val_loss": math.nan if v is None else v}
            row.update({k: (c(seed, lr) if callable(c) else c) for k, c in cols.items()})
            rows.append(row)
    return rows


def flat(value, n=5, lrs=(0.01,)):
    return {lr: [value + NOISE[i] for i in range(n)] for lr in lrs}


PROBE_ARMS = {"p": {"arms": {"a": {}, "b": {}}}}


def check_rows(check, runs=None, probes=None) -> pd.DataFrame:
    reg = {"probes": PROBE_ARMS, "claims": [{"id": "CX", "title": "t", "source": {"paper": "p"}, "published": "n",
                                               "checks": [{"id": "a", "what": "w", **check}]}]}
    return evaluate(reg, Evidence(pd.DataFrame(runs) if runs else None, probes or {}))


def verdict(check, runs=None, probes=None) -> str:
    rows = check_rows(check, runs, probes)
    assert len(rows) == 1, rows
    return rows.verdict.iloc[0]


# ------------------------------------------------------------------------------------------------
# the rule
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule, ci, expected", [
    ({"direction": "above", "threshold": 1.0}, (1.2, 1.1, 1.3), "holds"),
    ({"direction": "above", "threshold": 1.0}, (0.8, 0.7, 0.9), "contradicted"),
    ({"direction": "above", "threshold": 1.0}, (1.0, 0.9, 1.1), "inconclusive"),
    ({"direction": "above", "threshold": 1.0}, (1.0, 1.0, 1.0), "contradicted"),
    ({"direction": "at_least", "threshold": 1.0}, (1.0, 1.0, 1.0), "holds"),
    ({"direction": "below", "threshold": 0.0}, (-0.2, -0.3, -0.1), "holds"),
    ({"direction": "below", "threshold": 0.0}, (0.2, 0.1, 0.3), "contradicted"),
    ({"direction": "below", "threshold": 0.0}, (0.0, -0.1, 0.1), "inconclusive"),
    ({"direction": "at_most", "threshold": 1.0}, (1.0, 1.0, 1.0), "holds"),
    ({"direction": "at_most", "threshold": 1.0}, (1.1, 1.01, 1.2), "contradicted"),
    ({"interval": [-0.1, 0.1]}, (0.0, -0.05, 0.05), "holds"),
    ({"interval": [-0.1, 0.1]}, (0.3, 0.2, 0.4), "contradicted"),
    ({"interval": [-0.1, 0.1]}, (-0.3, -0.4, -0.2), "contradicted"),
    ({"interval": [-0.1, 0.1]}, (0.1, 0.05, 0.15), "inconclusive"),
    ({"interval": [-0.1, 0.1]}, (0.0, math.nan, math.nan), "inconclusive"),
])
def test_judge(rule, ci, expected):
    c = claims.validate_check({"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c",
                               **rule}, "test", {"min_seeds": 2, "min_lrs": 1})
    assert judge(*ci, c)[0] == expected


def test_judge_too_little_evidence_overrides_a_clear_ci():
    c = {"direction": "above", "threshold": 0.0}
    assert judge(5.0, 4.0, 6.0, c)[0] == "holds"
    v, why = judge(5.0, 4.0, 6.0, c, short=["1 seed, needs ≥ 3"])
    assert v == "inconclusive" and "too little evidence" in why


def test_judge_margin_is_a_fixed_number():
    c = claims.validate_check({"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c",
                               "interval": ["-margin", "margin"], "margin": 0.02}, "test", {"min_seeds": 2, "min_lrs": 1})
    assert judge(0.05, 0.04, 0.06, c)[0] == "contradicted"
    assert judge(0.005, -0.01, 0.015, c)[0] == "holds"
    assert judge(0.015, 0.01, 0.03, c)[0] == "inconclusive"


@pytest.mark.parametrize("margin, message", [
    ({"nats": 0.02, "sigmas": 2}, "margin.sigmas is a noise-scaled margin"),
    ({"sigmas": 2}, "noise-scaled"),
    ({"nats": 0.02}, "must be a number"),
    (-0.1, "positive number"),
    ("2 sd", "positive number"),
])
def test_loader_rejects_noise_scaled_and_malformed_margins(margin, message):
    check = {"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c",
             "interval": ["-margin", "margin"], "margin": margin}
    with pytest.raises(RegistryError, match=message):
        load_registry({"claims": [{"id": "C1", "title": "t", "source": {"paper": "p"}, "published": "n",
                                   "checks": [check]}]})


def test_loader_rejects_a_check_that_contradicts_its_published_effect():
    check = {"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c", "direction": "below",
             "threshold": -0.05, "published": -0.04}  # "wins by 0.05" while the paper reports 0.04
    with pytest.raises(RegistryError, match="published effect -0.04 lies outside"):
        load_registry({"claims": [{"id": "C1", "title": "t", "source": {"paper": "p"}, "published": "n",
                                   "checks": [check]}]})


@pytest.mark.parametrize("rule", [
    {"direction": "below", "threshold": 0.0}, {"direction": "at_most", "threshold": 0.03},
    {"direction": "above", "threshold": 0.1}, {"direction": "at_least", "threshold": 1.0},
    {"interval": [-0.02, 0.02]},
])
def test_a_ci_containing_an_allowed_value_is_never_contradicted(rule):
    """Directional claims are contradicted only when the CI excludes every value the claim allows; so any CI that
    contains a value of the holds region (the published effect among them) is not 'contradicted'."""
    c = claims.validate_check({"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c",
                               **rule}, "test", {"min_seeds": 2, "min_lrs": 1})
    a, b, _ = claims.holds_region(c)
    strict = rule.get("direction") in ("above", "below")  # the bound itself is not an allowed value there
    ends = [] if strict else [a, b]
    inside = [x for x in (*ends, (a + b) / 2 if np.isfinite(a + b) else None,
                          a + 0.5 if np.isfinite(a) else None, b - 0.5 if np.isfinite(b) else None)
              if x is not None and np.isfinite(x) and a <= x <= b]
    for x in inside:
        for lo, hi in ((x - 1.0, x), (x, x + 1.0), (x - 0.001, x + 0.001)):
            assert judge((lo + hi) / 2, lo, hi, c)[0] != "contradicted", (rule, x, lo, hi)


def test_judge_reports_different_but_smaller_and_not_judged():
    c = {"interval": [-0.02, 0.02], "unit": "nats"}
    verdict_, why = judge(0.01, 0.005, 0.015, c)
    assert verdict_ == "holds" and "smaller than the margin" in why
    assert "smaller" not in judge(0.0, -0.005, 0.005, c)[1]
    cost = {"direction": "at_most", "threshold": 0.05}
    assert "smaller than the margin" in judge(0.02, 0.01, 0.03, cost)[1]
    assert judge(0.0, -0.1, 0.1, c, not_judged="degenerate: x")[0] == "not judged"
    # not judged wins over an evidence shortfall and over a clear CI
    assert judge(0.0, -0.001, 0.001, c, short=["1 seed"], not_judged="degenerate: x") == ("not judged", "degenerate: x")


def test_combine():
    assert combine(["holds", "holds"]) == "holds"
    assert combine(["holds", "contradicted", "not run"]) == "contradicted"
    assert combine(["holds", "inconclusive"]) == "inconclusive"
    assert combine(["holds", "not run"]) == "inconclusive"
    assert combine(["not run", "not run"]) == "not run"


# ------------------------------------------------------------------------------------------------
# loss_delta / metric_delta
# ------------------------------------------------------------------------------------------------
BELOW0 = {"kind": "loss_delta", "treatment": "t", "control": "c", "direction": "below", "threshold": 0.0}


def test_loss_delta_holds_contradicted_inconclusive_not_run():
    ctl = arm("c", flat(2.0))
    assert verdict(BELOW0, arm("t", flat(1.9)) + ctl) == "holds"
    assert verdict(BELOW0, arm("t", flat(2.1)) + ctl) == "contradicted"
    mixed = {0.01: [2.0 + d for d in (0.1, -0.1, 0.1, -0.1, 0.0)]}
    assert verdict(BELOW0, arm("t", mixed) + arm("c", {0.01: [2.0] * 5})) == "inconclusive"
    assert verdict(BELOW0, arm("t", flat(1.9, n=1)) + arm("c", flat(2.0, n=1))) == "inconclusive"  # 1 seed
    assert verdict(BELOW0, arm("t", flat(1.9))) == "not run"


def test_loss_delta_pairs_each_side_at_its_own_best_lr():
    t = arm("t", {0.01: [2.0 + n for n in NOISE[:4]], 0.1: [3.0] * 4})
    c = arm("c", {0.01: [3.0] * 4, 0.1: [2.1 + n for n in NOISE[:4]]})
    row = check_rows(BELOW0, t + c).iloc[0]
    assert row.verdict == "holds"
    assert row.effect == pytest.approx(-0.1)


def test_loss_delta_lr_range_and_expect():
    t = arm("t", {0.0003: [1.0] * 4, 0.01: [2.2 + n for n in NOISE[:4]]})
    c = arm("c", {0.0003: [3.0] * 4, 0.01: [2.0 + n for n in NOISE[:4]]})
    assert verdict(BELOW0, t + c) == "holds"  # the LR 3e-4 runs decide
    assert verdict({**BELOW0, "lr_min": 1e-3}, t + c) == "contradicted"  # without them
    assert verdict({**BELOW0, "expect": {"t": {"attention": "gqa"}}}, t + c) == "holds"
    assert verdict({**BELOW0, "expect": {"t": {"attention": "mha"}}}, t + c) == "not run"


def test_expect_null_matches_a_missing_value():
    """expect: {v: {grad_clip: null}} (clipping off) matches the NaN/None a table holds for it."""
    assert claims.same(float("nan"), None) and claims.same(None, None)
    assert not claims.same(1.0, None) and not claims.same(float("nan"), 1.0)


def test_loss_delta_margin_interval_does_not_widen_with_noise():
    check = {"kind": "loss_delta", "treatment": "t", "control": "c", "interval": ["-margin", "margin"], "margin": 0.02}
    assert verdict(check, arm("t", flat(2.001)) + arm("c", flat(2.0))) == "holds"
    assert verdict(check, arm("t", flat(2.5)) + arm("c", flat(2.0))) == "contradicted"
    noisy = {0.01: [2.0 + d for d in (0.3, -0.3, 0.25, -0.25, 0.0)]}
    row = check_rows(check, arm("t", noisy) + arm("c", flat(2.0))).iloc[0]
    assert row.holds_high == pytest.approx(0.02) and row.verdict == "inconclusive"  # noise does not pass it
    assert row.seeds_needed > 5 and "seeds would decide it as holds" in row.to_decide


def test_metric_delta_reads_its_metric():
    check = {"kind": "metric_delta", "metric": "grad_spike_score", "treatment": "t", "control": "c",
             "direction": "below", "threshold": 0.0}
    runs = arm("t", flat(2.0), grad_spike_score=lambda s, lr: 0.05 + 0.001 * s) + \
        arm("c", flat(2.0), grad_spike_score=lambda s, lr: 0.1 + 0.001 * s)
    assert verdict(check, runs) == "holds"
    assert verdict({**check, "direction": "above"}, runs) == "contradicted"


# ------------------------------------------------------------------------------------------------
# divergence
# ------------------------------------------------------------------------------------------------
DOW = {"kind": "divergence_or_worse", "treatment": "t", "control": "c", "worse_by": 0.1, "direction": "above",
       "threshold": 0.5, "min_seeds": 3}


def test_divergence_or_worse():
    lrs = (0.003, 0.01)
    ctl = arm("c", flat(2.0, n=3, lrs=lrs))
    assert verdict(DOW, arm("t", {lr: [None] * 3 for lr in lrs}) + ctl) == "holds"
    assert verdict(DOW, arm("t", flat(2.3, n=3, lrs=lrs)) + ctl) == "holds"  # >= 0.1 nats worse counts
    many = (0.001, 0.003, 0.01, 0.03)
    assert verdict(DOW, arm("t", flat(2.0, n=4, lrs=many)) + arm("c", flat(2.0, n=4, lrs=many))) == "contradicted"
    half = {0.003: [None] * 3, 0.01: [2.0] * 3}
    assert verdict(DOW, arm("t", half) + ctl) == "inconclusive"
    two_seeds = arm("t", {lr: [None] * 2 for lr in lrs}) + arm("c", flat(2.0, n=2, lrs=lrs))
    assert verdict(DOW, two_seeds) == "inconclusive"  # min_seeds 3
    assert verdict(DOW, ctl) == "not run"


def test_divergence_delta():
    check = {"kind": "divergence_delta", "treatment": "t", "control": "c", "interval": [-0.25, 0.25]}
    lrs = tuple(10.0 ** -k for k in range(1, 9))
    many = flat(2.0, n=5, lrs=lrs)  # 40 runs each
    # nothing diverged on either side: the check cannot tell the arms apart (it used to "hold" by design)
    assert verdict(check, arm("t", many) + arm("c", many)) == "not judged"
    assert verdict(check, arm("t", {lr: [None] * 5 for lr in lrs}) + arm("c", many)) == "contradicted"
    top = {lr: ([None] * 5 if lr == lrs[0] else [2.0] * 5) for lr in lrs}  # both diverge at the top LR, every seed
    assert verdict(check, arm("t", top) + arm("c", top)) == "holds"
    two = (0.1, 0.01)  # one seed of three diverges at the top LR: per-seed rates 0.5, 0, 0 vs 0: too few seeds
    assert verdict(check, arm("t", {0.1: [None, 2.0, 2.0], 0.01: [2.0] * 3}) + arm("c", flat(2.0, n=3, lrs=two))) \
        == "inconclusive"
    # matched LRs only: the treatment's extra LR (where it diverges) is not compared
    extra = {**{lr: [2.0] * 5 for lr in lrs}, 1.0: [None] * 5}
    assert verdict(check, arm("t", extra) + arm("c", top | {lrs[0]: [2.0] * 5})) == "not judged"
    assert verdict(check, arm("c", many)) == "not run"


# ------------------------------------------------------------------------------------------------
# LR sensitivity and highest stable LR
# ------------------------------------------------------------------------------------------------
GRID5 = (0.001, 0.003, 0.01, 0.03, 0.1)


def lr_arm(variant, diverge_at, n=3, diverge_seeds=None):
    """Final loss 2.0 (+noise) everywhere except at LRs in ``diverge_at`` (for ``diverge_seeds``)."""
    out = {}
    for lr in GRID5:
        out[lr] = [None if lr in diverge_at and (diverge_seeds is None or s in diverge_seeds) else 2.0 + NOISE[s]
                   for s in range(n)]
    return arm(variant, out)


LRS = {"kind": "lr_sensitivity", "treatment": "t", "control": "c", "direction": "below", "threshold": 0.0,
       "min_seeds": 3, "min_lrs": 5}


def test_lr_sensitivity():
    stable, fragile = lr_arm("t", ()), lr_arm("c", (0.03, 0.1))
    row = check_rows(LRS, stable + fragile).iloc[0]
    assert row.verdict == "holds"
    assert row.effect == pytest.approx(-2 / 5 * (L0 - 2.0), abs=0.01)
    assert verdict(LRS, lr_arm("t", (0.03, 0.1)) + lr_arm("c", ())) == "contradicted"
    mixed = lr_arm("t", (0.1,), n=4, diverge_seeds={0}) + lr_arm("c", (0.1,), n=4, diverge_seeds={1})
    assert verdict(LRS, mixed) == "inconclusive"  # better in one seed, worse in another
    three = [r for r in stable + fragile if r["lr"] in (0.001, 0.01, 0.1)]
    assert verdict(LRS, three) == "inconclusive"  # min_lrs 5


MSL = {"kind": "max_stable_lr", "treatment": "t", "control": "c", "direction": "at_least", "threshold": 1,
       "min_seeds": 3, "min_lrs": 5}


def test_max_stable_lr():
    row = check_rows(MSL, lr_arm("t", (0.1,)) + lr_arm("c", (0.03, 0.1))).iloc[0]
    assert row.verdict == "holds" and row.effect == 1
    assert verdict(MSL, lr_arm("t", (0.01, 0.03, 0.1)) + lr_arm("c", (0.03, 0.1))) == "contradicted"
    row = check_rows(MSL, lr_arm("t", ()) + lr_arm("c", ())).iloc[0]
    assert row.verdict == "inconclusive" and "censored" in row.reason  # control never diverged
    assert verdict(MSL, lr_arm("t", (0.1,))) == "not run"


# ------------------------------------------------------------------------------------------------
# ratios
# ------------------------------------------------------------------------------------------------
LOGIT = {"kind": "metric_ratio", "metric": "max_attn_logit", "at": "each", "where": "diverged", "treatment": "t",
         "control": "c", "direction": "at_least", "threshold": 10.0, "min_seeds": 1}


def test_metric_ratio_diverged_runs_only():
    t = arm("t", {0.01: [2.0] * 3, 0.1: [None] * 3}, max_attn_logit=lambda s, lr: 1e4 * (1 + s) if lr == 0.1 else 5.0)
    c = arm("c", {0.01: [2.0] * 3, 0.1: [2.0] * 3}, max_attn_logit=lambda s, lr: 10.0 + s)
    row = check_rows(LOGIT, t + c).iloc[0]
    assert row.verdict == "holds" and row.effect > 500
    small = arm("t", {0.1: [None] * 3}, max_attn_logit=lambda s, lr: 12.0 + s)
    assert verdict(LOGIT, small + c) == "contradicted"
    calm = arm("t", {0.1: [2.0] * 3}, max_attn_logit=1e4)
    row = check_rows(LOGIT, calm + c).iloc[0]
    assert row.verdict == "inconclusive" and "no diverged run" in row.reason
    assert verdict(LOGIT, c) == "not run"


def test_metric_ratio_abs_transform():
    check = {"kind": "metric_ratio", "metric": "final_logz_mean", "transform": "abs", "at": "each",
             "treatment": "t", "control": "c", "direction": "below", "threshold": 1.0}
    t = arm("t", flat(2.0, n=3), final_logz_mean=lambda s, lr: -0.5 - 0.01 * s)
    c = arm("c", flat(2.0, n=3), final_logz_mean=lambda s, lr: 3.0 + 0.01 * s)
    assert verdict(check, t + c) == "holds"
    no_abs = {k: v for k, v in check.items() if k != "transform"}
    assert verdict(no_abs, t + c) == "inconclusive"  # negative log Z has no ratio


def test_metric_ratio_deterministic_params():
    check = {"kind": "metric_ratio", "metric": "params", "at": "each", "treatment": "t", "control": "c",
             "interval": [0.98, 1.02], "deterministic": True}
    assert verdict(check, arm("t", flat(2.0, n=1), params=10_100) + arm("c", flat(2.0, n=1))) == "holds"
    assert verdict(check, arm("t", flat(2.0, n=1), params=12_000) + arm("c", flat(2.0, n=1))) == "contradicted"


SPEED = {"kind": "speed_ratio", "treatment": "t", "control": "c", "interval": [0.95, 1.05]}


def speed_table(variant, values):
    return [{"variant": variant, "rep": i, "tokens_per_s": v, "device": "AMD EPYC 7B13"} for i, v in enumerate(values)]


def test_speed_ratio_is_judged_only_on_side_by_side_timings():
    t = arm("t", flat(2.0, n=3, lrs=(0.01, 0.1)), tokens_per_s=lambda s, lr: 1000.0 + 5 * s)
    c = arm("c", flat(2.0, n=3, lrs=(0.01, 0.1)), tokens_per_s=lambda s, lr: 1000.0 - 5 * s)
    row = check_rows(SPEED, t + c).iloc[0]  # grid jobs shared the cores: reported, never judged
    assert row.verdict == "not judged" and "shared the cores" in row.reason and row.effect == pytest.approx(1.0, abs=0.02)

    def judged(check, speed, runs=t + c):
        reg = {"claims": [{"id": "CX", "title": "t", "source": {"paper": "p"}, "published": "n",
                           "checks": [{"id": "a", "what": "w", **check}]}]}
        return evaluate(reg, Evidence(pd.DataFrame(runs), {}, speed=pd.DataFrame(speed))).iloc[0]

    side = speed_table("t", [1000, 1010, 995, 1005]) + speed_table("c", [1002, 1000, 1001, 998])
    assert judged(SPEED, side).verdict == "holds"
    slow = speed_table("t", [500, 505, 498, 502]) + speed_table("c", [1002, 1000, 1001, 998])
    assert judged(SPEED, slow).verdict == "contradicted"
    gpu_only = {**SPEED, "device": "cuda"}
    row = judged(gpu_only, side)
    assert row.verdict == "inconclusive" and "GPU" in row.reason
    on_gpu = [{**r, "device": "NVIDIA H100 80GB HBM3"} for r in side]
    assert judged(gpu_only, on_gpu).verdict == "holds"


# ------------------------------------------------------------------------------------------------
# spread
# ------------------------------------------------------------------------------------------------
SPREAD = {"kind": "spread", "variants": ["v2", "v4", "v8"], "direction": "at_most", "threshold": 0.05,
          "min_seeds": 3}


def test_spread():
    same = [r for v in ("v2", "v4", "v8") for r in arm(v, flat(2.0, n=3, lrs=(0.01, 0.1)))]
    assert verdict(SPREAD, same) == "holds"
    worse = same[:-6] + arm("v8", flat(2.5, n=3, lrs=(0.01, 0.1)))
    row = check_rows(SPREAD, worse).iloc[0]
    assert row.verdict == "contradicted" and row.effect == pytest.approx(0.25, abs=0.01)
    assert verdict(SPREAD, [r for r in same if r["variant"] != "v8"]) == "not run"
    assert verdict(SPREAD, [r for r in same if r["seed"] < 2]) == "inconclusive"


# ------------------------------------------------------------------------------------------------
# probe checks (synthetic probe tables)
# ------------------------------------------------------------------------------------------------
def probe_table(arm_name, metric, values):
    """values: {depth: [per-seed value]}"""
    rows = [("p", arm_name, s, d, -1, metric, v, 1000, 512) for d, vals in values.items() for s, v in enumerate(vals)]
    return {"p": pd.DataFrame(rows, columns=["probe", "arm", "seed", "depth", "layer", "metric", "value", "params",
                                             "tokens"])}


BY = {"kind": "probe", "probe": "p", "arm": "a", "metric": "m", "by": "depth", "direction": "above",
      "threshold": 1.5, "required_depths": [3, 6]}


def test_probe_by_depth():
    rows = check_rows(BY, probes=probe_table("a", "m", {3: [2.0, 2.1, 1.9], 6: [1.0, 1.1, 0.9]}))
    assert list(rows.group) == ["L=3", "L=6"]
    assert list(rows.verdict) == ["holds", "contradicted"]
    assert rows.claim_verdict.iloc[0] == "contradicted"
    rows = check_rows(BY, probes=probe_table("a", "m", {3: [1.0, 2.0, 1.6], 6: [2.0, 2.1, 1.9]}))
    assert list(rows.verdict) == ["inconclusive", "holds"]
    rows = check_rows(BY, probes=probe_table("a", "m", {3: [2.0, 2.1, 1.9]}))
    assert rows.verdict.iloc[0] == "inconclusive" and "L=[3, 6]" in rows.reason.iloc[0]  # depth 6 missing
    assert verdict(BY, probes=probe_table("b", "m", {3: [2.0] * 3})) == "not run"  # arm missing
    assert verdict(BY, probes={}) == "not run"  # probe missing


def test_probe_reduce_and_slope():
    red = {"kind": "probe", "probe": "p", "arm": "a", "metric": "m", "reduce": "max", "direction": "at_most",
           "threshold": 1.5}
    tab = probe_table("a", "m", {1: [1.0, 1.1, 1.05], 24: [1.4, 1.41, 1.39]})
    row = check_rows(red, probes=tab).iloc[0]
    assert row.verdict == "holds" and row.effect == pytest.approx(1.4)
    # the interval: per-depth t intervals at level 1 − 0.05/2 (Bonferroni over 2 depths), reduced by max
    half = stats.t.ppf(1 - 0.025 / 2, 2) * 0.01 / math.sqrt(3)
    assert (row.ci_low, row.ci_high) == pytest.approx((1.4 - half, 1.4 + half))
    # three seeds spread ±0.05: the honest interval reaches past 1.5
    tab = probe_table("a", "m", {1: [1.0, 1.1, 1.05], 24: [1.4, 1.45, 1.35]})
    assert verdict(red, probes=tab) == "inconclusive"
    tab = probe_table("a", "m", {1: [1.0, 1.1, 1.05], 24: [3.0, 3.1, 2.9]})
    assert verdict(red, probes=tab) == "contradicted"
    slope = {"kind": "probe", "probe": "p", "arm": "a", "metric": "m", "stat": "loglog_slope", "direction": "below",
             "threshold": 0.0}
    tab = probe_table("a", "m", {L: [L ** -0.5 * (1 + n) for n in NOISE[:3]] for L in (3, 6, 12)})
    row = check_rows(slope, probes=tab).iloc[0]
    assert row.verdict == "holds" and row.effect == pytest.approx(-0.5, abs=0.02)
    tab = probe_table("a", "m", {L: [L ** 0.5 * (1 + n) for n in NOISE[:3]] for L in (3, 6, 12)})
    assert verdict(slope, probes=tab) == "contradicted"


def test_probe_deterministic_needs_one_seed():
    check = {"kind": "probe", "probe": "p", "arm": "a", "metric": "m", "interval": [1.0, 1.0], "deterministic": True,
             "min_seeds": 1}
    assert verdict(check, probes=probe_table("a", "m", {4: [1.0]})) == "holds"
    assert verdict(check, probes=probe_table("a", "m", {4: [0.5]})) == "contradicted"
    assert verdict({k: v for k, v in check.items() if k != "deterministic"},
                   probes=probe_table("a", "m", {4: [1.0]})) == "inconclusive"  # one value, no bootstrap CI


# ------------------------------------------------------------------------------------------------
# the registry and the paper grid
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry():
    return load_registry(ROOT / "config" / "claims.yaml")


def test_registry_has_every_claim_and_kind(registry):
    assert [c["id"] for c in registry["claims"]] == ([f"C{i}" for i in range(1, 11)] + ["C8s", "C9s", "C10s"]
                                                     + [f"C{i}" for i in range(11, 17)] + ["C19", "C17", "C18"]
                                                     + [f"H{i}" for i in range(1, 6)] + ["S1"]
                                                     + [f"L{i}" for i in range(1, 8)])
    kinds = {c["kind"] for cl in registry["claims"] for c in cl["checks"]}
    assert kinds == set(claims.KINDS)
    for cl in registry["claims"]:
        assert cl["source"]["paper"] and cl["published"]


def test_hyperparameter_claims_name_variants_of_the_hparams_sweeps(registry):
    """H1-H5 compare variants that config/hparams.yaml's sweeps expand into (or its baseline)."""
    from workflows.grid.grid import Grid, load_pipeline_config

    grid = Grid.from_config(load_pipeline_config(ROOT / "config" / "hparams.yaml"))
    for cl in registry["claims"]:
        if cl["id"].startswith("H"):
            for c in cl["checks"]:
                names = c.get("variants") or [c["treatment"], c["control"]]
                assert set(names) <= set(grid.variants), (cl["id"], c["id"], set(names) - set(grid.variants))


@pytest.mark.parametrize("bad, message", [
    ({"kind": "nope"}, "kind="),
    ({"interval": [0, 1], "direction": "above", "threshold": 0}, "either interval"),
    ({"direction": "sideways", "threshold": 0}, "direction must be"),
    ({"interval": ["-margin", "margin"]}, "margin"),
    ({"direction": "below", "threshold": 0, "colour": "red"}, "unknown field"),
    ({"direction": "below", "threshold": 0, "min_seeds": 0}, "min_seeds"),
])
def test_registry_errors_name_the_problem(bad, message):
    check = {"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c", **bad}
    with pytest.raises(RegistryError, match=message):
        load_registry({"claims": [{"id": "C1", "title": "t", "source": {"paper": "p"}, "published": "n",
                                   "checks": [check]}]})
    with pytest.raises(RegistryError, match="no arm"):
        load_registry({"probes": PROBE_ARMS, "claims": [{
            "id": "C1", "title": "t", "source": {"paper": "p"}, "published": "n",
            "checks": [{"id": "a", "what": "w", "kind": "probe", "probe": "p", "arm": "zz", "metric": "m",
                        "direction": "above", "threshold": 0}]}]})


OWN_GRID = {"H": "hparams.yaml", "S": "ladder.yaml", "L": "lecture.yaml"}  # claim id prefix -> the grid scoring it


def test_claims_of_their_own_grids_name_its_variants(registry):
    """H claims compare config/hparams.yaml's variants (tested below), S claims the ladder's arms, L claims
    config/lecture.yaml's variants."""
    from workflows.grid.grid import Grid, load_pipeline_config

    for prefix in ("S", "L"):
        grid = Grid.from_config(load_pipeline_config(ROOT / "config" / OWN_GRID[prefix]))
        names = set(grid.ladder["arms"]) if grid.ladder else set(grid.variants)
        for cl in registry["claims"]:
            if cl["id"].startswith(prefix):
                for c in cl["checks"]:
                    assert set(claims.check_variants(c)) <= names, (cl["id"], c["id"])


def test_paper_grid_has_every_claim_arm(registry):
    from workflows.grid.grid import Grid, load_pipeline_config

    paper = load_pipeline_config(ROOT / "config" / "paper.yaml")
    default = load_pipeline_config(ROOT / "config" / "config.yaml")
    grid = Grid.from_config(paper)  # every run config of the paper grid is valid
    assert set(default["variants"]) <= set(paper["variants"])
    assert grid.lrs == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1] and len(grid.seeds) == 3
    for cl in registry["claims"]:
        if cl["id"][0] in OWN_GRID:  # scored on a grid of their own
            continue
        for c in cl["checks"]:
            for v in claims.check_variants(c):
                assert v in paper["variants"], f"{c['full_id']} compares {v!r}, missing from config/paper.yaml"
    assert paper["claims"]["registry"] == "config/claims.yaml"


def test_paper_aspect_arms_keep_nonembed_params(registry):
    from models import build, count_params
    from workflows.grid.grid import Grid, load_pipeline_config

    grid = Grid.from_config(load_pipeline_config(ROOT / "config" / "paper.yaml"))

    def nonembed(v):
        with torch.device("meta"):
            return count_params(build(grid.run_config(v, 0, 1e-3).model))["nonembed"]

    base = nonembed("baseline")
    spread = next(c for cl in registry["claims"] for c in cl["checks"] if c["kind"] == "spread")
    layers = []
    for v in spread["variants"]:
        assert abs(nonembed(v) / base - 1) < 0.05, v
        layers.append(grid.run_config(v, 0, 1e-3).model.n_layers)
    assert layers == [2, 4, 8, 16]


# ------------------------------------------------------------------------------------------------
# probes on tiny models (real text from the corpus fixture)
# ------------------------------------------------------------------------------------------------
TINY = {"seeds": [0, 1], "batch_size": 4, "model": {"d_model": 32, "n_heads": 4, "n_kv_heads": None,
                                                     "context_length": 16},
        "grad_depths": [3, 6], "grad_batches": 16, "resid_depths": [2, 12], "resid_batches": 1, "kv_depth": 2}


@pytest.fixture(scope="module")
def probe_env(corpus, work, registry):
    grid_model = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["model"]
    data = {"source": str(corpus / "*.txt"), "tokenizer": "bytes"}

    def run(name, settings=None, arms=None):
        from workflows.bench.probes import run_probe

        torch.set_num_threads(1)
        return run_probe(name, arms or registry["probes"][name]["arms"], {**TINY, **(settings or {})}, grid_model,
                         data, work)

    return run


def test_grad_init_post_ln_grows_toward_the_output_more_than_pre_ln(probe_env):
    arms = {k: v for k, v in yaml.safe_load((ROOT / "config/claims.yaml").read_text())["probes"]["grad_init"]
            ["arms"].items() if k in ("post_ln", "pre_ln")}
    df = probe_env("grad_init", arms=arms)
    ratio = df[df.metric == "ratio_ffn_down"].groupby(["arm", "depth"]).value.mean()
    for depth in TINY["grad_depths"]:
        assert ratio["post_ln", depth] > ratio["pre_ln", depth], ratio
    # the derived ratio is last / first of the per-layer rows it was computed from
    one = df[(df.arm == "post_ln") & (df.depth == 6) & (df.seed == 0)]
    layers = one[one.metric == "grad_ffn_down"].set_index("layer").value
    assert sorted(layers.index) == list(range(6))
    assert one[one.metric == "ratio_ffn_down"].value.iloc[0] == pytest.approx(layers[5] / layers[0])


def test_resid_init_gpt2_scaling_bounds_the_residual_stream(probe_env):
    df = probe_env("resid_init")
    r = df[df.metric == "last_embed_ratio"].groupby(["arm", "depth"]).value.mean()
    assert r["gpt2", 12] <= 1.5
    assert r["gpt2_unscaled", 12] > r["gpt2", 12] * 1.2
    assert r["gpt2_unscaled", 12] > r["gpt2_unscaled", 2] * 1.2  # grows with depth without the scaling


def test_kv_cache_bytes_in_exact_head_ratios(probe_env):
    df = probe_env("kv_cache", {"seeds": [0]})
    v = df.pivot_table(index="arm", columns="metric", values="value")
    assert (v.bytes_measured == v.bytes_formula).all()
    assert v.loc["mha", "bytes_measured"] == 4 * v.loc["gqa", "bytes_measured"] == 8 * v.loc["mqa", "bytes_measured"]
    assert (v.ratio_vs_expected == 1.0).all()


def test_softcap_bound_and_a_probe_that_proves_nothing_says_so(probe_env):
    df = probe_env("softcap")
    v = df.groupby("metric").value.max()
    assert v.attn_raw_over_cap > 1 and v.final_raw_over_cap > 1  # the caps were binding
    assert v.attn_capped_over_cap <= 1.0 and v.final_capped_over_cap <= 1.0 and v.fn_max_over_cap <= 1.0
    weak = probe_env("softcap", {"softcap_scale": 1e-3}).groupby("metric").value.max()
    assert math.isnan(weak.attn_capped_over_cap) and math.isnan(weak.final_capped_over_cap)


def test_gpt2_unscaled_init_drops_only_the_residual_scaling():
    from models import ModelConfig, build

    stds = {}
    for init in ("gpt2", "gpt2_unscaled"):
        torch.manual_seed(0)
        m = build(ModelConfig(d_model=128, n_layers=8, n_heads=4, init=init))
        stds[init] = (m.blocks[0].sublayers[0].f.out.weight.std().item(),
                      m.blocks[0].sublayers[0].f.qkv.weight.std().item())
    assert stds["gpt2"][0] == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert stds["gpt2_unscaled"][0] == pytest.approx(0.02, rel=0.1)
    assert stds["gpt2"][1] == pytest.approx(stds["gpt2_unscaled"][1], rel=0.1)


# ------------------------------------------------------------------------------------------------
# the CLI and the pipeline
# ------------------------------------------------------------------------------------------------
def test_cli_writes_csv_markdown_and_figure(tmp_path):
    runs = pd.DataFrame(arm("baseline", flat(2.0, n=3)) + arm("qk_norm", flat(1.9, n=3)))
    runs.to_parquet(tmp_path / "runs.parquet")
    probe_table("gemma2", "attn_capped_over_cap", {2: [1.0, 1.0]})["p"].to_parquet(tmp_path / "softcap.parquet")
    rc = claims.main(["--registry", str(ROOT / "config/claims.yaml"), "--runs", str(tmp_path / "runs.parquet"),
                      "--probes", str(tmp_path / "softcap.parquet"), "--csv", str(tmp_path / "claims.csv"),
                      "--md", str(tmp_path / "claims.md"), "--figure", str(tmp_path / "fig" / "claims.png"),
                      "--grids", str(ROOT / "config/paper.yaml")])
    assert rc == 0
    df = pd.read_csv(tmp_path / "claims.csv")
    assert set(df.verdict) <= set(claims.VERDICTS)
    assert df.set_index("check").loc["C15.b", "verdict"] == "holds"
    assert df.set_index("check").loc["C18.a", "verdict"] == "not run"
    md = (tmp_path / "claims.md").read_text()
    assert "| C15 " in md and "left to other grids" in md and "aspect_L2" in md
    assert (tmp_path / "fig" / "claims.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "fig" / "claims.pdf").read_bytes()[:4] == b"%PDF"


@pytest.mark.skipif(shutil.which("snakemake") is None and not (Path(sys.executable).parent / "snakemake").exists(),
                    reason="snakemake not installed")
@pytest.mark.parametrize("configfile", ["config/paper.yaml", "config/micro.yaml"])
def test_pipeline_dry_run_schedules_probes_and_claims(configfile, tmp_path):
    exe = Path(sys.executable).parent / "snakemake"
    out = subprocess.run([str(exe if exe.exists() else "snakemake"), "-n", "--configfile", configfile, "--config",
                          f"results={tmp_path}/r", f"figures={tmp_path}/f", f"logs={tmp_path}/l"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = out.stdout + out.stderr
    assert "rule claims:" in jobs or "localrule claims:" in jobs
    assert jobs.count("probe:") >= 4
    assert f"{tmp_path}/f/claims.png" in jobs


@pytest.mark.parametrize("bad, message", [
    ({"model": {"norm": "layernorm"}}, "only shape fields"),
    ({"grad_depths": [0, 3]}, "grad_depths"),
    ({"seeds": []}, "seeds"),
    ({"grad_batches": 0}, "grad_batches"),
    ({"colour": 1}, "unknown"),
])
def test_probe_settings_reject_bad_values(bad, message):
    from models.config import ConfigError
    from workflows.bench.probes import ProbeSettings

    ProbeSettings.from_dict({})  # the defaults are valid
    with pytest.raises(ConfigError, match=message):
        ProbeSettings.from_dict(bad)


# ------------------------------------------------------------------------------------------------
# power: minimum detectable effect and seeds to decide, against a simulation
def _decided(effect, sigma, n, draws, rng, threshold=0.0):
    """Share of draws whose 95% t interval over n normal paired differences lies wholly below ``threshold``."""
    from workflows.analysis import stats as st

    x = rng.normal(effect, sigma, (draws, n))
    hits = 0
    for row in x:
        _, lo, hi = st.mean_ci(row)
        hits += hi < threshold
    return hits / draws


@pytest.mark.parametrize("n", [3, 4, 8])
def test_mde_is_detected_with_80_percent_power_by_simulation(n):
    rng = np.random.default_rng(n)
    mde = claims.mde(0.05, n)
    got = _decided(-mde, 0.05, n, 3000, rng)
    assert 0.77 <= got <= 0.83, (n, mde, got)


@pytest.mark.parametrize("distance, sigma", [(0.01, 0.01), (0.02, 0.05), (0.05, 0.05)])
def test_seeds_needed_reach_80_percent_power_and_one_fewer_does_not(distance, sigma):
    rng = np.random.default_rng(7)
    n = int(claims.seeds_for(distance, sigma))
    assert _decided(-distance, sigma, n, 3000, rng) >= 0.77
    if n > 2:
        assert _decided(-distance, sigma, n - 1, 3000, rng) <= 0.83
    assert claims.seeds_for(0.0, sigma) == math.inf and claims.seeds_for(1.0, 0.0) == 2


def test_power_columns_in_the_scorecard():
    c = {"kind": "loss_delta", "treatment": "t", "control": "c", "interval": ["-margin", "margin"], "margin": 0.02}
    near = {0.01: [2.012 + d for d in (0.01, -0.01, 0.012, -0.012)]}
    row = check_rows(c, arm("t", near) + arm("c", {0.01: [2.0] * 4})).iloc[0]
    assert row.verdict == "inconclusive" and np.isfinite(row.mde) and row.mde > 0
    assert row.seeds_needed > 4 and "as holds" in row.to_decide
    outside = {0.01: [2.05 + d for d in (0.03, -0.03, 0.035, -0.035)]}
    row = check_rows(c, arm("t", outside) + arm("c", {0.01: [2.0] * 4})).iloc[0]
    assert row.decides_as == "contradicted" and "out of reach" in row.to_decide
    det = {"kind": "metric_ratio", "metric": "params", "at": "each", "treatment": "t", "control": "c",
           "interval": [0.98, 1.02], "deterministic": True, "min_seeds": 1}
    assert check_rows(det, arm("t", flat(2.0, n=1)) + arm("c", flat(2.0, n=1))).iloc[0].mde == 0


# ------------------------------------------------------------------------------------------------
# degenerate arms are not judged
def test_a_run_arm_stuck_at_l0_is_not_judged():
    dead = arm("t", {0.01: [L0 - 0.001 * i for i in range(4)]})
    row = check_rows(BELOW0 | {"direction": "above"}, dead + arm("c", flat(2.0, n=4))).iloc[0]
    assert row.verdict == "not judged" and "learned nothing" in row.reason


def test_a_probe_arm_whose_gradients_underflow_is_not_judged():
    rows = []
    for depth, g in ((3, 0.1), (6, 1e-13)):
        for seed in range(3):
            for layer in range(depth):
                rows.append(("p", "a", seed, depth, layer, "grad_block", g, 100, 10))
            rows.append(("p", "a", seed, depth, -1, "ratio_block", 1.2 + 0.01 * seed, 100, 10))
    tab = pd.DataFrame(rows, columns=["probe", "arm", "seed", "depth", "layer", "metric", "value", "params", "tokens"])
    check = {"kind": "probe", "probe": "p", "arm": "a", "metric": "ratio_block", "by": "depth", "direction": "above",
             "threshold": 1.0}
    got = check_rows(check, probes={"p": tab}).set_index("group")
    assert got.loc["L=3", "verdict"] == "holds"
    assert got.loc["L=6", "verdict"] == "not judged" and "below 1e-08" in got.loc["L=6", "reason"]


# ------------------------------------------------------------------------------------------------
# the registry as committed: audited against its sources
def test_every_claim_quotes_its_source_and_every_bound_has_a_reason(registry):
    raw = yaml.safe_load((ROOT / "config" / "claims.yaml").read_text())
    assert "sigmas" not in (ROOT / "config" / "claims.yaml").read_text().split("claims:\n", 1)[1]
    for cl in raw["claims"]:
        assert cl["source"].get("quote"), cl["id"]
        for c in cl["checks"]:
            assert c.get("rationale"), (cl["id"], c["id"])
            assert not isinstance(c.get("margin"), dict), (cl["id"], c["id"])
    c16 = next(c for c in registry["claims"] if c["id"] == "C16")
    assert "vanish" not in c16["title"] and "healthy norms" in c16["source"]["quote"]
    assert all(c.get("arm") != "no_residual" for c in c16["checks"])  # the degenerate arm is gone
    c19 = next(c for c in registry["claims"] if c["id"] == "C19")
    assert "lecture" in c19["source"]["paper"].lower()
