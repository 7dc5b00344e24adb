"""The capped score, the LR choice, and the winner's curse: a simulation shows that choosing each variant's LR
on the seeds that then estimate its effect biases the interval, and that cross-fitting does not."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workflows.analysis import aggregate

from workflows.analysis import selection

from workflows.analysis import stats
from workflows.claims import Evidence, evaluate

L0 = math.log(256)


def runs_of(variant, values: dict, diverged=()) -> list[dict]:
    """values: {(seed, lr): final loss}; diverged: keys of runs that diverged."""
    return [{"variant": variant, "seed": s, "lr": lr, "final_val_loss": v, "init_loss": L0,
             "diverged": (s, lr) in diverged} for (s, lr), v in values.items()]


def test_capped_score_counts_diverged_and_non_finite_runs_as_l0():
    r = pd.DataFrame(runs_of("v", {(0, 0.1): 2.0, (1, 0.1): float("nan"), (2, 0.1): float("inf"),
                                   (3, 0.1): 9.0, (4, 0.1): 2.5}, diverged={(4, 0.1)}))
    assert selection.capped_score(r).tolist() == pytest.approx([2.0, L0, L0, L0, L0])


def test_best_lr_ties_go_to_the_smaller_lr_and_seeds_restrict():
    r = pd.DataFrame(runs_of("v", {(0, 0.01): 2.0, (0, 0.1): 2.0, (1, 0.01): 3.0, (1, 0.1): 1.0}))
    assert selection.best_lr(r, seeds=[0]) == 0.01
    assert selection.best_lr(r) == 0.1
    assert math.isnan(selection.best_lr(r.iloc[:0]))


def test_crossfit_gives_each_seed_the_other_folds_choice():
    # seeds 0, 2 (fold A) prefer 0.01; seeds 1, 3 (fold B) prefer 0.1
    vals = {(s, lr): (1.0 if (s % 2 == 0) == (lr == 0.01) else 2.0) for s in range(4) for lr in (0.01, 0.1)}
    lrs = selection.crossfit_lrs(pd.DataFrame(runs_of("v", vals)))
    assert lrs == {0: 0.1, 2: 0.1, 1: 0.01, 3: 0.01}
    assert selection.folds([3, 1, 0, 2]) == [[0, 2], [1, 3]]
    assert selection.crossfit_lrs(pd.DataFrame(runs_of("v", {(0, 0.01): 1.0}))) == {}


def test_shared_mode_uses_the_compare_lr_and_reports_a_missing_one():
    r = pd.DataFrame(runs_of("v", {(0, 0.001): 2.0, (1, 0.001): 2.1, (0, 0.01): 1.0}))
    assert selection.comparison_lrs(r, "shared", 0.001) == {0: 0.001, 1: 0.001}
    assert selection.comparison_lrs(r, "shared", 0.003) == {}
    with pytest.raises(ValueError, match="compare_lr"):
        selection.comparison_lrs(r, "shared", None)
    with pytest.raises(ValueError, match="choose one of"):
        selection.comparison_lrs(r, "median")


def test_one_score_and_one_best_lr_across_aggregate_figures_and_claims():
    """aggregate's per-LR scores and best LR, the claims' LR sensitivity and the figures' capped loss all come from
    selection, and agree on a table with diverged, NaN and inf runs."""
    from workflows.plots import runs as run_figures  # noqa: F401 (loss_vs_lr draws selection.capped_score)

    vals = {}
    rng = np.random.default_rng(0)
    for v in ("baseline", "t"):
        for s in range(4):
            for lr in (0.001, 0.01, 0.1):
                vals[(v, s, lr)] = 2.0 + rng.normal(0, 0.05) + (0.5 if lr == 0.1 else 0.0)
    vals[("t", 0, 0.1)] = float("inf")
    vals[("t", 1, 0.1)] = float("nan")
    rows = []
    for (v, s, lr), x in vals.items():
        rows += runs_of(v, {(s, lr): x}, diverged={(2, 0.1)} if v == "t" else ())
    r = pd.DataFrame(rows).assign(family="f", tokens_per_s=1.0, mfu=0.1, params=1, nonembed_params=1, data_key="k",
                                  steps=10)
    table = aggregate.best_lr_table(r).set_index(["variant", "lr"]).score
    for v in ("baseline", "t"):
        assert table.loc[v].to_numpy() == pytest.approx(selection.lr_scores(r[r.variant == v]).to_numpy())
    grid = {"baseline": "baseline", "order": ["baseline", "t"], "variants": {"baseline": {}, "t": {}}}
    summ = aggregate.summarise(r, grid).set_index("variant")
    for v in ("baseline", "t"):
        assert summ.loc[v, "best_lr"] == selection.best_lr(r[r.variant == v])
    reg = {"claims": [{"id": "CX", "title": "t", "source": {"paper": "p"}, "published": "n", "checks": [
        {"id": "a", "what": "w", "kind": "lr_sensitivity", "treatment": "t", "control": "baseline",
         "direction": "below", "threshold": 0.0}]}]}
    row = evaluate(reg, Evidence(r, {})).iloc[0]
    assert row.effect == pytest.approx(summ.loc["t", "lr_sensitivity"] - summ.loc["baseline", "lr_sensitivity"])
    assert summ.loc["t", "delta_at"].startswith("at each variant's cross-fitted")
    summ_shared = aggregate.summarise(r, {**grid, "compare_lr": 0.001}).set_index("variant")
    assert "0.001" in summ_shared.loc["t", "delta_at"]


# ------------------------------------------------------------------------------------------------
# the winner's curse, simulated
def _coverage(k_t: int, k_c: int, n: int, draws: int, rule: str, seed: int = 1) -> tuple[float, float]:
    """(coverage, mean width) of the 95% interval of Δ when every LR of both arms is tied (no true difference
    anywhere; the truth is Δ = 0): per-seed effects shared by both arms and all LRs (the pairing), run noise iid.
    ``rule``: "oracle" (both arms at their first LR, fixed in advance: a paired t interval, nothing selected),
    "in-sample" (each arm at its best LR over all its seeds, t interval over the paired differences), "crossfit-t"
    (cross-fitted LRs with a plain t interval) or "scorecard" (the loss_delta kind with at: best, as the scorecard
    runs it). The same draws for every rule (``seed``)."""
    from workflows.claims import KINDS, validate_check

    check = validate_check({"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c",
                            "at": "best", "direction": "below", "threshold": 0.0}, "sim", {"min_seeds": 3, "min_lrs": 1})
    rng = np.random.default_rng(seed)
    lrs_t, lrs_c = [10.0 ** -i for i in range(k_t)], [10.0 ** -i for i in range(k_c)]
    hits, widths = 0, []
    for _ in range(draws):
        seed_eff = rng.normal(0, 1.0, n)
        t = pd.DataFrame(runs_of("t", {(s, lr): 2 + seed_eff[s] + rng.normal(0, 0.1) for s in range(n) for lr in lrs_t}))
        c = pd.DataFrame(runs_of("c", {(s, lr): 2 + seed_eff[s] + rng.normal(0, 0.1) for s in range(n) for lr in lrs_c}))
        if rule == "scorecard":
            m = KINDS["loss_delta"].fn(Evidence(pd.concat([t, c], ignore_index=True), {}), check)[0]
            lo, hi = m.lo, m.hi
        else:
            if rule == "oracle":
                lt, lc = {s: lrs_t[0] for s in range(n)}, {s: lrs_c[0] for s in range(n)}
            elif rule == "in-sample":
                lt = {s: selection.best_lr(t) for s in range(n)}
                lc = {s: selection.best_lr(c) for s in range(n)}
            else:
                lt, lc = selection.crossfit_lrs(t), selection.crossfit_lrs(c)
            _, lo, hi, _ = stats.paired_delta(selection.values_at(t, lt, "final_val_loss"),
                                              selection.values_at(c, lc, "final_val_loss"))
        hits += lo <= 0 <= hi
        widths.append(hi - lo)
    return hits / draws, float(np.mean(widths))


@pytest.mark.slow
@pytest.mark.parametrize("k_t, k_c, n", [(6, 3, 4), (3, 3, 3), (6, 3, 8)])
def test_cross_fitted_interval_keeps_coverage_and_stays_near_the_oracle_width(k_t, k_c, n):
    """The scorecard's cross-fitted comparison (at: best) with k tied LRs covers Δ = 0 in ≥ 93% of draws, and its
    interval is at most 1.5x as wide as the oracle's (a paired t interval at LRs fixed in advance). The in-sample
    best-LR rule and cross-fitting with a plain t interval (91-94% in a larger simulation) are printed beside it."""
    draws = 300
    got = {rule: _coverage(k_t, k_c, n, draws, rule) for rule in ("scorecard", "oracle", "in-sample", "crossfit-t")}
    width = got["scorecard"][1] / got["oracle"][1]
    print(f"\n{k_t} vs {k_c} tied LRs, {n} seeds, {draws} draws: coverage at nominal 95% "
          + ", ".join(f"{k} {v[0]:.3f}" for k, v in got.items()) + f"; width / oracle's {width:.2f}")
    assert got["scorecard"][0] >= 0.93
    assert width <= 1.5
    assert got["oracle"][0] >= 0.92  # the reference itself is a valid interval on these draws


def test_shared_lr_comparison_is_exact_under_the_null():
    """At one pre-registered LR nothing is selected: the paired t interval keeps its 95% (a few hundred draws)."""
    from workflows.claims import KINDS, validate_check

    check = validate_check({"id": "a", "what": "w", "kind": "loss_delta", "treatment": "t", "control": "c",
                            "direction": "below", "threshold": 0.0}, "sim", {"min_seeds": 3, "min_lrs": 1})
    rng = np.random.default_rng(3)
    hits, draws = 0, 300
    for _ in range(draws):
        eff = rng.normal(0, 1.0, 4)
        r = pd.DataFrame(runs_of("t", {(s, lr): 2 + eff[s] + rng.normal(0, 0.1) for s in range(4) for lr in (1e-3, 1e-2)})
                         + runs_of("c", {(s, lr): 2 + eff[s] + rng.normal(0, 0.1) for s in range(4) for lr in (1e-3, 3e-3)}))
        m = KINDS["loss_delta"].fn(Evidence(r, {}, compare_lr=1e-3), check)[0]
        hits += m.lo <= 0 <= m.hi
    assert hits / draws >= 0.92
