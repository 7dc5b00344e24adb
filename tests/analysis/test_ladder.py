"""The model ladder (workflows.analysis.ladder): expansion and its errors on tiny configs, the compute multiplier and
its interval on synthetic curves with a known answer, the refusal to extrapolate, the trend, the figures, and
the pipeline's DAG with a ladder."""
import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats
import pandas as pd
import pytest
import yaml

from models.config import ConfigError
from workflows.analysis import ladder as L
from workflows.grid.grid import Grid

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "name": "ladder-tiny", "seeds": [0, 1, 2], "lrs": [0.01, 0.03], "baseline": "baseline",
    "data": {"source": "shakespeare", "tokenizer": "bytes"},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "context_length": 32},
    "train": {"steps": 40, "batch_size": 8, "warmup_steps": 4, "eval_every": 20, "stats_every": 10,
              "checkpoint_every": 20},
    "variants": {"baseline": {"family": "baseline"}, "gelu": {"family": "ffn", "model": {"ffn": "gelu"}},
                 "post": {"family": "norm position", "model": {"norm_position": "post"}, "lrs": [0.001, 0.003]}},
    "ladder": {"tokens_exponent": 0.5, "rungs": {
        "d16": {"model": {"d_model": 16, "n_layers": 1}, "baseline_only": True},
        "d32": {},
        "d64": {"model": {"d_model": 64}, "lr_scale": 0.5},
        "d96": {"model": {"d_model": 96}, "lrs": [0.002, 0.004]}}},
}


def tiny(**patch):
    cfg = copy.deepcopy(TINY)
    for path, value in patch.items():
        *head, last = path.split("__")
        d = cfg
        for k in head:
            d = d[k]
        if value is None:
            d.pop(last, None)
        else:
            d[last] = value
    return cfg


# ------------------------------------------------------------------------------------------------
# expansion
def test_every_variant_at_every_rung_with_its_own_lrs_and_steps():
    g = Grid.from_config(tiny())
    names = list(g.variants)
    assert names == ["baseline@d16", "baseline@d32", "baseline@d64", "baseline@d96", "gelu@d32", "gelu@d64",
                     "gelu@d96", "post@d32", "post@d64", "post@d96"]  # the anchor trains the baseline only
    assert g.baseline == "baseline@d32"  # the first rung every variant trains at
    assert g.variant_lrs("gelu@d32") == [0.01, 0.03]
    assert g.variant_lrs("gelu@d64") == [0.005, 0.015]  # lr_scale × the grid's LRs
    assert g.variant_lrs("post@d64") == [0.0005, 0.0015]  # × the variant's own LRs
    assert g.variant_lrs("post@d96") == [0.002, 0.004]  # a rung's list replaces every variant's
    # the tokens rule: steps = 40 × (N_rung / N_grid)^0.5, N the baseline's non-embedding parameters
    from workflows.grid.sweeps import nonembed_params

    n32 = nonembed_params(TINY["model"], 256)
    n64 = nonembed_params({**TINY["model"], "d_model": 64}, 256)
    d64 = g.run_dict("gelu@d64", 0, 0.005)
    assert d64["train"]["steps"] == round(40 * math.sqrt(n64 / n32)) > 40
    assert g.run_dict("gelu@d32", 0, 0.01)["train"]["steps"] == 40  # the grid's own model: its own steps
    factor = d64["train"]["steps"] / 40
    assert d64["train"]["warmup_steps"] == round(4 * factor) and d64["train"]["eval_every"] == round(20 * factor)
    assert d64["model"]["d_model"] == 64 and d64["model"]["ffn"] == "gelu"  # rung size + variant axis
    s = g.summary()
    assert s["variants"]["gelu@d64"]["baseline"] == "baseline@d64" and s["variants"]["gelu@d64"]["rung"] == "d64"
    assert [r["rung"] for r in s["ladder"]["rungs"]] == ["d16", "d32", "d64", "d96"]
    assert s["ladder"]["rungs"][0]["baseline_only"] and s["ladder"]["arms"] == ["baseline", "gelu", "post"]


def test_a_rung_may_fix_its_steps():
    g = Grid.from_config(tiny(ladder__rungs__d64={"model": {"d_model": 64}, "train": {"steps": 7}}))
    assert g.run_dict("gelu@d64", 0, 0.01)["train"]["steps"] == 7


def test_grid_without_ladder_is_unchanged():
    cfg = tiny(ladder=None)
    g = Grid.from_config(cfg)
    assert list(g.variants) == ["baseline", "gelu", "post"] and g.ladder is None and "ladder" not in g.summary()


