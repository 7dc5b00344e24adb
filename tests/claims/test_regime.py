"""The evaluation regime of commit 9e4b3cc: the final score on the whole validation split (data.eval_starts,
train.final_eval_windows), the LR pilot (grid.lr_pilot, workflows.analysis.pilot, train.assign_lrs, selection mode
``assigned``), still_improving as a slope against its own noise and the n-gram flag (workflows.analysis.flags), the
pilot-mode summary (aggregate.summarise), and the claims' new machinery (the assigned LR, the trigram guard,
``engaged:``, the registry's new keys, divergence_delta over matched LRs, decision_p, 'still moving' and Holm).

Every test states the bug it catches. Tiny configs and local corpora only (tests/conftest.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as st

from models import ConfigError
from workflows.analysis import aggregate
from workflows.analysis import flags
from workflows.analysis import pilot
from workflows.analysis import selection
from workflows.analysis import stats
from workflows.data import corpus as D
from workflows.train import loop as T
from workflows.claims import Evidence, RegistryError, evaluate, load_registry
from workflows.claims.verdict import DECIDED, decision_p, judge
from workflows.grid.grid import Grid, load_pipeline_config

REPO = Path(__file__).resolve().parents[2]
L0 = math.log(256)


# ================================================================================================
# 1. data.eval_starts / val_windows(tokens, T, None): every non-overlapping window
# ================================================================================================
@pytest.mark.parametrize("n, T_", [(23, 5), (21, 5), (6, 5), (1000, 16), (1001, 16), (17, 16)])
def test_eval_starts_none_is_every_non_overlapping_window(n, T_):
    # catches: overlapping or evenly spaced (linspace) windows for the final score, a dropped last window,
    # or a window reading past the end of the split
    starts = D.eval_starts(n, T_, None)
    whole = max(1, (n - 1) // T_)
    np.testing.assert_array_equal(starts, np.arange(whole) * T_)
    assert starts.dtype == np.int64 and starts[-1] + T_ + 1 <= n


def test_val_windows_none_targets_cover_the_split_once():
    # catches: a target scored twice (overlap) or a gap between windows; the remainder left out is < T
    tokens = np.arange(1003) % 251
    for T_ in (7, 16, 32):
        x, y = D.val_windows(tokens, T_, None)
        pos = (D.eval_starts(len(tokens), T_, None)[:, None] + 1 + np.arange(T_)[None, :]).ravel()
        assert len(set(pos.tolist())) == len(pos) == y.numel()  # each target position once
        np.testing.assert_array_equal(np.sort(pos), np.arange(1, len(pos) + 1))  # contiguous from token 1
        assert len(tokens) - 1 - len(pos) < T_  # what is left out is less than one window
        np.testing.assert_array_equal(y.numpy().ravel(), tokens[np.sort(pos)])
        np.testing.assert_array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())  # inputs shifted by one
    # a number of windows keeps the old evenly spaced set (the learning curve's)
    assert len(D.eval_starts(1003, 16, 8)) == 8 and D.eval_starts(1003, 16, 8)[-1] == 1003 - 16 - 1


# ================================================================================================
# 2. train: the final score, final_eval_windows, assign_lrs
# ================================================================================================
def run_dict(corpus, variant="t", **train):
    return {
        "variant": variant, "seed": 0,
        "data": {"source": str(corpus / "*.txt")},
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "context_length": 16},
        "train": {"steps": 10, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_every": 5, "eval_windows": 8,
                  "log_every": 5, "stats_every": 0, "checkpoint_every": 0, "timing_warmup_steps": 2, **train},
    }


def read(out):
    return json.loads((out / "metrics.json").read_text()), pd.read_parquet(out / "history.parquet")


def spy_final(monkeypatch) -> list:
    """Record every final evaluation's (loss, record) of Job.evaluate."""
    real = T.Job.evaluate
    seen = []

    def evaluate_(self, cfg, final=False):
        loss = real(self, cfg, final)
        if final:
            seen.append((loss, self.eval_batches(cfg, True)["record"]))
        return loss
    monkeypatch.setattr(T.Job, "evaluate", evaluate_)
    return seen


def test_final_val_loss_is_scored_on_the_whole_validation_split(corpus, work, tmp_path, monkeypatch):
    # catches: final_val_loss taken from the learning curve's 8 windows (the old behaviour), final_eval_tokens
    # not the whole split's targets, last_val_loss not the curve's last point
    val = D.prepare(D.DataConfig(source=str(corpus / "*.txt")), work).val
    whole = (len(val) - 1) // 16 * 16
    seen = spy_final(monkeypatch)
    T.train(T.RunConfig.from_dict(run_dict(corpus)), tmp_path / "r", work, threads=1)
    m, h = read(tmp_path / "r")
    assert m["final_eval_tokens"] == whole > 8 * 16
    assert len(seen) == 1 and seen[0][1]["tokens"] == whole and seen[0][1]["windows"] == whole // 16
    assert m["final_val_loss"] == pytest.approx(seen[0][0], rel=0, abs=1e-12)
    curve = h[(h.kind == "val") & (h.metric == "loss")].sort_values("step")
    assert m["last_val_loss"] == curve.value.iloc[-1] and curve.step.iloc[-1] == 10
    assert m["final_val_loss"] != m["last_val_loss"]  # another window set
    assert m["provenance"]["final_eval_batches"]["tokens"] == whole
    assert m["provenance"]["eval_batches"]["windows"] == 8


def test_final_eval_windows_n_uses_n_windows(corpus, work, tmp_path):
    # catches: train.final_eval_windows ignored (the final set must be val_windows(val, T, N)); with N equal to
    # the curve's eval_windows both sets are the same windows, so the final score equals the curve's last point
    T.train(T.RunConfig.from_dict(run_dict(corpus, final_eval_windows=8)), tmp_path / "r8", work, threads=1)
    m, _ = read(tmp_path / "r8")
    assert m["final_eval_tokens"] == 8 * 16
    assert m["final_val_loss"] == m["last_val_loss"]
    T.train(T.RunConfig.from_dict(run_dict(corpus, final_eval_windows=5)), tmp_path / "r5", work, threads=1)
    assert read(tmp_path / "r5")[0]["final_eval_tokens"] == 5 * 16


def test_diverged_run_has_nan_final_loss_and_no_final_evaluation(corpus, work, tmp_path, monkeypatch):
    # catches: a diverged run scored on the final set anyway (a finite final_val_loss for a dead run)
    real_step = T.train_step
    calls = []

    def poisoned(*a, **k):
        r = real_step(*a, **k)
        calls.append(1)
        return r._replace(loss=T.torch.tensor(float("nan"))) if len(calls) > 3 else r

    monkeypatch.setattr(T, "train_step", poisoned)
    seen = spy_final(monkeypatch)
    T.train(T.RunConfig.from_dict(run_dict(corpus)), tmp_path / "d", work, threads=1)
    m, _ = read(tmp_path / "d")
    assert m["diverged"] and m["final_val_loss"] is None and m["final_eval_tokens"] == 0 and not seen


