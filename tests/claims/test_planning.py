"""The power plan (workflows.claims.planning): at the seed count a scorecard measured, the planned p of each primary
check is the scorecard's own decision p; more seeds lower it; an effect on a bound cannot be planned into a
decision; Holm's count matches statsmodels on the plan's p-values; the committed 4-seed reference gives the
table config/config.yaml's header states."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from workflows.claims import planning as power
from workflows.claims.registry import load_registry
from workflows.claims.verdict import decision_p, judge, sigma_from_ci

REPO = Path(__file__).resolve().parents[2]
FOUR_SEEDS = REPO / "results" / "reference" / "cpu-default" / "2026-12-05-4-seeds"


@pytest.fixture(scope="module")
def registry():
    return load_registry(REPO / "config" / "claims.yaml")


def check(reg, cid):
    return next(c for cl in reg["claims"] for c in cl["checks"] if c["full_id"] == cid)


def test_planned_p_at_the_measured_n_is_the_scorecards_decision_p(registry):
    """Re-planning a measured check at its own n, effect and sd gives back the p its scorecard computed."""
    df = pd.read_csv(FOUR_SEEDS / "claims.csv")
    compared = 0
    for r in df[df.primary & df.p_decision.notna()].itertuples():
        c = check(registry, r.check)
        sd = sigma_from_ci(r.ci_low, r.ci_high, int(r.n))
        assert power.planned_p(r.effect, sd, int(r.n), c) == pytest.approx(r.p_decision, rel=1e-6), r.check
        compared += 1
    assert compared >= 3  # C6.a, C6.b, C9.a, C15.a decided unadjusted in that reference


def test_planned_p_falls_with_seeds_and_an_effect_on_its_bound_stays_undecidable(registry):
    c = check(registry, "C3.a")  # holds in [-0.02, 0.02]
    ps = [power.planned_p(0.0, 0.012, n, c) for n in (3, 4, 6, 8, 12)]
    assert all(a > b for a, b in zip(ps, ps[1:])), ps
    on_bound = [power.planned_p(0.02, 0.012, n, c) for n in (4, 8, 64)]
    assert min(on_bound) > 0.9, on_bound
    # what the planned p means: a t interval over n seeds centred on the effect clears the margin exactly when
    # the planned p is below 0.05
    for n, sd in ((4, 0.004), (4, 0.012), (8, 0.012), (6, 0.02)):
        half = sp.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        verdict, _ = judge(0.005, 0.005 - half, 0.005 + half, c)
        assert (verdict == "holds") == (power.planned_p(0.005, sd, n, c) < 0.05), (n, sd)


def test_planned_p_is_the_decision_p_of_the_interval_it_implies(registry):
    c = check(registry, "C6.b")  # SwiGLU - ReLU < 0
    n, e, sd = 6, -0.05, 0.03
    half = sp.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert power.planned_p(e, sd, n, c) == pytest.approx(decision_p(e, e - half, e + half, n, c, "holds"))
    # an effect on the wrong side plans a contradiction
    assert power.planned_p(+0.05, sd, n, c) == pytest.approx(
        decision_p(0.05, 0.05 - half, 0.05 + half, n, c, "contradicted"))
    assert math.isnan(power.planned_p(e, sd, 1, c)) and math.isnan(power.planned_p(math.nan, sd, 6, c))


def test_plan_pools_scorecards_and_counts_holm_decisions(registry):
    a = pd.read_csv(FOUR_SEEDS / "claims.csv")
    b = pd.read_csv(FOUR_SEEDS / "replicate" / "claims.csv")
    df, decided = power.plan([a, b], REPO / "config" / "claims.yaml", [4, 6, 8])
    assert set(df.check) == {"C3.a", "C6.a", "C6.b", "C7.a", "C8.a", "C9.a", "C10.a", "C10.b", "C13.b", "C15.a"}
    row = df.set_index("check").loc["C6.b"]
    ra, rb = (x[x.check == "C6.b"].iloc[0] for x in (a, b))
    assert row.effect == pytest.approx((ra.effect + rb.effect) / 2)
    assert row.sd == pytest.approx(math.sqrt((sigma_from_ci(ra.ci_low, ra.ci_high, 4) ** 2
                                              + sigma_from_ci(rb.ci_low, rb.ci_high, 4) ** 2) / 2))
    for n in (4, 6, 8):  # Holm by hand: the k-th smallest p against alpha / (m - k + 1), stopping at the first miss
        p = np.sort(df[f"p_n{n}"].fillna(1.0).to_numpy())
        m, k = len(p), 0
        while k < m and p[k] <= 0.05 / (m - k):
            k += 1
        assert decided[n] == k
    # the numbers config/config.yaml's header states for this data: 2, 6 and 7 of the ten
    assert decided == {4: 2, 6: 6, 8: 7}
    assert df.check.iloc[-1] == "C7.a"  # its effect sits on its margin: last at every n


def test_cli_writes_the_table_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "plan.md"
    assert power.main([str(FOUR_SEEDS), str(FOUR_SEEDS / "replicate"), "--seeds", "4", "6",
                       "--registry", str(REPO / "config" / "claims.yaml"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| C6.b |" in text and "2 of 10 with 4 seeds, 6 of 10 with 6 seeds" in text
    with pytest.raises(SystemExit):
        power.main([str(FOUR_SEEDS), "--seeds", "1"])
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        power.main([str(tmp_path / "nowhere")])
    assert "claims.csv does not exist" in capsys.readouterr().err


def test_the_7_seed_reference_gives_the_third_table_of_the_config_header():
    # catches: the header's third analysis (the one that moved the mha arm out of the default grid) drifting from
    # what the committed 7-seed reference gives: C10.b alone cannot be decided at 7-9 seeds, the other seven can
    seven = REPO / "results" / "reference" / "cpu-default" / "2026-12-05-7-seeds"
    a, b = (pd.read_csv(d / "claims.csv") for d in (seven, seven / "replicate"))
    df, decided = power.plan([a, b], REPO / "config" / "claims.yaml", [7, 8, 9])
    assert decided == {7: 7, 8: 7, 9: 7}
    df = df.set_index("check")
    assert df.index[-1] == "C10.b" and df.loc["C10.b", "p_n9"] > 0.05
    assert df.loc["C10.b", "effect"] == pytest.approx(0.017, abs=5e-4)
    assert df.loc["C10.b", "sd"] == pytest.approx(0.025, abs=5e-4)
    assert (df.drop("C10.b")[["p_n7", "p_n8", "p_n9"]] < 0.05).all().all()
    header = (REPO / "config" / "config.yaml").read_text()
    assert "#   C10.b  GQA - MHA               +0.017   0.025      0.23     0.19     0.16" in header


# ------------------------------------------------------------------------------------------------
# --simulate: the whole decision (Holm and the still-moving rule), by simulation
# ------------------------------------------------------------------------------------------------
CURRENT = REPO / "results" / "reference" / "cpu-default" / "2026-12-05-7-seeds-2-pilot"
REGISTRY = REPO / "config" / "claims.yaml"


def test_holm_reject_matches_statsmodels_column_by_column():
    # catches: a step-down that does not stop at the first non-rejection, a step-up, or the wrong divisors
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.06, size=(7, 500)) ** rng.uniform(0.5, 3, size=(7, 500))
    p[:, :5] = [[0.001], [0.04], [0.0071], [0.0084], [0.01], [0.0125], [0.5]]  # ties against alpha/(m-i) edges
    got = power.holm_reject(p)
    want = np.array([multipletests(p[:, i], alpha=0.05, method="holm")[0] for i in range(p.shape[1])]).T
    assert (got == want).all() and 0 < got.mean() < 1


def folder(effects: dict, sd: float, n: int, rng) -> dict:
    """seed_deltas-like frames: {check: seed x [late steps..., final]} around the given mean vectors."""
    out = {}
    for cid, mean in effects.items():
        cols = [*range(60, 60 + 10 * (len(mean) - 1), 10), "final"]
        out[cid] = pd.DataFrame(np.asarray(mean) + rng.normal(0, sd, size=(n, len(mean))), columns=cols)
    return out


def test_simulate_counts_a_check_only_when_decided_and_not_still_moving():
    # catches: the final interval alone counted (a check whose effect crosses its bound in the last third is
    # "still moving" in the scorecard, never decided); Holm left out; pairs not taken per check
    rng = np.random.default_rng(0)
    effects = {"C9.a": [-0.03] * 4,  # parallel - serial <= 0.05: far inside, flat
               "C6.a": [0.02, 0.0, -0.02, -0.05],  # SwiGLU - GELU < 0: crosses 0 in the last third
               "C8.a": [0.0] * 4}  # bias - no bias in [-0.02, 0.02]: at the centre
    folders = [folder(effects, 0.01, 8, rng) for _ in range(2)]
    df, counts = power.simulate(folders, REGISTRY, {"C9.a": 6, "C6.a": 6, "C8.a": 3}, draws=600)
    t = df.set_index("check")
    assert t.p_stable["C9.a"] > 0.97 and t.p_final["C6.a"] > 0.9 and t.p_stable["C6.a"] < 0.1
    assert t.p_stable["C8.a"] < t.p_final["C8.a"]  # 3 pairs: the late steps often leave the margin
    assert t.pairs.to_dict() == {"C6.a": 6, "C8.a": 3, "C9.a": 6} and len(counts) == 600 and counts.max() <= 3
    more, _ = power.simulate(folders, REGISTRY, {"C9.a": 6, "C6.a": 6, "C8.a": 12}, draws=600)
    assert more.set_index("check").p_stable["C8.a"] > t.p_stable["C8.a"] + 0.2


def test_seed_deltas_pair_seeds_as_the_scorecard_does(registry):
    # catches: pairs built by row order, or at other LRs than the ones the scorecard compares: the final column's
    # mean must be the committed scorecard's effect, and the late steps those of its still-moving rule
    d = power.seed_deltas(CURRENT, registry)
    claims = pd.read_csv(CURRENT / "claims.csv").set_index("check")
    assert {"C6.a", "C8.a", "C13.b"} <= set(d)
    for cid, frame in d.items():
        assert list(frame.columns) == [630, 720, 810, "final"], cid
        assert frame["final"].mean() == pytest.approx(claims.effect[cid], abs=1e-12), cid
        assert len(frame) == claims.n[cid]


def test_grid_pairs_count_the_seeds_both_arms_share(tmp_path):
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["seeds"] = [1, 2, 3, 4, 5, 6, 7]  # the baseline's (no seeds of its own)
    arms = {"bias": [1, 2, 3, 4, 5, 6, 7, 8, 9], "stress_baseline": [1, 2, 3, 4, 5, 6],
            "stress_z_loss": [2, 3, 4, 5, 6, 7, 8], "stress_softcap": [1, 2, 3, 4]}
    for v, seeds in arms.items():
        cfg["variants"][v] = {**cfg["variants"][v], "seeds": seeds}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(cfg))
    pairs = power.grid_pairs(tmp_path / "g.yaml", REGISTRY)
    assert pairs["C8.a"] == 7 and pairs["C15.a"] == 4 and pairs["C13.b"] == 5 and "C3.a" not in pairs


@pytest.mark.slow
def test_the_committed_references_give_the_fifth_table_of_the_config_header():
    # catches: the header's fifth analysis (the seeds per arm) drifting from what the committed references and the
    # config's own seeds give, e.g. after an arm's seeds change without re-planning
    d = REPO / "results" / "reference" / "cpu-default"
    folders = [power.seed_deltas(f, load_registry(REGISTRY)) for f in (
        d / "2026-12-05-4-to-9-seeds", d / "2026-12-05-4-to-9-seeds" / "replicate",
        d / "2026-12-05-7-seeds-2-pilot", d / "2026-12-05-7-seeds-2-pilot" / "replicate")]
    uniform, n_uniform = power.simulate(folders, REGISTRY, 7)
    grid, n_grid = power.simulate(folders, REGISTRY, power.grid_pairs(REPO / "config" / "config.yaml", REGISTRY))
    header = (REPO / "config" / "config.yaml").read_text()
    for r, g in zip(uniform.itertuples(), grid.itertuples()):
        assert r.check == g.check
        cells = (f"{r.p_stable:.2f} ({r.p_final:.2f}), {r.pairs} pairs  {g.p_stable:.2f} ({g.p_final:.2f}), "
                 f"{g.pairs} pairs")
        lines = [x for x in header.splitlines() if x.startswith(f"#   {r.check} ") and x.endswith(cells)
                 and f"{r.effect:+.3f}   {r.sd:.3f}" in x]
        assert len(lines) == 1, (r.check, cells)
    assert header.split("share of grids deciding >= 6 of the 7:")[-1].split()[:2] == \
        [f"{np.mean(n_uniform >= 6):.2f}", f"{np.mean(n_grid >= 6):.2f}"]