@pytest.mark.parametrize("patch, message", [
    ({"ladder__rungs__d64": {"model": {"d_model": 64}, "lrs": [0.1], "lr_scale": 2}}, "rung 'd64': set lrs or lr_scale"),
    ({"ladder__rungs__d64": {"size": 3}}, "rung 'd64': unknown key(s) ['size']"),
    ({"ladder__rungs__d64": {"model": {"d_model": 64}, "lr_scale": -1}}, "rung 'd64': lr_scale=-1"),
    ({"ladder__rungs__d64": {"model": {"d_model": 64, "n_heads": 3}}}, "ladder rung 'd64': "),  # 64 / 3 heads
    ({"ladder__rungs__d64": {"model": {"ffn": "swiglu"}}}, "variant 'gelu' sets ['ffn'], which the rung sets too"),
    ({"ladder__rungs": {"a@b": {}, "d32": {}, "d64": {"model": {"d_model": 64}}}}, "rung 'a@b'"),
    ({"ladder__fit": "cubic"}, "ladder.fit='cubic'; choose one of ['loglinear', 'power']"),
    ({"ladder__tokens_exponent": "x"}, "ladder.tokens_exponent='x'"),
    ({"ladder__rungs": {"d32": {}, "d64": {"model": {"d_model": 64}}}}, "a loglinear fit needs ≥ 3"),
    ({"ladder__fit": "power", "ladder__rungs__d96": None}, "a power fit needs ≥ 4"),
    ({"ladder__rungs": {"d16": {"model": {"d_model": 16}, "baseline_only": True}, "d32": {},
                        "d24": {"model": {"d_model": 24}, "baseline_only": True}}}, "needs ≥ 2 rungs where every"),
    ({"ladder__shape": 1}, "ladder: unknown key(s) ['shape']"),
    ({"sweeps": {"wd": {"values": [0, 0.1], "set": {"train.weight_decay": "value"}}}}, "may not also have sweeps"),
])
def test_bad_ladders_fail_before_any_job_naming_the_rung(patch, message):
    cfg = tiny(**patch)
    with pytest.raises(ConfigError) as e:
        Grid.from_config(cfg)
    assert message in str(e.value)


def test_schema_accepts_the_committed_ladder_config():
    from workflows.grid.grid import load_pipeline_config

    cfg = load_pipeline_config(REPO / "config" / "ladder.yaml")
    g = Grid.from_config(cfg)
    rungs = [r for r in g.ladder["rungs"] if not r["baseline_only"]]
    assert len(rungs) >= 2 and len(g.seeds) >= 3
    # the span: >= 4 rungs over >= 10x non-embedding parameters; the training-length curve at every
    # rung where the variants train (one horizon arm on each side)
    every = [r["nonembed_params"] for r in g.ladder["rungs"]]
    assert len(every) >= 4 and max(every) / min(every) >= 10
    hz = g.ladder["horizons"]
    assert min(hz.values()) < 1 < max(hz.values())
    for r in rungs:
        assert all(f"{arm}@{r['rung']}" in g.variants for arm in hz)
    # from the default model up: the first full rung is the default grid's model, at its steps
    default = load_pipeline_config(REPO / "config" / "config.yaml")
    first = g.run_dict(f"baseline@{rungs[0]['rung']}", 0, g.variant_lrs(f"baseline@{rungs[0]['rung']}")[0])
    assert {k: first["model"][k] for k in ("d_model", "n_layers", "n_heads")} == \
           {k: default["model"][k] for k in ("d_model", "n_layers", "n_heads")}
    # (its steps follow the ladder's own tokens rule: the default grid's 900-step regime is not the ladder's yet)
    assert [r["nonembed_params"] for r in rungs] == sorted(r["nonembed_params"] for r in rungs)


# ------------------------------------------------------------------------------------------------
# the compute multiplier on synthetic curves
ALPHA, BETA = 6.0, -0.15  # L = α + β ln C: the baseline's true curve
LNC = [20.0, 21.4, 22.8, 24.2]  # the rungs' ln compute (×4 per rung)
LR_PENALTY = {0.001: 0.06, 0.003: 0.0, 0.01: 0.09}  # the LR optimum inside the grid