@pytest.mark.parametrize("bad", [0, -3])
def test_final_eval_windows_below_one_is_rejected_naming_the_field(corpus, bad):
    # catches: a non-positive window count accepted (an empty final set: NaN or ZeroDivision at the end of a run)
    with pytest.raises(ConfigError, match="train.final_eval_windows"):
        T.RunConfig.from_dict(run_dict(corpus, final_eval_windows=bad))
    assert T.RunConfig.from_dict(run_dict(corpus, final_eval_windows=None)).train.final_eval_windows is None


def test_assign_lrs_replaces_the_lr_by_variant(corpus):
    # catches: every run getting one LR, the config's LR kept, other fields changed, a missing variant passed
    cfgs = [T.RunConfig.from_dict({**run_dict(corpus, variant=v), "seed": s}) for v in ("a", "b") for s in (0, 1)]
    out = T.assign_lrs(cfgs, {"variants": {"a": {"lr": 0.01}, "b": {"lr": 0.1}, "c": {"lr": 1.0}}})
    assert [(c.variant, c.seed, c.train.lr) for c in out] == [("a", 0, 0.01), ("a", 1, 0.01), ("b", 0, 0.1),
                                                              ("b", 1, 0.1)]
    assert all(o.train.steps == c.train.steps and o.model == c.model for o, c in zip(out, cfgs))
    assert cfgs[0].train.lr == 3e-3  # the inputs are not modified
    with pytest.raises(ConfigError, match="no LR for variant 'b'.*'a'"):
        T.assign_lrs(cfgs, {"variants": {"a": {"lr": 0.01}}})
    with pytest.raises(ConfigError, match="'b'"):
        T.assign_lrs(cfgs, {"variants": {"a": {"lr": 0.01}, "b": {"lr": None}}})


def test_cli_assigned_lrs_missing_variant_exits_2(corpus, tmp_path, capsys):
    # catches: --assigned-lrs read but not checked, or its error raised instead of reported (exit 2)
    (tmp_path / "a.json").write_text(json.dumps({"variants": {"other": {"lr": 0.01}}}))
    rc = T.main(["--json", json.dumps([run_dict(corpus)]), "--out", str(tmp_path / "o"),
                 "--assigned-lrs", str(tmp_path / "a.json")])
    assert rc == 2 and "no LR for variant 't'" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ================================================================================================
# 3. grid: lr_pilot
# ================================================================================================
PG = {
    "seeds": [0, 1], "lrs": [0.01, 0.03, 0.1], "baseline": "baseline",
    "data": {"source": "shakespeare", "tokenizer": "bytes"},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 32},
    "train": {"steps": 10},
    "lr_pilot": {"seeds": [100, 101]},
    "variants": {"baseline": {"family": "baseline"}, "fixed": {"lrs": [0.05]},
                 "same": {"family": "copy"}, "own_seeds": {"seeds": [5]}},
}


def test_pilot_job_runs_are_pilot_seeds_times_candidate_lrs():
    # catches: pilot runs on the evaluation seeds, a missing (seed, LR), pilot runs for a single-LR variant
    g = Grid.from_config(PG)
    runs = g.pilot_job_runs("baseline")
    assert [(d["seed"], d["train"]["lr"]) for d in runs] == [(s, lr) for s in (100, 101) for lr in (0.01, 0.03, 0.1)]
    assert all(d["variant"] == "baseline" for d in runs)
    assert g.pilot_job_runs("fixed") == [] and g.pilot_variants() == ["baseline", "same", "own_seeds"]
    assert g.summary()["dedup"]["pilot"] == 18
    # no pilot: no pilot runs
    assert Grid.from_config({k: v for k, v in PG.items() if k != "lr_pilot"}).pilot_job_runs("baseline") == []


def test_pilot_evaluation_runs_have_no_lr_and_are_not_shared():
    # catches: evaluation jobs training every LR again, run sharing between identical variants whose assigned
    # LRs may differ (baseline and its copy 'same' are identical configs)
    g = Grid.from_config(PG)
    assert g.variant_runs("baseline") == [(0, None), (1, None)] and g.variant_runs("own_seeds") == [(5, None)]
    assert g.owner("same", 0, None) == ("same", 0, None) and not g.is_alias("same", 0, None)
    jr = g.job_runs("same")
    assert [d["seed"] for d in jr] == [0, 1] and all(d["train"]["lr"] == 0.01 for d in jr)  # placeholder
    d = g.dedup()
    assert d["aliases"] == 0 and d["trained"] == d["named"] == 7
    # the same grid without a pilot shares 'same' with baseline
    plain = Grid.from_config({k: v for k, v in PG.items() if k != "lr_pilot"})
    assert plain.is_alias("same", 0, 0.01)
    # scheduling: each job's priority is its own runs' steps (the evaluation job's did count its pilot's, which
    # ran the default's small stress jobs last and left a core idle at the end of the grid)
    assert g.job_steps("baseline") == 10 * 2 and g.pilot_steps("baseline") == 10 * 6
    assert g.job_steps("own_seeds") == 10 and g.pilot_steps("fixed") == 0  # one seed; one LR: no pilot job


def test_only_piloted_variants_wait_for_the_lr_assignment(tmp_path):
    # catches: a variant with one candidate LR (the default's stress trio) waiting for a pilot it does not have,
    # which starts it after every pilot and leaves no small job to fill the cores at the end of the grid; or the
    # reverse, a piloted variant that trains before (or without) its assigned LR
    from tests.grid.test_seed_offset import dry_run  # the Snakefile's dry run with -p, outputs under tmp_path

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("results", "figures", "logs", "work")}
    rc, out = dry_run(tmp_path, cfg)
    assert rc == 0, out[-3000:]
    g = Grid.from_config(load_pipeline_config(tmp_path / "g.yaml"))
    piloted = set(g.pilot_variants())
    assert piloted and set(g.trained_variants()) - piloted  # both kinds are in the default grid
    jobs = [line for line in out.splitlines()  # the evaluation jobs (the pilot's log under logs/pilot/)
            if "-m workflows.train --json" in line and f"{tmp_path / 'logs' / 'train'}/" in line]
    assert len(jobs) == len(g.trained_variants())
    for line in jobs:
        variant = json.loads(line.split("--json '", 1)[1].split("'", 1)[0])[0]["variant"]
        assert ("--assigned-lrs" in line) == (variant in piloted), (variant, line[-300:])
    # and the assignment they wait on runs at the pilot's priority, before any train job or probe that is ready
    # (in a measured grid it queued 8 minutes behind the stress jobs and the probes at the default priority 0)
    priorities, rule = {}, None  # rule -> the highest priority of its jobs (a job without a priority line: 0)
    for line in out.splitlines():
        words = line.split()
        if words[:1] in (["rule"], ["localrule"]):
            rule = words[1].rstrip(":")
            priorities.setdefault(rule, 0)
        elif rule and words[:1] == ["priority:"]:
            priorities[rule] = max(priorities[rule], int(words[1]))
    assert {"assign_lrs", "train", "probe"} <= set(priorities), priorities
    assert priorities["assign_lrs"] > max(priorities["train"], priorities["probe"]), priorities


