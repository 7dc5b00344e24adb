"""workflows.analysis.stats: every interval against a reference (scipy, or a value computed by hand) and its
coverage at the seed counts a benchmark can afford (n = 3, 5), by simulation with a fixed seed."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from workflows.analysis import stats

REPS = 2000
TRUE_MEAN = 2.0


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
def test_mean_ci_matches_a_hand_computed_t_interval():
    # x = 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), se = s/2, t_{3, 0.975} = 3.182446305284263
    m, lo, hi = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert m == 2.5 and (lo, hi) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)
    assert (lo, hi) == pytest.approx((0.44573974323947, 4.55426025676053), rel=1e-12)


@pytest.mark.parametrize("x", [[3.1, 3.3, 3.2], [0.5, -1.0, 2.0, 0.1, 0.7], list(np.linspace(1, 2, 12))])
def test_mean_ci_matches_scipy(x):
    m, lo, hi = stats.mean_ci(x)
    ref = sp.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sp.sem(x))
    assert m == pytest.approx(np.mean(x)) and (lo, hi) == pytest.approx(ref, rel=1e-12)


def test_mean_ci_small_n_and_non_finite_values():
    assert stats.mean_ci([]) == pytest.approx((math.nan,) * 3, nan_ok=True)
    m, lo, hi = stats.mean_ci([2.0, math.nan, None])
    assert m == 2.0 and math.isnan(lo) and math.isnan(hi)  # n < 2: no interval
    assert stats.mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # no spread: zero width
    assert stats.mean_ci([1.0, math.inf, 3.0]) == pytest.approx(stats.mean_ci([1.0, 3.0]))


def test_paired_delta_matches_scipy_paired_t():
    t = {0: 2.9, 1: 3.1, 2: 3.05, 3: 2.8, 4: 3.0}
    c = {0: 3.0, 1: 3.3, 2: 3.1, 3: 3.0, 4: 3.05, 9: 1.0}  # seed 9 has no partner
    d, lo, hi, n = stats.paired_delta(t, c)
    ref = sp.ttest_rel([t[s] for s in range(5)], [c[s] for s in range(5)]).confidence_interval(0.95)
    assert n == 5 and d == pytest.approx(np.mean([t[s] - c[s] for s in range(5)]))
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_paired_delta_unpaired_fallback_is_welch():
    t, c = {0: 2.9, 1: 3.1, 2: 3.3}, {5: 3.0, 6: 3.4, 7: 3.1, 8: 3.9}
    d, lo, hi, n = stats.paired_delta(t, c)
    ref = sp.ttest_ind(list(t.values()), list(c.values()), equal_var=False).confidence_interval(0.95)
    assert n == 0 and d == pytest.approx(np.mean(list(t.values())) - np.mean(list(c.values())))
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-10)
    d, lo, hi, n = stats.paired_delta({0: 1.0}, {1: 2.0, 2: 2.5})  # one side has n = 1: no variance
    assert d == pytest.approx(-1.25) and math.isnan(lo) and n == 0
    assert math.isnan(stats.paired_delta({0: math.nan}, {1: 2.0})[0])


def test_jackknife_t_of_a_mean_is_the_t_interval():
    x = np.array([1.2, 0.7, 1.9, 1.1])
    assert stats.jackknife_t_ci(len(x), lambda ix: x[ix].mean()) == pytest.approx(stats.mean_ci(x)[1:], rel=1e-12)


def test_bca_matches_scipy_on_a_larger_sample():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=40)
    lo, hi = stats.bca_ci(len(x), lambda ix: x[ix].mean())
    ref = sp.bootstrap((x,), np.mean, method="BCa", n_resamples=20000, random_state=2).confidence_interval
    width = ref.high - ref.low
    assert abs(lo - ref.low) < 0.1 * width and abs(hi - ref.high) < 0.1 * width  # Monte Carlo error only
    assert hi - stats.mean_ci(x)[0] > stats.mean_ci(x)[0] - lo  # follows the right skew


def test_seed_ci_contains_both_parts_and_degenerates_cleanly():
    rng = np.random.default_rng(3)
    A = rng.normal([2.0, 2.3], 0.1, size=(4, 2))

    def spread(ix):
        return A[ix, 1].mean() / A[ix, 0].mean() - 1

    lo, hi = stats.seed_ci(4, spread)
    for part in (stats.jackknife_t_ci(4, spread), stats.bca_ci(4, spread)):
        assert lo <= part[0] and part[1] <= hi
    assert stats.seed_ci(3, lambda ix: 1.0) == (1.0, 1.0)  # every subset agrees: zero width
    assert all(math.isnan(v) for v in stats.seed_ci(1, spread))


def test_extreme_mean_ci_is_bonferroni_t_reduced():
    A = np.array([[1.0, 1.40], [1.1, 1.41], [1.05, 1.39]])
    eff, lo, hi = stats.extreme_mean_ci(A, "max")
    half = sp.t.ppf(1 - 0.05 / 2 / 2, 2) * 0.01 / math.sqrt(3)
    assert eff == pytest.approx(1.4) and (lo, hi) == pytest.approx((1.4 - half, 1.4 + half))
    eff, lo, hi = stats.extreme_mean_ci(A, "min")
    assert eff == pytest.approx(1.05) and hi == pytest.approx(stats.mean_ci(A[:, 0], 0.975)[2])


def test_median_ci_order_statistics():
    x = np.arange(10.0)  # n = 10: [x_(2), x_(9)], coverage 1 − 2·P(B ≤ 1) = 0.9785
    assert stats.median_ci(x[::-1]) == (4.5, 1.0, 8.0)
    assert stats.median_ci(range(6))[1:] == (0.0, 5.0)  # n = 6: [min, max] covers 0.969
    m, lo, hi = stats.median_ci(range(5))  # n = 5: [min, max] covers only 0.9375
    assert m == 2.0 and math.isnan(lo) and math.isnan(hi)


def test_wilson_reference():
    # 3 of 10 by hand: centre (0.3 + z²/20)/(1 + z²/10) = 0.3555, half z·sqrt(0.021 + z²/400)/(1 + z²/10)
    # = 0.2477 with z = 1.96
    assert stats.wilson(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)


# ------------------------------------------------------------------------------------------------
# coverage by simulation: normal seed noise, n = 3 and n = 5, fixed seed
# ------------------------------------------------------------------------------------------------
def covered(ci, truth) -> bool:
    lo, hi = ci
    return bool(lo <= truth <= hi)


def coverage(draw_ci, truth, reps: int = REPS) -> float:
    """Share of ``reps`` simulated samples whose interval (``draw_ci()`` -> (lo, hi)) covers ``truth``."""
    return float(np.mean([covered(draw_ci(), truth) for _ in range(reps)]))


@pytest.mark.parametrize("n", [3, 5])
def test_mean_ci_covers_the_true_mean(n):
    rng = np.random.default_rng(20240 + n)
    samples = rng.normal(TRUE_MEAN, 0.05, size=(REPS, n))
    coverage = np.mean([covered(stats.mean_ci(x)[1:], TRUE_MEAN) for x in samples])
    assert coverage >= 0.93, coverage


@pytest.mark.parametrize("n", [3, 5])
def test_percentile_bootstrap_would_not(n):
    """The reason for the t interval: a percentile bootstrap of the same samples under-covers."""
    rng = np.random.default_rng(20240 + n)
    samples = rng.normal(TRUE_MEAN, 0.05, size=(300, n))
    boot = rng.integers(0, n, size=(500, n))
    coverage = np.mean([covered(np.quantile(x[boot].mean(axis=1), [0.025, 0.975]), TRUE_MEAN) for x in samples])
    assert coverage < 0.9, coverage


@pytest.mark.parametrize("n", [3, 5])
def test_paired_delta_covers_the_true_difference(n):
    rng = np.random.default_rng(40480 + n)
    effect = -0.03

    def draw():
        seed_effect = rng.normal(3.0, 0.2, size=n)  # shared by both arms of a seed (data order, init)
        t = seed_effect + effect + rng.normal(0, 0.02, size=n)
        c = seed_effect + rng.normal(0, 0.02, size=n)
        _, lo, hi, pairs = stats.paired_delta(dict(enumerate(t)), dict(enumerate(c)))
        assert pairs == n
        return lo, hi

    rate = coverage(draw, effect)
    assert rate >= 0.93, rate


@pytest.mark.parametrize("n", [3, 5])
def test_welch_fallback_covers_the_true_difference(n):
    rng = np.random.default_rng(60720 + n)

    def draw():
        t, c = rng.normal(2.9, 0.05, size=n), rng.normal(3.0, 0.15, size=n + 1)
        _, lo, hi, pairs = stats.paired_delta(dict(enumerate(t)), {100 + i: v for i, v in enumerate(c)})
        assert pairs == 0
        return lo, hi

    rate = coverage(draw, -0.1)
    assert rate >= 0.93, rate


@pytest.mark.parametrize("n", [3, 5])
def test_jackknife_t_covers_a_ratio_of_means(n):
    """The t part of ``seed_ci`` (which contains it) on a spread-like statistic: max/min − 1 of means."""
    rng = np.random.default_rng(80960 + n)

    def draw():
        A = rng.normal([2.0, 2.2], 0.1, size=(n, 2))
        return stats.jackknife_t_ci(n, lambda ix: A[ix, 1].mean() / A[ix, 0].mean() - 1)

    rate = coverage(draw, 0.1)
    assert rate >= 0.92, rate


@pytest.mark.parametrize("n", [3, 5])
def test_extreme_mean_ci_covers_the_true_max(n):
    rng = np.random.default_rng(101200 + n)
    mu = np.array([1.0, 1.3, 1.35])
    rate = coverage(lambda: stats.extreme_mean_ci(rng.normal(mu, 0.1, size=(n, 3)), "max")[1:], mu.max())
    assert rate >= 0.95, rate


def test_median_ci_covers_the_true_median_of_a_skewed_distribution():
    rng = np.random.default_rng(7)
    n = 8
    rate = coverage(lambda: stats.median_ci(rng.exponential(size=n))[1:], math.log(2))
    assert rate >= 0.95, rate