def synthetic_runs(rng, variants: dict, sigma=0.02, seeds=(0, 1, 2), tokens=1024 * 300):
    """variant arm -> (loss-at-C function, rungs it trains at): a runs table with per-(seed, LR) noise and a
    per-seed effect shared by every run of the seed (paired seeds)."""
    seed_fx = {s: rng.normal(0, sigma) for s in seeds}
    rows = []
    for arm, (loss_at, rung_ix) in variants.items():
        for i in rung_ix:
            fpt = math.exp(LNC[i]) / tokens
            for s in seeds:
                for lr, pen in LR_PENALTY.items():
                    loss = loss_at(LNC[i]) + pen + seed_fx[s] + rng.normal(0, sigma)
                    rows.append({"variant": f"{arm}@r{i}", "rung": f"r{i}", "seed": s, "lr": lr,
                                 "final_val_loss": loss, "init_loss": 5.5, "diverged": False,
                                 "flops_per_token": fpt, "steps": 300, "batch_size": 16, "context_length": 64,
                                 "params": 1000 * (i + 1)})
    return pd.DataFrame(rows)


def lad(arms, rungs=4, fit="loglinear"):
    return {"baseline": "baseline", "arms": arms, "fit": fit, "tokens_exponent": 1.0,
            "rungs": [{"rung": f"r{i}", "baseline_only": False, "steps": 300} for i in range(rungs)]}


def base_curve(lnc):
    return ALPHA + BETA * lnc


def test_fits_recover_known_curves():
    x = np.array(LNC)
    f = L.fit_curve(x, base_curve(x), "loglinear")
    assert f.params == pytest.approx((ALPHA, BETA)) and f.r2 == pytest.approx(1.0)
    assert f.inverse(base_curve(21.0)) == pytest.approx(21.0)
    a, b, c = 40.0, 0.12, 2.0
    xs = np.linspace(20, 26, 6)
    p = L.fit_curve(xs, a * np.exp(-b * xs) + c, "power")
    assert p.params == pytest.approx((a, b, c), rel=1e-4)
    assert p.inverse(a * math.exp(-b * 23.0) + c) == pytest.approx(23.0, rel=1e-6)
    assert math.isnan(L.fit_curve(x[:2], base_curve(x[:2]), "loglinear").r2)  # 2 points, 2 parameters: no R²
    assert math.isnan(L.Fit("loglinear", (1.0, 0.1), 0, 1).inverse(0.5))  # loss rising with compute: no inverse


def test_a_variant_worth_twice_the_compute_has_multiplier_two_inside_its_interval():
    """The variant is the baseline with its compute doubled: L_v(C) = L_b(2C). Over simulated seed noise (3 seeds,
    3 LRs each chosen by cross-fitting, a shared per-seed effect), the 95% interval holds m = 2 ≥ 93% of the time
    at every rung, and the point estimate is unbiased on the log scale."""
    rng = np.random.default_rng(7)
    hits, logs, n_sim = [], [], 200
    spec = lad(["baseline", "twice"])
    for _ in range(n_sim):
        runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                    "twice": (lambda lnc: base_curve(lnc + math.log(2)), range(3))})
        cs = L.cells(runs, spec, [0, 1, 2])  # what ladder_table does, for the variant's cells only
        base = [cs[("baseline", f"r{i}")] for i in range(4)]
        bfit = L._baseline_fit(base, "loglinear", np.arange(3))
        for i in range(3):
            m = L._multiplier(cs[("twice", f"r{i}")], base, bfit, "loglinear", 3, 0.95)
            hits.append(m["multiplier_low"] <= 2 <= m["multiplier_high"])
            logs.append(math.log(m["multiplier"]))
    assert np.mean(hits) >= 0.93, np.mean(hits)
    assert abs(np.mean(logs) - math.log(2)) < 0.1


def test_the_interval_is_not_vacuous():
    """A large effect at low noise: the interval excludes 1 and is narrow, for the global fit at every rung and
    for the paired local estimate at the rungs with a baseline rung on each side (r1, r2; r0 is the first)."""
    rng = np.random.default_rng(1)
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                "four": (lambda lnc: base_curve(lnc + math.log(4)), range(3))}, sigma=0.002)
    t, _ = L.ladder_table(runs, lad(["baseline", "four"]))
    v = t[t.variant == "four"].set_index("rung")
    assert (v.global_multiplier_low > 3).all() and (v.global_multiplier_high < 5.5).all()
    assert np.allclose(v.global_multiplier, 4, rtol=0.1)
    inner = v.loc[["r1", "r2"]]
    assert (inner.multiplier_low > 3).all() and (inner.multiplier_high < 5.5).all()
    assert np.allclose(inner.multiplier, 4, rtol=0.1)
    assert math.isnan(v.loc["r0", "multiplier"]) and "baseline rung on each side" in v.loc["r0", "note"]