def test_pilot_seeds_overlapping_evaluation_seeds_are_rejected():
    # catches: choosing the LR on seeds that then estimate the effect (the winner's curse the pilot exists to avoid)
    with pytest.raises(ConfigError, match=r"lr_pilot.seeds \[1, 5\] share seed\(s\) \[5\] with variant 'own_seeds'"):
        Grid.from_config({**PG, "lr_pilot": {"seeds": [1, 5]}, "seeds": [0, 2]})
    with pytest.raises(ConfigError, match=r"share seed\(s\) \[1\] with variant 'baseline'"):
        Grid.from_config({**PG, "lr_pilot": {"seeds": [1, 7]}})


@pytest.mark.parametrize("bad", [[100], {}, {"seeds": []}, {"seeds": [100], "lr": 0.1}, "100"])
def test_malformed_lr_pilot_is_rejected(bad):
    # catches: a pilot without seeds (no LR would ever be chosen) or a misspelt key silently ignored
    with pytest.raises(ConfigError, match="lr_pilot"):
        Grid.from_config({**PG, "lr_pilot": bad})


def test_compare_lr_and_lr_pilot_exclude_each_other():
    # catches: two LR protocols at once (which LR would the claims compare at?)
    with pytest.raises(ConfigError, match="compare_lr and lr_pilot"):
        Grid.from_config({**PG, "compare_lr": 0.01})


def test_schema_checks_lr_pilot(tmp_path):
    # catches: the schema letting an lr_pilot without seeds or with unknown keys through to the Snakefile
    import yaml

    for bad in ({"seedz": [1]}, {"seeds": []}, {"seeds": [100], "extra": 1}):
        p = tmp_path / "g.yaml"
        p.write_text(yaml.safe_dump({**PG, "lr_pilot": bad}))
        with pytest.raises(Exception):
            load_pipeline_config(p)
    p.write_text(yaml.safe_dump(PG))
    assert load_pipeline_config(p)["lr_pilot"] == {"seeds": [100, 101]}


def test_seed_offset_shifts_pilot_seeds_and_summary_records_the_protocol():
    # catches: pilot seeds not shifted by seed_offset (a replication would re-use the original pilot seeds)
    g = Grid.from_config({**PG, "seed_offset": 1000})
    assert g.pilot_seeds == [1100, 1101]
    assert {d["seed"] for d in g.pilot_job_runs("baseline")} == {1100, 1101}
    s = g.summary()
    assert s["lr_protocol"] == "pilot" and s["pilot_seeds"] == [1100, 1101]
    json.dumps(s)
    no_pilot = {k: v for k, v in PG.items() if k != "lr_pilot"}
    assert Grid.from_config(no_pilot).summary()["lr_protocol"] == "crossfit"
    assert Grid.from_config(no_pilot).summary()["pilot_seeds"] == []
    assert Grid.from_config({**no_pilot, "compare_lr": 0.01}).summary()["lr_protocol"] == "shared"


# ================================================================================================
# 4. workflows.analysis.pilot
# ================================================================================================
def pilot_runs(variant, losses: dict) -> list[dict]:
    """losses: {lr: [final loss per pilot seed, None = diverged]}"""
    return [{"variant": variant, "seed": 100 + i, "lr": lr, "final_val_loss": math.nan if v is None else v,
             "init_loss": L0, "diverged": v is None} for lr, vals in losses.items() for i, v in enumerate(vals)]


def pgrid(cands: dict) -> dict:
    return {"order": list(cands), "variants": {v: {"lrs": lrs} for v, lrs in cands.items()}, "pilot_seeds": [100, 101]}


def test_assign_picks_the_lowest_mean_capped_loss():
    # catches: the best single run instead of the mean, a diverged run dropped (its LR would win on the
    # surviving seed) instead of counted as ℓ0
    r = pd.DataFrame(pilot_runs("v", {0.01: [2.5, 2.5], 0.03: [2.4, 2.45], 0.1: [1.0, None]}))
    a = pilot.assign(r, pgrid({"v": [0.01, 0.03, 0.1]}))
    x = a["variants"]["v"]
    assert x["lr"] == 0.03 and x["source"] == "pilot" and x["pilot_runs"] == 6
    assert x["scores"] == {"0.01": 2.5, "0.03": 2.425, "0.1": round((1.0 + L0) / 2, 6)}
    assert a["pilot_seeds"] == [100, 101] and "capped" in a["rule"]
    assert x["at_edge"] is False


def test_assign_ties_go_to_the_smaller_lr():
    # catches: a tie resolved to the larger LR (or by dict order)
    r = pd.DataFrame(pilot_runs("v", {0.1: [2.0, 2.2], 0.01: [2.1, 2.1], 0.03: [2.3, 2.3]}))
    assert pilot.assign(r, pgrid({"v": [0.1, 0.01, 0.03]}))["variants"]["v"]["lr"] == 0.01


def test_assign_single_candidate_is_fixed_and_missing_lr_raises():
    # catches: a single-LR variant expected to have pilot runs; an incomplete pilot (a job that lost an LR)
    # silently choosing among what is left
    r = pd.DataFrame(pilot_runs("v", {0.01: [2.0, 2.0], 0.03: [1.9, 1.9]}))
    a = pilot.assign(r, pgrid({"v": [0.01, 0.03], "f": [0.05]}))
    assert a["variants"]["f"] == {"lr": 0.05, "source": "fixed", "candidates": [0.05], "scores": {},
                                  "at_edge": None, "pilot_runs": 0}
    with pytest.raises(ValueError, match=r"'v' has no pilot run at LR \[0.1\]"):
        pilot.assign(r, pgrid({"v": [0.01, 0.03, 0.1]}))
    with pytest.raises(ValueError, match="'w' has no pilot run"):
        pilot.assign(r, pgrid({"v": [0.01, 0.03], "w": [0.01, 0.03]}))
    a = pilot.assign(pd.DataFrame(), pgrid({"f": [0.05]}))  # no pilot runs at all: fixed LRs only
    assert a["variants"]["f"]["lr"] == 0.05


