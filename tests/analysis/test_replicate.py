"""workflows.analysis.replicate: two small scorecards compared check by check."""
from __future__ import annotations

import json

import pandas as pd

from workflows.analysis import replicate


def scorecard(path, rows, seeds):
    path.mkdir(parents=True)
    cols = ["claim", "check", "group", "what", "kind", "unit", "rule", "verdict", "effect", "ci_low", "ci_high", "n"]
    pd.DataFrame([dict(zip(cols, r)) for r in rows]).to_csv(path / "claims.csv", index=False)
    (path / "grid.json").write_text(json.dumps({"seeds": seeds, "seed_offset": seeds[0]}))


def test_replicate_classifies_every_outcome(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    row = lambda check, verdict, e, lo, hi, kind="loss_delta", group="": (  # noqa: E731
        check.split(".")[0], check, group, "w", kind, "nats", "< 0", verdict, e, lo, hi, 4)
    scorecard(a, [row("C1.a", "holds", -0.1, -0.2, -0.05), row("C2.a", "holds", -0.1, -0.2, -0.05),
                  row("C3.a", "inconclusive", 0.0, -0.1, 0.1), row("C4.a", "holds", -0.1, -0.2, -0.01),
                  row("C5.a", "not run", float("nan"), float("nan"), float("nan")),
                  row("C6.a", "holds", 1.2, 1.1, 1.3, "probe", "L=3"), row("L2.a", "holds", 0.1, 0.05, 0.2, "probe_delta"),
                  row("C7s.a", "contradicted", 1.1, 1.05, 1.2, "speed_ratio")], [0, 1, 2, 3])
    scorecard(b, [row("C1.a", "holds", -0.12, -0.2, -0.04), row("C2.a", "contradicted", 0.1, 0.05, 0.2),
                  row("C3.a", "inconclusive", 0.01, -0.1, 0.1), row("C4.a", "inconclusive", -0.05, -0.2, 0.1),
                  row("C5.a", "not run", float("nan"), float("nan"), float("nan")),
                  row("C6.a", "holds", 1.25, 1.1, 1.4, "probe", "L=3"), row("L2.a", "holds", 0.1, 0.05, 0.2, "probe_delta"),
                  row("C7s.a", "contradicted", 1.1, 1.04, 1.3, "speed_ratio")], [1000, 1001, 1002, 1003])
    assert replicate.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    df = pd.read_csv(tmp_path / "out" / "replication.csv", keep_default_na=False, na_values=[""]).set_index("check")
    assert df.outcome.to_dict() == {"C1.a": "replicated", "C2.a": "conflict", "C3.a": "undecided",
                                    "C4.a": "decided once", "C5.a": "not run", "C6.a": "replicated",
                                    "L2.a": "replicated", "C7s.a": "replicated"}
    assert bool(df.loc["C1.a", "cis_overlap"]) and not bool(df.loc["C2.a", "cis_overlap"])
    assert df.loc["C6.a", "group"] == "L=3"
    md = (tmp_path / "out" / "replication.md").read_text()
    assert "seeds [1000, 1001, 1002, 1003] (seed_offset 1000)" in md
    assert ("Training-run checks (the grid's trained runs; not the probes or the speed bench): 3 decided in A, 2 in "
            "B, 1 replicated, 1 in conflict.") in md
    assert "Speed-bench checks: 1 decided in A, 1 in B, 1 replicated, 0 in conflict." in md  # probes: in neither


def test_the_report_names_every_seed_the_arms_trained(tmp_path):
    # catches: the grid's top-level seeds reported as the run's when arms name more of their own (the default grid:
    # 6 for most arms, 9 for the z-loss pair), and the LR pilot's seeds left out
    (tmp_path / "grid.json").write_text(json.dumps({
        "seeds": [1050, 1051], "seed_offset": 1000, "pilot_seeds": [1200, 1201],
        "variants": {"baseline": {"seeds": [1050, 1051]}, "bias": {}, "stress_z_loss": {"seeds": [1050, 1051, 1052]}}}))
    assert replicate._seeds(tmp_path) == ("seeds [1050, 1051, 1052], 2–3 per variant (seed_offset 1000); "
                                          "pilot seeds [1200, 1201]")
    (tmp_path / "grid.json").write_text(json.dumps({"seeds": [0, 1], "variants": {"baseline": {}, "bias": {}}}))
    assert replicate._seeds(tmp_path) == "seeds [0, 1]"


def test_replicate_reports_a_missing_scorecard(tmp_path, capsys):
    assert replicate.main([str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    assert "claims.csv does not exist" in capsys.readouterr().err


def test_a_check_in_one_scorecard_only_counts_as_not_run_in_the_other(tmp_path):
    a = pd.DataFrame([{"check": "C1.a", "group": "", "claim": "C1", "what": "w", "kind": "k", "unit": "", "rule": "",
                       "verdict": "holds", "effect": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n": 3}])
    df = replicate.compare(a, a.iloc[:0])
    assert df.verdict_b.iloc[0] == "not run" and df.outcome.iloc[0] == "decided once"