def test_no_extrapolation_beyond_the_baselines_rungs():
    rng = np.random.default_rng(2)
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                "worse": (lambda lnc: base_curve(lnc) + 0.5, range(4)),
                                "better": (lambda lnc: base_curve(lnc + math.log(2)), range(4))}, sigma=0.005)
    t, trends = L.ladder_table(runs, lad(["baseline", "worse", "better"]))
    worse = t[t.variant == "worse"].set_index("rung")
    # 0.5 nats worse = the baseline at 0.5/0.15 = 3.3 less ln C: below the smallest rung from r0 to r2 ...
    low = worse.loc[["r0", "r1", "r2"]]
    assert low.global_multiplier.isna().all() and low.global_note.str.contains("refused.*below its smallest rung").all()
    # ... and inside the rungs at r3, where it is measured
    assert worse.loc["r3", "global_multiplier"] == pytest.approx(math.exp(-0.5 / 0.15), rel=0.1)
    top = t[(t.variant == "better") & (t.rung == "r3")].iloc[0]
    assert math.isnan(top.global_multiplier) and "above its largest rung" in top.global_note
    assert t[(t.variant == "better") & (t.rung != "r3")].global_multiplier.notna().all()
    # the global trend uses the rungs with a multiplier only
    tw = trends.set_index("variant")
    assert tw.loc["worse", "global_rungs"] == 1 and math.isnan(tw.loc["worse", "global_slope"])  # a slope needs 2
    assert tw.loc["better", "global_rungs"] == 3
    # the paired local estimate steps past the adjacent rungs for 'worse' (3.3 ln C away) and says so
    assert worse.loc[["r1", "r2"], "extrapolated"].all()


def test_censored_bound_is_cut_at_the_edge_and_marked():
    rng = np.random.default_rng(3)
    # near the top: the upper bound would need compute above the largest rung
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                "near": (lambda lnc: base_curve(lnc + 1.2), [2])}, sigma=0.03)
    t, _ = L.ladder_table(runs, lad(["baseline", "near"]))
    r = t[t.variant == "near"].iloc[0]
    if math.isfinite(r.global_multiplier):
        assert "high" in r.global_censored
        assert r.global_multiplier_high == pytest.approx(math.exp(LNC[3] - LNC[2]), rel=1e-6)


def test_trend_recovers_a_multiplier_that_grows_with_scale():
    """m(C) = exp(0.5 (ln C − 20)) + ...: the variant's advantage grows with compute (slope 0.3 of ln m on ln C)."""
    rng = np.random.default_rng(4)
    slope = 0.3

    def grows(lnc):
        return base_curve(lnc + 0.2 + slope * (lnc - LNC[0]))

    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)), "grows": (grows, range(3)),
                                "flat": (lambda lnc: base_curve(lnc + 0.7), range(3))}, sigma=0.002)
    _, trends = L.ladder_table(runs, lad(["baseline", "grows", "flat"]))
    tr = trends.set_index("variant")
    for col in ("slope", "global_slope"):  # paired local (primary) and global fit (secondary)
        assert tr.loc["grows", col] == pytest.approx(slope, abs=0.05)
        assert tr.loc["grows", f"{col}_low"] > 0
        assert tr.loc["flat", f"{col}_low"] <= 0 <= tr.loc["flat", f"{col}_high"]


def test_diverged_runs_count_as_init_loss_and_are_reported():
    rng = np.random.default_rng(5)
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4))})
    i = runs.index[(runs.variant == "baseline@r1") & (runs.lr == 0.01)][0]
    runs.loc[i, ["diverged", "final_val_loss"]] = [True, np.nan]
    t, _ = L.ladder_table(runs, lad(["baseline"]))
    assert t.set_index("rung").loc["r1", "diverged"] == 1 and t.runs.sum() == len(runs)