def test_assign_at_edge_is_undecided_below_three_candidates():
    # catches: at_edge True for 2 candidates (every choice is an edge there), or False at an edge of ≥ 3
    two = pd.DataFrame(pilot_runs("v", {0.01: [2.0, 2.0], 0.03: [1.9, 1.9]}))
    assert pilot.assign(two, pgrid({"v": [0.01, 0.03]}))["variants"]["v"]["at_edge"] is None
    three = {0.01: [2.0, 2.0], 0.03: [1.9, 1.9], 0.1: [1.8, 1.8]}
    assert pilot.assign(pd.DataFrame(pilot_runs("v", three)), pgrid({"v": [0.01, 0.03, 0.1]}))["variants"]["v"]["at_edge"] is True
    three[0.01] = [1.0, 1.0]
    assert pilot.assign(pd.DataFrame(pilot_runs("v", three)), pgrid({"v": [0.01, 0.03, 0.1]}))["variants"]["v"]["at_edge"] is True
    three[0.03] = [0.5, 0.5]
    assert pilot.assign(pd.DataFrame(pilot_runs("v", three)), pgrid({"v": [0.01, 0.03, 0.1]}))["variants"]["v"]["at_edge"] is False


def write_pilot_run(job, row):
    d = job / f"seed{row['seed']}" / f"lr{row['lr']:g}"
    d.mkdir(parents=True)
    metrics = {"variant": row["variant"], "seed": row["seed"], "lr": row["lr"],
               "status": "diverged" if row["diverged"] else "ok", "final_val_loss": row["final_val_loss"],
               "init_loss": L0, "diverged": row["diverged"], "tokens_per_s": 1000.0, "mfu": 0.1, "params": 1000,
               "nonembed_params": 800, "tokens_seen": 51_200, "final_eval_tokens": 4096, "config": {
                   "model": {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2},
                   "train": {"steps": 100, "batch_size": 8, "warmup_steps": 4, "z_loss": 0.0, "weight_decay": 0.1,
                             "grad_clip": 1.0}},
               "provenance": {"device": "test CPU", "dtype": "float32", "threads": 1, "git_commit": "x",
                              "torch": "2", "data_key": "k"}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"step": [0, 100], "kind": ["val", "val"], "metric": ["loss", "loss"], "layer": [-1, -1],
                  "site": ["", ""], "value": [L0, row["final_val_loss"]]}).to_parquet(d / "history.parquet")


def test_pilot_cli_reads_run_folders_and_writes_the_assignment(tmp_path, capsys):
    # catches: the CLI not finding seed*/lr* folders, a wrong stage column, an incomplete pilot written anyway
    grid = pgrid({"v": [0.01, 0.03, 0.1], "f": [0.05]})
    for r in pilot_runs("v", {0.01: [2.5, 2.6], 0.03: [2.2, 2.3], 0.1: [2.4, None]}):
        write_pilot_run(tmp_path / "pilot" / "v", r)
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    out = tmp_path / "res"
    assert pilot.main(["--grid", str(tmp_path / "grid.json"), "--runs", str(tmp_path / "pilot" / "v"),
                       "--out", str(out)]) == 0
    a = json.loads((out / "lr_assignment.json").read_text())
    assert a["variants"]["v"]["lr"] == 0.03 and a["variants"]["f"]["source"] == "fixed"
    runs = pd.read_csv(out / "pilot_runs.csv")
    assert len(runs) == 6 and (runs.stage == "pilot").all() and list(runs.columns[:2]) == ["variant", "stage"]
    assert "v: LR 0.03 (pilot" in capsys.readouterr().out
    grid["variants"]["v"]["lrs"].append(0.3)  # a candidate without pilot runs
    (tmp_path / "grid.json").write_text(json.dumps(grid))
    assert pilot.main(["--grid", str(tmp_path / "grid.json"), "--runs", str(tmp_path / "pilot" / "v"),
                       "--out", str(tmp_path / "res2")]) == 2
    assert "incomplete" in capsys.readouterr().err and not (tmp_path / "res2" / "lr_assignment.json").exists()


# ================================================================================================
# 5. selection mode "assigned"
# ================================================================================================
def test_selection_assigned_one_lr_per_seed():
    # catches: 'assigned' not a mode, the wrong LR per seed, two LRs for one seed silently overwritten
    r = pd.DataFrame({"variant": "v", "seed": [2, 0, 1], "lr": [0.03, 0.03, 0.03], "final_val_loss": [1.0, 2.0, 3.0]})
    assert "assigned" in selection.MODES
    assert selection.comparison_lrs(r, "assigned") == {0: 0.03, 1: 0.03, 2: 0.03}
    assert list(selection.comparison_lrs(r, "assigned")) == [0, 1, 2]
    assert selection.values_at(r, selection.comparison_lrs(r, "assigned"), "final_val_loss") == {0: 2.0, 1: 3.0, 2: 1.0}
    two = pd.concat([r, pd.DataFrame({"variant": "v", "seed": [1], "lr": [0.1], "final_val_loss": [0.5]})])
    with pytest.raises(ValueError, match="one LR per seed; seed 1 of 'v' ran 0.03 and 0.1"):
        selection.comparison_lrs(two, "assigned")
    assert "pilot seeds" in selection.describe("assigned")


# ================================================================================================
# 6. flags: improving_slope, still_improving, past_ngram
# ================================================================================================
def val_table(curves: dict) -> pd.DataFrame:
    return pd.DataFrame([(s, step, v) for s, c in curves.items() for step, v in c.items()],
                        columns=["seed", "step", "value"])