def test_markdown_and_figures(tmp_path):
    rng = np.random.default_rng(6)
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                "twice": (lambda lnc: base_curve(lnc + math.log(2)), range(3))})
    runs["tokens_seen"], runs["device"] = 300 * 16 * 64, "cpu"
    t, tr = L.ladder_table(runs, lad(["baseline", "twice"]))
    md = L.markdown(t, tr, lad(["baseline", "twice"]), "scale: x")
    assert "| twice | r1 |" in md and "Trend" in md and "cannot say" in md
    from workflows.plots.ladder import figures

    ld = lad(["baseline", "twice"])
    pts, lines = L.points(runs, ld), L.fit_lines(t, ld)
    assert set(pts.variant) == set(lines.variant) == {"baseline", "twice"} and len(lines) == 2 * 50
    paths = figures(t, pts, lines, ld, tmp_path, runs, 3.3, "baseline@r0")
    assert sorted(p.name for p in paths) == sorted(f"{n}.{f}" for n in ("ladder_curves", "compute_multiplier")
                                                   for f in ("png", "pdf"))
    assert all(p.stat().st_size > 0 for p in paths)
    # the y label says which LR the dots are at: the pilot's choice on a pilot grid, never "cross-fitted" there;
    # cross-fitted on any other grid (the ladder cross-fits a shared-compare_lr grid's LRs too)
    import matplotlib.pyplot as plt

    from workflows.plots.ladder import fig_ladder_curves

    for protocol, label in (("pilot", "the LR its arm's pilot chose"), ("crossfit", "its cross-fitted LR"),
                            ("shared", "its cross-fitted LR"), (None, "its cross-fitted LR")):
        fig = fig_ladder_curves(t, pts, lines, ld, runs, 3.3, "baseline@r0", protocol)
        assert fig.axes[0].get_ylabel().endswith(label), (protocol, fig.axes[0].get_ylabel())
        plt.close(fig)


def test_required_columns():
    rng = np.random.default_rng(8)
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                "twice": (lambda lnc: base_curve(lnc + math.log(2)), range(3))})
    t, _ = L.ladder_table(runs, lad(["baseline", "twice"]))
    assert {"variant", "rung", "multiplier", "multiplier_low", "multiplier_high", "r2"} <= set(t.columns)
    assert len(t) == 4 + 3


def test_pipeline_dag_has_the_ladder(tmp_path):
    cfg = tiny()
    path = tmp_path / "lad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(path), "--cores", "1", "-n",
                           "--config", f"work={tmp_path / 'work'}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "rule ladder:" in out and "variant=gelu@d64" in out and "variant=baseline@d16" in out
    assert "variant=gelu@d16" not in out


def test_scale_trend_check_kind():
    """The scorecard's scale_trend kind: the trend's slope and interval from runs.parquet; NotRun without a ladder."""
    from workflows.claims.evidence import Evidence, NotRun
    from workflows.claims.kinds import KINDS

    rng = np.random.default_rng(9)
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                "grows": (lambda lnc: base_curve(lnc + 0.2 + 0.3 * (lnc - LNC[0])), range(3))},
                          sigma=0.002)
    check = {"treatment": "grows", "control": "baseline", "min_seeds": 3, "min_lrs": 1}
    [m] = KINDS["scale_trend"].fn(Evidence(runs, {}), check)
    _, trends = L.ladder_table(runs, lad(["baseline", "grows"]))
    assert m.effect == pytest.approx(trends.slope.iloc[0]) and m.lo > 0 and m.n == 3 and not m.short
    with pytest.raises(NotRun):
        KINDS["scale_trend"].fn(Evidence(runs.drop(columns="rung"), {}), check)
    with pytest.raises(NotRun):
        KINDS["scale_trend"].fn(Evidence(runs, {}), {**check, "treatment": "absent"})


# ------------------------------------------------------------------------------------------------
# the paired local estimator (primary): coverage and width against an oracle on synthetic ladders
def _curved(t):  # a baseline whose local slope falls from -0.28 to -0.11 per ln C over the rungs (measured: -0.27, -0.155)
    return 2.3 - 0.28 * t + 0.04 * t ** 2


def _curved_inverse(y):
    return (0.28 - math.sqrt(0.28 ** 2 - 4 * 0.04 * (2.3 - y))) / (2 * 0.04)


@pytest.mark.parametrize("lnm_true", [-0.3, 0.3])
def test_local_estimator_covers_with_a_width_close_to_the_oracles(lnm_true):
    """Synthetic ladders (4 rungs 2x apart in compute, a curved baseline, 3 seeds; each seed's noise shared by the
    variant and the baseline at a rung, sd 0.01, plus independent noise sd 0.005: the paired structure of the
    committed runs): at the rungs with a baseline rung on each side the t interval of the mean ln m covers the
    true ln m in >= 93% of 1000 ladders, and its mean width is within 1.3x the oracle's — the same interval
    computed with the baseline's true curve known (only the noise of the seeds' differences left)."""
    rng = np.random.default_rng(11)
    x, n, R = np.array([0.0, 0.7, 1.4, 2.1]), 3, 1000
    q = scipy_stats.t.ppf(0.975, n - 1)
    hits, width, ohits, owidth = np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4)
    for _ in range(R):
        u = rng.normal(0, 0.01, (4, n))
        Lb = _curved(x)[:, None] + u + rng.normal(0, 0.005, (4, n))
        Lv = _curved(x + lnm_true)[:, None] + u + rng.normal(0, 0.005, (4, n))
        for i in (1, 2):
            est = L.paired_local_lnm(x, Lb, i, Lv[i], x[i])
            oracle = np.array([_curved_inverse(v - (b - _curved(x[i]))) - x[i] for v, b in zip(Lv[i], Lb[i])])
            for v, h, w in ((est, hits, width), (oracle, ohits, owidth)):
                se = v.std(ddof=1) / math.sqrt(n)
                h[i] += abs(v.mean() - lnm_true) <= q * se
                w[i] += 2 * q * se
    for i in (1, 2):
        assert hits[i] / R >= 0.93, (i, hits[i] / R)
        assert width[i] / owidth[i] <= 1.3, (i, width[i] / owidth[i])
        assert ohits[i] / R >= 0.93  # the oracle itself is a valid interval


def test_local_estimator_uses_only_the_adjacent_rungs_and_refuses_the_ends():
    x = np.array([0.0, 0.7, 1.4, 2.1])
    Lb = np.tile(_curved(x)[:, None], (1, 3)) + np.array([[0.0, 0.01, -0.01]])
    lv = _curved(x[1] - 0.2) + np.array([0.0, 0.01, -0.01])
    est = L.paired_local_lnm(x, Lb, 1, lv, x[1])
    assert est == pytest.approx([-0.2] * 3, abs=1e-9)  # exact on a parabola, each seed against its own baseline
    far = Lb.copy()
    far[3] += 0.5  # noise at a rung that is not adjacent to rung 1 does not move its estimate
    assert L.paired_local_lnm(x, far, 1, lv, x[1]) == pytest.approx(est)
    assert np.isnan(L.paired_local_lnm(x, Lb, 0, lv, x[0])).all()
    assert np.isnan(L.paired_local_lnm(x, Lb, 3, lv, x[3])).all()
    flat = Lb.copy()
    flat[2] = flat[0]  # this seed's baseline did not improve around rung 1: no estimate
    assert np.isnan(L.paired_local_lnm(x, flat, 1, lv, x[1])).all()


def test_decision_accuracy_against_the_top_rung():
    """Orders at a lower rung that match the top rung's count; a reversed pair does not."""
    rng = np.random.default_rng(12)
    runs = synthetic_runs(rng, {"baseline": (base_curve, range(4)),
                                "good": (lambda lnc: base_curve(lnc + 0.7), range(4)),
                                # worse than the baseline at the low rungs, better at the top
                                "late": (lambda lnc: base_curve(lnc) + 0.05 - 0.04 * (lnc - LNC[0]), range(4))},
                          sigma=0.001)
    spec = lad(["baseline", "good", "late"])
    d = L.decision_accuracy(L.cells(runs, spec, [0, 1, 2]), spec, [0, 1, 2]).set_index("rung")
    assert list(d.index) == ["r0", "r1", "r2"] and (d.top_rung == "r3").all() and (d.pairs == 3).all()
    # at the top 'late' is the best; at r0 it is the worst (1 of 3 pairs agree); at r1 and r2 it beats the baseline
    # but not yet 'good' (2 of 3)
    assert d.accuracy.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert (d.accuracy_low <= d.accuracy).all() and (d.accuracy <= d.accuracy_high).all()


# ------------------------------------------------------------------------------------------------
# the baseline's training-length curve (ladder.horizons): the primary axis where a rung has it
def test_horizon_arms_train_the_baseline_longer_and_shorter_at_every_variant_rung():
    g = Grid.from_config(tiny(ladder__horizons=[0.5, 2]))
    hz = [v for v in g.variants if v.startswith("baseline-x")]
    assert hz == [f"baseline-x{h}@{r}" for h in ("0.5", "2") for r in ("d32", "d64", "d96")]  # not at the anchor
    assert list(g.variants).index("baseline-x0.5@d32") == 4  # right after the baseline's own cells
    for r in ("d32", "d64", "d96"):
        main = g.run_dict(f"baseline@{r}", 0, 0.01)
        for h in (0.5, 2):
            d = g.run_dict(f"baseline-x{h:g}@{r}", 0, 0.01)
            assert d["model"] == main["model"]  # the same model: only the training length differs
            assert d["train"]["steps"] == round(main["train"]["steps"] * h)
            assert d["train"]["warmup_steps"] == max(1, round(main["train"]["warmup_steps"] * h))
            assert d["train"]["eval_every"] == max(1, round(main["train"]["eval_every"] * h))
            assert g.variant_lrs(f"baseline-x{h:g}@{r}") == g.variant_lrs(f"baseline@{r}")  # its own pilot, same grid
    s = g.summary()
    assert s["ladder"]["horizons"] == {"baseline-x0.5": 0.5, "baseline-x2": 2.0}
    assert s["ladder"]["arms"] == ["baseline", "gelu", "post"]  # the horizon arms are not changes
    assert s["variants"]["baseline-x2@d64"]["horizon"] == 2 and s["variants"]["baseline-x2@d64"]["baseline"] == \
        "baseline@d64"