def hand_slope(curve: dict, steps: float):
    """(slope per 10% of training, its SE, df) by numpy.polyfit over the evaluations at ≥ 2/3 of training."""
    x = np.array([s for s in curve if s >= 2 * steps / 3], dtype=float)
    y = np.array([curve[s] for s in x])
    (b, a) = np.polyfit(x, y, 1)
    res = y - (a + b * x)
    se = math.sqrt((res ** 2).sum() / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
    return b * 0.1 * steps, se * 0.1 * steps, len(x) - 2


def noisy_curves(seeds, steps, f, sd, rng):
    grid = list(range(0, steps + 1, steps // 10))
    return {s: {t: f(t) + rng.normal(0, sd) for t in grid} for s in seeds}


def test_improving_slope_matches_a_hand_computation():
    # catches: slope not per 10% of training, a window other than the last third, the interval over evaluations
    # instead of over seeds, a z instead of a t quantile
    rng = np.random.default_rng(3)
    c = noisy_curves(range(4), 300, lambda t: 2.4 + 0.2 * (300 - t) / 300, 0.004, rng)
    b, lo, hi, n = flags.improving_slope(val_table(c), 300)
    per = np.array([hand_slope(c[s], 300)[0] for s in range(4)])
    q = st.t.ppf(0.975, 3) * per.std(ddof=1) / 2
    assert n == 4 and b == pytest.approx(per.mean(), abs=1e-12)
    assert (lo, hi) == (pytest.approx(per.mean() - q, abs=1e-12), pytest.approx(per.mean() + q, abs=1e-12))
    assert b == pytest.approx(-0.02, abs=0.01)  # the true slope: 0.2 nats over 300 steps = 0.02 per 10%


def test_improving_slope_one_seed_uses_its_regression_se():
    # catches: a seed-level interval (NaN or zero width) with one seed instead of the OLS slope's own interval
    rng = np.random.default_rng(4)
    c = noisy_curves([7], 300, lambda t: 2.4 + 0.2 * (300 - t) / 300, 0.01, rng)
    b, lo, hi, n = flags.improving_slope(val_table(c), 300)
    hb, se, df = hand_slope(c[7], 300)
    q = st.t.ppf(0.975, df)
    assert n == 1 and b == pytest.approx(hb, abs=1e-12)
    assert lo == pytest.approx(hb - q * se, abs=1e-12) and hi == pytest.approx(hb + q * se, abs=1e-12)


def old_rule(curves: dict, steps: float) -> bool:
    """The replaced rule: over the last 10% the mean loss fell by more than 2% of its drop from ℓ0."""
    s90 = max(s for s in next(iter(curves.values())) if s <= 0.9 * steps)
    before = np.mean([c[s90] for c in curves.values()])
    end = np.mean([c[steps] for c in curves.values()])
    return bool(before - end > 0.02 * (L0 - end))


def test_still_improving_fires_on_a_slow_late_fall_the_old_rule_missed():
    # catches: a return to the old 2%-of-the-drop rule, or a window so short that 0.03 nats over the last 20%
    # with ±0.002 noise is lost in the noise
    rng = np.random.default_rng(0)
    c = noisy_curves(range(3), 300, lambda t: 2.4 + 0.03 * (300 - t) / 60 * (t >= 240) + 0.03 * (t < 240)
                     + 0.3 * (240 - t) / 240 * (t < 240), 0.002, rng)
    assert c[0][240] - c[0][300] == pytest.approx(0.03, abs=0.01)
    assert old_rule(c, 300) is False
    assert flags.still_improving(val_table(c), 300) is True


def test_still_improving_not_on_a_flat_noisy_curve():
    # catches: a rule that fires on noise (e.g. the last point below the first of the window by chance)
    rng = np.random.default_rng(1)
    c = noisy_curves(range(3), 300, lambda t: 2.4 + 0.5 * max(0, 150 - t) / 150, 0.01, rng)
    assert flags.still_improving(val_table(c), 300) is False
    b, lo, hi, _ = flags.improving_slope(val_table(c), 300)
    assert lo < 0 < hi


def test_still_improving_nan_with_fewer_than_three_evaluations_in_the_window():
    # catches: a slope fitted through two points (zero residual df: an infinitely confident interval)
    two = {0: {0: L0, 100: 3.5, 210: 3.1, 300: 3.0}, 1: {0: L0, 100: 3.5, 210: 3.12, 300: 3.01}}
    assert math.isnan(flags.still_improving(val_table(two), 300))
    assert flags.improving_slope(val_table(two), 300)[3] == 0
    three = {0: {0: L0, 100: 3.5, 200: 3.2, 250: 3.1, 300: 3.0}}
    assert not math.isnan(flags.improving_slope(val_table(three), 300)[0])
    no_end = {0: {200: 3.2, 250: 3.1, 290: 3.0}}  # the last evaluation is not at the final step
    assert math.isnan(flags.still_improving(val_table(no_end), 300))


def test_past_ngram():
    # catches: the mean instead of the upper bound compared, a reversed comparison, NaN treated as decided
    assert flags.past_ngram(2.0, 2.1) is True
    assert flags.past_ngram(2.1, 2.0) is False
    assert flags.past_ngram(2.0, 2.0) is False  # not *below*
    assert math.isnan(flags.past_ngram(math.nan, 2.0)) and math.isnan(flags.past_ngram(2.0, math.nan))
    assert flags.FLAGS["not_past_trigram"] == "⊘" and "trigram" in flags.FLAG_RULES["not_past_trigram"]


# ================================================================================================
# 7. aggregate.summarise on a pilot grid
# ================================================================================================
PGRID = {"baseline": "baseline", "order": ["baseline", "a", "fixed"], "lr_protocol": "pilot",
         "variants": {"baseline": {"family": "baseline"}, "a": {"family": "x"}, "fixed": {"family": "y"}}}
ASSIGN = {"variants": {"baseline": {"lr": 0.003, "at_edge": True}, "a": {"lr": 0.01, "at_edge": False},
                       "fixed": {"lr": 0.03, "at_edge": None}}}
NOISE4 = [0.004, -0.003, 0.001, -0.002]


def pilot_eval_runs(finals={"baseline": 2.0, "a": 1.9, "fixed": 2.3}, lrs={"baseline": 0.003, "a": 0.01, "fixed": 0.03}):
    rows = []
    for v, f in finals.items():
        for s in range(4):
            rows.append({"variant": v, "family": PGRID["variants"][v]["family"], "seed": s, "lr": lrs[v],
                         "status": "ok", "diverged": False, "final_val_loss": f + NOISE4[s] * (1 + (v == "a")),
                         "init_loss": L0, "tokens_per_s": 1000.0, "mfu": 0.1, "params": 1000, "nonembed_params": 800,
                         "steps": 100, "final_eval_tokens": 4096})
    return pd.DataFrame(rows)


def test_summarise_pilot_grid():
    # catches: Δ taken by cross-fitting (which needs ≥ 2 LRs) instead of pairing at the assigned LRs,
    # best_lr_at_edge computed from the single LR (always True) instead of the pilot's at_edge,
    # an LR sensitivity reported from one LR, the trigram flag on the mean or ignored
    runs = pilot_eval_runs()
    ngram = {"orders": {"3": {"nats": 2.2, "name": "trigram"}}}
    s = aggregate.summarise(runs, PGRID, ngram=ngram, assignment=ASSIGN).set_index("variant")
    d = [runs.final_val_loss[(runs.variant == "a") & (runs.seed == k)].item()
         - runs.final_val_loss[(runs.variant == "baseline") & (runs.seed == k)].item() for k in range(4)]
    m, lo, hi = stats.mean_ci(d)
    assert (s.loc["a", "delta_vs_baseline"], s.loc["a", "delta_ci_low"], s.loc["a", "delta_ci_high"]) == (
        pytest.approx(m, abs=1e-12), pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert s.loc["a", "delta_pairs"] == 4 and s.delta_at.iloc[0] == selection.describe("assigned")
    assert s.best_lr.to_dict() == {"baseline": 0.003, "a": 0.01, "fixed": 0.03}
    assert s.best_lr_at_edge.iloc[:2].tolist() == [True, False] and pd.isna(s.best_lr_at_edge.iloc[2])
    assert s.lr_sensitivity.isna().all()
    assert s.trigram_ref.tolist() == [2.2] * 3 and s.final_eval_tokens.tolist() == [4096] * 3
    assert s.not_past_trigram.tolist() == [False, False, True]
    assert aggregate.summarise(runs, PGRID, assignment=ASSIGN).not_past_trigram.isna().all()  # no references


def test_summarise_not_past_trigram_uses_the_upper_bound():
    # catches: the flag decided on the mean final loss instead of its 95% upper bound
    runs = pilot_eval_runs()
    hi = aggregate.summarise(runs, PGRID, assignment=ASSIGN).set_index("variant").final_loss_ci_high["baseline"]
    mean = runs[runs.variant == "baseline"].final_val_loss.mean()
    ref = (mean + hi) / 2  # the mean is below it, the upper bound is not
    s = aggregate.summarise(runs, PGRID, ngram={"orders": {"3": {"nats": ref}}}, assignment=ASSIGN)
    assert s.set_index("variant").not_past_trigram["baseline"] == True  # noqa: E712


def test_summarise_all_diverged_variant_is_not_past_the_trigram():
    # catches: a variant that learned nothing shown as past n-gram statistics
    runs = pilot_eval_runs()
    dead = runs.variant == "fixed"
    runs.loc[dead, "diverged"], runs.loc[dead, "final_val_loss"], runs.loc[dead, "status"] = True, math.nan, "diverged"
    s = aggregate.summarise(runs, PGRID, ngram={"orders": {"3": {"nats": 2.2}}}, assignment=ASSIGN)
    x = s.set_index("variant").not_past_trigram["fixed"]
    assert pd.isna(x) or x == True  # noqa: E712


# ================================================================================================
# 8. claims
# ================================================================================================
from test_claims import BASE, NOISE, arm, flat  # noqa: E402  (the claims tests' run-table fixtures)


def registry(*checks) -> dict:
    return {"claims": [{"id": "CX", "title": "t", "source": {"paper": "p"}, "published": "n",
                        "checks": [{"id": chr(ord("a") + i), "what": "w", **c} for i, c in enumerate(checks)]}]}


def rows_of(checks, runs, history=None, **ev) -> pd.DataFrame:
    return evaluate(registry(*checks), Evidence(pd.DataFrame(runs), {}, **ev), history)


BELOW0 = {"kind": "loss_delta", "treatment": "t", "control": "c", "direction": "below", "threshold": 0.0}


def test_lrs_for_pilot_grid_uses_the_assigned_lr():
    # catches: at: shared/best on a pilot grid not mapped to the assigned LR (cross-fitting instead, which
    # re-chooses an LR the pilot already chose and needs two folds of evaluation seeds; or at: shared looking
    # for a compare_lr the pilot grid does not have)
    t, k = arm("t", flat(1.9, lrs=(0.03,))), arm("c", flat(2.0, lrs=(0.01,)))
    ev = Evidence(pd.DataFrame(t + k), {}, lr_protocol="pilot")
    for at in ("shared", "best"):
        lrs, how = ev.lrs_for(pd.DataFrame(t), {"at": at})
        assert lrs == {s: 0.03 for s in range(5)} and how == selection.describe("assigned")
    # at: each too: two arms at different assigned LRs still pair by seed (e.g. a parameter-count ratio)
    assert ev.lrs_for(pd.DataFrame(t), {"at": "each"})[0] == {s: 0.03 for s in range(5)}
    row = rows_of([BELOW0], t + k, lr_protocol="pilot").iloc[0]
    assert row.verdict == "holds" and row.effect == pytest.approx(-0.1) and row.n == 5
    assert "pilot seeds" in row.lr_choice
    # the paired t interval over the seeds (no cross-fitting jackknife, which the same runs get without a pilot)
    t = arm("t", {0.03: [1.9 + NOISE[i] + x for i, x in enumerate((0.01, -0.008, 0.004, -0.006, 0.0))]})
    m, lo, hi = stats.mean_ci([0.01 - 0.1, -0.008 - 0.1, 0.004 - 0.1, -0.006 - 0.1, -0.1])
    row = rows_of([BELOW0], t + k, lr_protocol="pilot").iloc[0]
    assert (row.effect, row.ci_low, row.ci_high) == (pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
    # one evaluation seed: cross-fitting has no other fold to choose on; the assigned LR needs none
    one = pd.DataFrame(t[:1])
    assert ev.lrs_for(one, {"at": "best"})[0] == {0: 0.03}
    assert Evidence(pd.DataFrame(t + k), {}).lrs_for(one, {"at": "best"})[0] == {}


def test_trigram_guard_makes_a_loss_check_not_judged():
    # catches: no guard, or the guard on the mean instead of the arm's 95% upper bound
    t, k = arm("t", flat(1.9)), arm("c", flat(2.0))
    hi_c = stats.mean_ci([2.0 + x for x in NOISE[:5]])[2]
    assert rows_of([BELOW0], t + k, ngram={"orders": {"3": {"nats": 2.5}}}).iloc[0].verdict == "holds"
    for tri in (1.95, 2.0 + (hi_c - 2.0) / 2):  # the control's mean (2.0) is below the second, its bound is not
        row = rows_of([BELOW0], t + k, ngram={"orders": {"3": {"nats": tri}}}).iloc[0]
        assert row.verdict == "not judged" and "not past n-gram statistics: 'c'" in row.reason, tri
    assert rows_of([BELOW0], t + k, ngram={"orders": {"2": {"nats": 9.0}}}).iloc[0].verdict == "holds"


STRESS = {"kind": "loss_delta", "treatment": "t", "control": "c", "at": "each", "direction": "at_most",
          "threshold": 0.03}


def test_engaged_not_judged_when_the_mechanism_never_acted():
    # catches: a stability check judged where its mechanism never engaged (it "costs nothing" by construction),
    # the engagement read on runs the check does not compare, or the wrong arm read
    eng = {"metric": "max_attn_logit", "arm": "control", "above": 50.0, "what": "logits above the cap"}
    t = arm("t", flat(2.0), max_attn_logit=100.0)  # the treatment's logits do not count (arm: control)
    k = arm("c", flat(2.0), max_attn_logit=lambda s, lr: 10.0 + s)
    row = rows_of([{**STRESS, "engaged": eng}], t + k).iloc[0]
    assert row.verdict == "not judged" and "never acted" in row.reason and "max max_attn_logit of c = 14" in row.reason
    k = arm("c", flat(2.0), max_attn_logit=lambda s, lr: 10.0 + 20 * s)  # seed 4: 90 > 50
    row = rows_of([{**STRESS, "engaged": eng}], t + k).iloc[0]
    assert row.verdict == "holds" and row.engagement.startswith("engagement: max max_attn_logit of c = 90")
    assert "logits above the cap" in row.engagement
    # only the compared runs count: at LR 0.1 the control's logits exceed 50, at the compared LR 0.01 they do not
    k = arm("c", flat(2.0, lrs=(0.01, 0.1)), max_attn_logit=lambda s, lr: 90.0 if lr == 0.1 else 5.0)
    row = rows_of([{**STRESS, "at": "shared", "engaged": eng}], t + k, compare_lr=0.01).iloc[0]
    assert row.verdict == "not judged"
    # below + abs: the min |metric| of the treatment must fall below the bound
    eng2 = {"metric": "final_logz_mean", "arm": "treatment", "transform": "abs", "below": 1.0}
    t2 = arm("t", flat(2.0), final_logz_mean=lambda s, lr: -0.5 if s == 2 else 3.0)
    assert rows_of([{**STRESS, "engaged": eng2}], t2 + k[:5]).iloc[0].verdict == "holds"
    t2 = arm("t", flat(2.0), final_logz_mean=-3.0)
    assert rows_of([{**STRESS, "engaged": eng2}], t2 + k[:5]).iloc[0].verdict == "not judged"
    assert rows_of([STRESS], t + k[:5]).iloc[0].engagement == ""  # no engaged: nothing reported


def test_every_training_run_check_on_a_stress_arm_declares_its_engagement():
    # catches: a stability check on the stress-LR arms (C13, C15) scored without saying whether its mechanism
    # acted — then "z-loss lowers log Z" or "soft-capping costs nothing" could hold where z-loss or the cap idled
    reg = load_registry(REPO / "config" / "claims.yaml")
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["variants"]
    stress = {v for v, spec in default.items() if (spec or {}).get("family") == "stability"}
    on_stress = [c for cl in reg["claims"] for c in cl["checks"]
                 if c["kind"] != "probe" and {c.get("treatment"), c.get("control")} & stress]
    assert {c["full_id"] for c in on_stress} >= {"C13.a", "C13.b", "C15.a"}
    for c in on_stress:
        assert "engaged" in c, f"{c['full_id']} compares stress arms but declares no engagement"


@pytest.mark.parametrize("bad", [
    "max_attn_logit", {"arm": "control", "above": 1}, {"metric": "m", "arm": "both", "above": 1},
    {"metric": "m", "arm": "control"}, {"metric": "m", "arm": "control", "above": 1, "below": 2},
    {"metric": "m", "arm": "control", "above": 1, "transform": "log"},
    {"metric": "m", "arm": "control", "above": 1, "where": "x"},
])
def test_registry_rejects_malformed_engaged(bad):
    # catches: an engagement condition that cannot be evaluated accepted (the check would crash or be judged)
    with pytest.raises(RegistryError, match="engaged must be"):
        load_registry(registry({**STRESS, "engaged": bad}))


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_registry_rejects_non_bool_primary(bad):
    # catches: 'primary: yes' or 1 silently taken as true/false (the Holm family would change unannounced)
    with pytest.raises(RegistryError, match="primary="):
        load_registry(registry({**BELOW0, "primary": bad}))
    assert load_registry(registry({**BELOW0, "primary": True}))["claims"][0]["checks"][0]["primary"] is True


DIV = {"kind": "divergence_delta", "treatment": "t", "control": "c", "interval": [-0.25, 0.25]}


def div_arm(variant, lrs, diverged):
    """4 seeds at each LR; diverged: {(seed, lr)}"""
    return arm(variant, {lr: [None if (s, lr) in diverged else 2.0 for s in range(4)] for lr in lrs})


def test_divergence_delta_over_matched_lrs_clustered_by_seed():
    # catches: runs at an LR only one arm ran counted (treatment diverging at 1.0 where the control never ran),
    # runs treated as independent trials (Newcombe over 8 runs) instead of a t interval over 4 seeds
    t = div_arm("t", (0.01, 0.1, 1.0), {(0, 0.1), (1, 0.1)} | {(s, 1.0) for s in range(4)})
    k = div_arm("c", (0.01, 0.1), set())
    row = rows_of([DIV], t + k).iloc[0]
    m, lo, hi = stats.mean_ci([0.5, 0.5, 0.0, 0.0])
    assert (row.effect, row.ci_low, row.ci_high) == (pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
    assert row.n == 4 and row.lr_choice == "the LRs both arms ran: 0.01, 0.1"
    assert "2/8 vs 0/8 runs diverged; seed-clustered" in row.notes
    assert row.verdict == "inconclusive"  # [0.5,0.5,0,0]: the t interval is wide, Newcombe would be narrower


def test_divergence_delta_not_judged_when_nothing_diverged_at_the_matched_lrs():
    # catches: 0 vs 0 "holding" any band around 0 by design; divergence at an unmatched LR making it judged
    t = div_arm("t", (0.01, 0.1, 1.0), {(s, 1.0) for s in range(4)})
    row = rows_of([DIV], t + div_arm("c", (0.01, 0.1), set())).iloc[0]
    assert row.verdict == "not judged" and "no run of either arm diverged" in row.reason
    rows = rows_of([DIV], div_arm("t", (1.0,), set()) + div_arm("c", (0.01,), set()))
    assert rows.iloc[0].verdict == "not run" and "share no LR" in rows.iloc[0].reason


def paired_runs(diffs, base=2.0, lr=0.01):
    n = len(diffs)
    return arm("t", {lr: [base + NOISE[i] + d for i, d in enumerate(diffs)]}) + arm("c", {lr: [base + NOISE[i] for i in range(n)]})


@pytest.mark.parametrize("check, bounds", [
    ({"direction": "below", "threshold": 0.0}, None),
    ({"direction": "at_most", "threshold": 0.02}, None),
    ({"interval": [-0.03, 0.03]}, (-0.03, 0.03)),
])
def test_decision_p_is_the_t_test_against_the_bound(check, bounds):
    # catches: a p-value on the wrong scale (z instead of t, one-sided instead of doubled), against the null
    # instead of the bound, or one that disagrees with the 95% CI's verdict
    c = {**BELOW0, "at": "each", **{k: v for k, v in check.items()}}
    if "interval" in check:
        c.pop("direction"), c.pop("threshold")
    spread = np.array([0.01, -0.008, 0.004, -0.006, 0.0])
    agree = 0
    for shift in np.linspace(-0.06, 0.06, 25):
        d = spread + shift
        row = rows_of([c], paired_runs(d)).iloc[0]
        dd = np.array([a - b for a, b in zip([2.0 + NOISE[i] + x for i, x in enumerate(d)],
                                              [2.0 + NOISE[i] for i in range(5)])])
        if row.verdict not in DECIDED:
            assert math.isnan(row.p_decision) and row.verdict == "inconclusive"
            continue
        if bounds is None:
            want = st.ttest_1samp(dd, check["threshold"]).pvalue
        elif row.verdict == "holds":
            want = max(st.ttest_1samp(dd, b).pvalue for b in bounds)
        else:
            want = st.ttest_1samp(dd, bounds[0] if dd.mean() < bounds[0] else bounds[1]).pvalue
        assert row.p_decision == pytest.approx(want, rel=1e-6), (shift, row.verdict)
        assert row.p_decision < 0.05
        agree += 1
    assert agree >= 5  # the sweep decided some


def test_decision_p_below_005_exactly_when_the_ci_clears_the_bound():
    # catches: a p-value off the CI's quantile (e.g. normal with few seeds): then p < 0.05 and the verdict disagree
    c = {"direction": "above", "threshold": 0.1}
    for n in (2, 3, 5, 10):
        q = st.t.ppf(0.975, n - 1)
        for z in (q - 1e-6, q + 1e-6, 2 * q):
            e, half = 0.1 + z * 0.01, q * 0.01  # effect z standard errors above the bound
            v = judge(e, e - half, e + half, c)[0]
            assert v == ("holds" if z > q else "inconclusive")
            p = decision_p(e, e - half, e + half, n, c, "holds")
            assert (p < 0.05) == (z > q) and p == pytest.approx(2 * st.t.sf(z, n - 1), rel=1e-9)
    assert math.isnan(decision_p(0.0, -1.0, 1.0, 5, c, "inconclusive"))
    # ratios on the log scale: a ratio CI symmetric in log around 2 against 1.5
    c = {"direction": "above", "threshold": 1.5, "unit": "ratio"}
    q = st.t.ppf(0.975, 4)
    p = decision_p(2.0, 2.0 / math.exp(q * 0.1), 2.0 * math.exp(q * 0.1), 5, c, "holds", log_scale=True)
    assert p == pytest.approx(2 * st.t.sf((math.log(2.0) - math.log(1.5)) / 0.1, 4), rel=1e-9)


def history_of(curves: dict) -> pd.DataFrame:
    """curves: {(variant, seed, lr): {step: val loss}}"""
    return pd.DataFrame([{"variant": v, "seed": s, "lr": lr, "step": step, "kind": "val", "metric": "loss",
                          "layer": -1, "site": "", "value": x} for (v, s, lr), c in curves.items()
                         for step, x in c.items()])


SPREAD = [0.01, -0.008, 0.004, -0.006, 0.0]


def test_a_verdict_that_changes_in_the_last_third_is_still_moving():
    # catches: a check decided on a curve that only separated at the last evaluation; or the rule applied
    # over the whole run (a verdict that changed early and then stayed is decided)
    runs = arm("t", flat(1.9)) + arm("c", flat(2.0))
    c = {**BELOW0, "at": "each"}

    def hist(sep_from):
        return history_of({(r["variant"], r["seed"], r["lr"]): {
            step: 2.0 + NOISE[r["seed"]] + (0.5 if step == 0 else 0)
            + ((SPREAD[r["seed"]] - (0.1 if step >= sep_from else 0)) if r["variant"] == "t" else 0)
            for step in (0, 10, 20, 30, 40, 50, 60)} for r in runs})
    late = rows_of([c], runs, hist(60)).iloc[0]
    assert late.verdict == "still moving" and late.verdict_unadjusted == "holds" and "last third" in late.reason
    assert late.claim_verdict == "inconclusive" and "60:hold" in late.trajectory and "40:inco" in late.trajectory
    early = rows_of([c], runs, hist(20)).iloc[0]  # separated from step 20: the last third (≥ 40) all holds
    assert early.verdict == "holds" and early.verdict_unadjusted == "holds"
    traj = rows_of([c], runs, hist(60)).attrs["trajectory"]
    assert sorted(traj.step) == [0, 10, 20, 30, 40, 50, 60] and traj.set_index("step").verdict[60] == "holds"
    assert rows_of([c], runs).iloc[0].verdict == "holds"  # without a history: no trajectory rule


def test_the_trajectory_ends_at_the_final_score():
    # catches: the end of training judged a second time on the curve's small window set, where evaluation noise
    # alone can flip a verdict the final score (the whole split) makes, and count as "still moving"
    runs = arm("t", flat(1.9)) + arm("c", flat(2.0))
    c = {**BELOW0, "at": "each"}
    curves = {(r["variant"], r["seed"], r["lr"]): {step: 2.0 + NOISE[r["seed"]] for step in (0, 10, 20, 30)}
              for r in runs}
    for step in (20, 30):  # the curve's windows: t ahead at 20, level at 30 (its last point)
        for (v, s, lr), cv in curves.items():
            cv[step] += -0.1 if (v == "t" and step == 20) else 0.0
    df = rows_of([c], runs, history_of(curves))
    traj = df.attrs["trajectory"].set_index("step")
    final = df.iloc[0]
    assert traj.effect[30] == pytest.approx(final.effect) and traj.ci_high[30] == pytest.approx(final.ci_high)
    assert traj.verdict[30] == "holds" and traj.verdict[20] == "holds" and final.verdict == "holds"
    # a run without a final score at the last step (e.g. a crash while scoring) keeps its curve value there
    runs[0]["final_val_loss"] = math.nan
    traj = rows_of([c], runs, history_of(curves)).attrs["trajectory"].set_index("step")
    assert traj.n[30] == 5


def test_holm_over_primary_checks_turns_a_marginal_decision_inconclusive():
    # catches: no adjustment (or a Bonferroni/step-up different from Holm), non-primary checks adjusted,
    # undecided primary checks left out of the family (which would weaken the correction)
    from statsmodels.stats.multitest import multipletests

    spread = np.array([0.01, -0.008, 0.004, -0.006, 0.0])
    se = spread.std(ddof=1) / math.sqrt(5)
    marginal = -st.t.isf(0.015, 4) * se - spread.mean()  # two-sided p = 0.03 against 0
    runs = []
    for v, shift in (("strong", -0.05), ("marg", marginal), ("undec", 0.0), ("other", marginal)):
        runs += arm(f"t_{v}", {0.01: [2.0 + NOISE[i] + spread[i] + shift for i in range(5)]})
    runs += arm("c", {0.01: [2.0 + NOISE[i] for i in range(5)]})
    checks = [{**BELOW0, "at": "each", "treatment": f"t_{v}", "primary": v != "other"}
              for v in ("strong", "marg", "undec", "other")]
    df = rows_of(checks, runs).set_index("check")
    assert df.verdict_unadjusted.tolist() == ["holds", "holds", "inconclusive", "holds"]
    assert df.p_decision["CX.b"] == pytest.approx(0.03, rel=1e-6)
    assert df.verdict.tolist() == ["holds", "inconclusive", "inconclusive", "holds"]
    assert "Holm" in df.reason["CX.b"] and df.primary.tolist() == [True, True, True, False]
    _, want, _, _ = multipletests(df.p_decision[:3].fillna(1.0).to_numpy(), alpha=0.05, method="holm")
    np.testing.assert_allclose(df.p_holm[:3].to_numpy(), want, rtol=1e-12)
    assert math.isnan(df.p_holm["CX.d"])
    assert df.claim_verdict.iloc[0] == "inconclusive"