@pytest.mark.parametrize("horizons, message", [
    ([0.5], "needs a factor below 1 and one above 1"),
    ([1.5, 2], "needs a factor below 1 and one above 1"),
    ([0.5, 1, 2], "not 1"),
    ([0.5, 0.5, 2], "distinct"),
    ([0.5, "2"], "must be a list of numbers > 0"),
    ([-0.5, 2], "must be a list of numbers > 0"),
    ("0.5", "must be a list of numbers > 0"),
])
def test_bad_horizons_fail_before_any_job(horizons, message):
    with pytest.raises(ConfigError) as e:
        Grid.from_config(tiny(ladder__horizons=horizons))
    assert message in str(e.value)



def test_a_variant_named_like_a_horizon_arm_is_refused():
    cfg = tiny(ladder__horizons=[0.5, 2])
    cfg["variants"]["baseline-x2"] = {"family": "other", "model": {"ffn": "relu"}}
    with pytest.raises(ConfigError, match="are the baseline's horizon arms"):
        Grid.from_config(cfg)


def _length_curve(t):  # the baseline along training length: slope -0.32 per ln C at t = 0 (measured at d64x4)
    return 1.89 - 0.32 * t + 0.08 * t ** 2


def _length_curve_inverse(y):
    return (0.32 - math.sqrt(0.32 ** 2 - 4 * 0.08 * (1.89 - y))) / (2 * 0.08)


@pytest.mark.parametrize("lnm_true", [-0.3, 0.25])
def test_training_length_estimator_covers_with_a_width_close_to_the_oracles(lnm_true):
    """The horizon arms' spacing (0.667x, 1x, 1.5x the steps) on a curve as steep as the measured one, 3 seeds, each
    seed's noise shared by its variant and baseline runs (sd 0.01) plus independent noise (sd 0.005): the t interval
    of the mean ln m covers in >= 93% of 1000 ladders and its mean width is within 1.3x the oracle's (the baseline's
    curve known)."""
    rng = np.random.default_rng(23)
    x, n, R = np.log([0.667, 1.0, 1.5]), 3, 1000
    q = scipy_stats.t.ppf(0.975, n - 1)
    hit = width = ohit = owidth = 0.0
    for _ in range(R):
        u = rng.normal(0, 0.01, n)
        Lb = _length_curve(x)[:, None] + u + rng.normal(0, 0.005, (3, n))
        lv = _length_curve(x[1] + lnm_true) + u + rng.normal(0, 0.005, n)
        est = L.paired_local_lnm(x, Lb, 1, lv, x[1])
        oracle = np.array([_length_curve_inverse(v - (b - _length_curve(0.0))) for v, b in zip(lv, Lb[1])])
        for v, kind in ((est, "est"), (oracle, "oracle")):
            se = v.std(ddof=1) / math.sqrt(n)
            ok, w = abs(v.mean() - lnm_true) <= q * se, 2 * q * se
            if kind == "est":
                hit, width = hit + ok, width + w
            else:
                ohit, owidth = ohit + ok, owidth + w
    assert hit / R >= 0.93 and ohit / R >= 0.93, (hit / R, ohit / R)
    assert width / owidth <= 1.3, width / owidth


def _horizon_runs(rng, lnm_true: float, seeds=(0, 1, 2)):
    """A synthetic ladder with horizon arms: 3 rungs (r0 an anchor), the baseline along training length at r1, r2
    (0.667x, 1.5x the steps), and 'good', a change worth exp(lnm_true) x the baseline's training compute at every
    rung; per-seed noise shared within a seed. One LR per arm (a pilot grid's evaluation runs)."""
    rows = []
    fx = {s: rng.normal(0, 0.01) for s in seeds}
    for i in range(3):
        size = -0.06 * i  # the model-size axis: a flat -0.06 per rung (per 1.4 ln C)
        arms = [("baseline", 1.0, 0.0)] + ([("baseline-x0.667", 0.667, 0.0), ("baseline-x1.5", 1.5, 0.0),
                                           ("good", 1.0, lnm_true)] if i else [])
        for arm, h, shift in arms:
            steps = round(300 * h)
            for s in seeds:
                t = math.log(steps / 300) + shift
                rows.append({"variant": f"{arm}@r{i}", "rung": f"r{i}", "seed": s, "lr": 0.003,
                             "final_val_loss": _length_curve(t) + size + fx[s] + rng.normal(0, 0.003),
                             "init_loss": 5.5, "diverged": False, "flops_per_token": math.exp(LNC[i]) / (1024 * 300),
                             "steps": steps, "batch_size": 16, "context_length": 64, "params": 1000 * (i + 1)})
    return pd.DataFrame(rows)


def test_ladder_table_reads_the_training_length_curve_where_a_rung_has_it():
    rng = np.random.default_rng(5)
    runs = _horizon_runs(rng, 0.3)
    spec = {**lad(["baseline", "good"], rungs=3), "horizons": {"baseline-x0.667": 0.667, "baseline-x1.5": 1.5}}
    spec["rungs"][0]["baseline_only"] = True
    table, trends = L.ladder_table(runs, spec)
    good = table[table.variant == "good"].set_index("rung")
    assert (good.axis == "training length").all()
    for r in ("r1", "r2"):
        assert good.loc[r, "multiplier_low"] <= math.exp(0.3) <= good.loc[r, "multiplier_high"]
        assert good.loc[r, "multiplier_high"] / good.loc[r, "multiplier_low"] < 1.3
    # the model-size reading is kept beside it (r1 has a baseline rung on each side; r2 is the last rung)
    assert np.isfinite(good.loc["r1", "size_multiplier"]) and np.isnan(good.loc["r2", "size_multiplier"])
    hz = table[table.variant.str.startswith("baseline-x")]
    assert len(hz) == 4 and hz.multiplier.isna().all() and hz.note.str.contains("training-length curve").all()
    t = trends.set_index("variant")
    assert list(t.index) == ["good"]  # horizon arms have no trend
    assert t.loc["good", "slope_low"] <= 0.0 <= t.loc["good", "slope_high"]  # a constant multiplier
    md = L.markdown(table, trends, spec)
    assert "training-length curve" in md and "| training length |" in md
    # without the horizon arms the same cells fall back to the model-size curve
    plain = runs[~runs.variant.str.startswith("baseline-x")]
    t2, _ = L.ladder_table(plain, {**spec, "horizons": {}})
    assert (t2[t2.variant == "good"].axis == "model size").all()


def test_figures_with_horizon_arms(tmp_path):
    # catches: the horizon arms drawn as changes (or breaking the figures): they are points of the baseline
    rng = np.random.default_rng(9)
    runs = _horizon_runs(rng, 0.3)
    runs["tokens_seen"], runs["device"] = runs.steps * 16 * 64, "cpu"
    spec = {**lad(["baseline", "good"], rungs=3), "horizons": {"baseline-x0.667": 0.667, "baseline-x1.5": 1.5}}
    spec["rungs"][0]["baseline_only"] = True
    t, _ = L.ladder_table(runs, spec)
    from workflows.plots.ladder import figures

    paths = figures(t, L.points(runs, spec), L.fit_lines(t, spec), spec, tmp_path, runs, 3.3, "baseline@r0")
    assert len(paths) == 4 and all(p.stat().st_size > 0 for p in paths)


def test_scale_trend_check_reads_the_training_length_curve():
    # catches: the scorecard's S1 trend computed on the model-size curve while the ladder table reads the
    # training-length curve (then the top rung, with no baseline rung above it, would drop out of the trend)
    from workflows.claims import Evidence, KINDS

    runs = _horizon_runs(np.random.default_rng(4), 0.3)
    check = {"kind": "scale_trend", "treatment": "good", "control": "baseline", "min_seeds": 3}
    hz = {"baseline-x0.667": 0.667, "baseline-x1.5": 1.5}  # grid.json's ladder.horizons
    [m] = KINDS["scale_trend"].fn(Evidence(runs, {}, horizons=hz), check)
    assert m.n == 3 and np.isfinite(m.effect) and m.lo <= 0.0 <= m.hi  # a constant multiplier: slope ~ 0
    assert "training-length curve" in " ".join(m.notes) and "r1 r2" in " ".join(m.notes)
    spec = {**lad(["baseline", "good"], rungs=3), "horizons": hz}
    _, trends = L.ladder_table(runs, spec)
    assert m.effect == pytest.approx(trends.set_index("variant").loc["good", "slope"])
