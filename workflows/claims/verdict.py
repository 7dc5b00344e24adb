"""The verdict rule, written once, and what it would take to decide a check.

A check's *holds region* is fixed in the registry before any run: an interval [a, b] (an equivalence or
a band) or a direction and a threshold, in raw units (nats, a ratio, a fraction). Nothing in it depends on
the noise of the runs. Given the effect's 95% CI [lo, hi]:

- **interval [a, b]**: holds when the CI lies inside it; contradicted when the CI lies wholly outside it
  (hi < a or lo > b); otherwise inconclusive. A CI inside the region that excludes the null (0 for a
  difference, 1 for a ratio) is reported as "different from the null but smaller than the margin".
- **direction**: holds when the CI lies wholly on the claimed side of the threshold; contradicted only when
  the CI excludes every value the claim allows (for ``below t``: lo ≥ t; ``at_most t``: lo > t; ``above
  t``: hi ≤ t; ``at_least t``: hi < t); otherwise inconclusive. So a CI that contains any value the claim
  allows — the published effect among them — is never "contradicted".
- **not judged**: the evidence cannot carry a verdict whatever its interval — a degenerate arm (its loss
  stays at ℓ0, or its activations or gradients fall below a stated floor), or throughput of grid jobs that
  shared cores (reported, never judged).
- **inconclusive** also when the evidence is below the check's minimum (seeds, LRs, depths, GPU runs).

A 95% two-sided CI inside / beside a bound is the two one-sided tests (TOST) at α = 0.025 each.

``power`` states what a check can detect: its minimum detectable effect at its n (the smallest distance
between the true effect and the nearest bound that n seeds decide with 80% power, two-sided α = 0.05, by
the one-sample t power of ``statsmodels``), and for an undecided check the seeds that would decide it at
the observed effect and noise, and as what. The seed-to-seed sd it needs comes from the check's own CI
(σ̂ = half-width · √n / t₀.₉₇₅,ₙ₋₁: exact for the t intervals, an approximation for the bootstrap and
Wilson intervals).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sp
from scipy.optimize import brentq
from statsmodels.stats.power import TTestPower

VERDICTS = ("holds", "contradicted", "inconclusive", "still moving", "not judged", "not run")
DECIDED = ("holds", "contradicted")
DIRECTIONS = ("above", "below", "at_least", "at_most")
SYMBOL = {"above": ">", "below": "<", "at_least": "≥", "at_most": "≤"}
POWER = 0.8
ALPHA = 0.05
MAX_SEEDS = 100_000  # beyond this a check is reported as undecidable at the observed effect


@dataclass
class Measure:
    """What an evaluator kind measured for one check (one group, e.g. one depth)."""
    effect: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0
    group: str = ""
    short: list = field(default_factory=list)  # evidence shortfalls -> inconclusive
    not_judged: str = ""  # degenerate arm / shared-core timing -> "not judged"
    notes: list = field(default_factory=list)
    lr_choice: str = ""  # how the compared LR was chosen (selection.describe)
    engagement: str = ""  # a stability check: what showed (or failed to show) that its mechanism acted
    params: str = ""
    tokens: str = ""


def holds_region(c: dict) -> tuple[float, float, str]:
    """(a, b, text): the check's holds region with its margin resolved; ``margin`` is a number fixed in the
    registry (validated there), so the region never depends on the runs."""
    margin = float(c["margin"]) if "margin" in c else math.nan

    def val(x):
        if isinstance(x, str):
            return -margin if x.startswith("-") else margin
        return float(x)

    if "interval" in c:
        a, b = (val(x) for x in c["interval"])
        return a, b, f"in [{fmt(a)}, {fmt(b)}]"
    t = val(c["threshold"])
    lo, hi = (t, math.inf) if c["direction"] in ("above", "at_least") else (-math.inf, t)
    return lo, hi, f"{SYMBOL[c['direction']]} {fmt(t)}"


def null_value(c: dict) -> float:
    return 1.0 if c.get("unit") == "ratio" else 0.0


def judge(effect: float, lo: float, hi: float, c: dict, short=(), not_judged: str = "") -> tuple[str, str]:
    """THE verdict rule (module docstring): (verdict, reason)."""
    if not_judged:
        return "not judged", not_judged
    if short:
        return "inconclusive", "too little evidence: " + "; ".join(short)
    if not all(np.isfinite(v) for v in (effect, lo, hi)):
        return "inconclusive", "no finite effect/CI"
    a, b, _ = holds_region(c)
    null = null_value(c)
    symmetric = np.isfinite(a) and np.isfinite(b) and (math.isclose(a + b, 2 * null) or  # ±margin, or [1/m, m]
                                                       (null == 1.0 and a > 0 and math.isclose(a * b, 1.0)))
    smaller = ("; different from the null but smaller than the margin"
               if symmetric and a < null < b and (lo > null or hi < null) else "")
    if "interval" in c:
        iv = f"[{fmt(a)}, {fmt(b)}]"
        if a <= lo and hi <= b:
            return "holds", f"CI inside {iv}{smaller}"
        if hi < a or lo > b:
            return "contradicted", f"CI wholly outside {iv}"
        return "inconclusive", f"CI straddles {iv}"
    d = c["direction"]
    t = a if d in ("above", "at_least") else b
    ok = {"above": lo > t, "at_least": lo >= t, "below": hi < t, "at_most": hi <= t}[d]
    bad = {"above": hi <= t, "at_least": hi < t, "below": lo >= t, "at_most": lo > t}[d]
    if ok:
        extra = ""
        if d == "at_most" and lo > null and t > null:
            extra = "; different from the null but smaller than the margin"
        if d == "at_least" and hi < null and t < null:
            extra = "; different from the null but smaller than the margin"
        return "holds", f"whole CI {SYMBOL[d]} {fmt(t)}{extra}"
    if bad:
        return "contradicted", f"the CI excludes every value {SYMBOL[d]} {fmt(t)}"
    return "inconclusive", f"CI straddles {fmt(t)}"


def decision_p(effect: float, lo: float, hi: float, n: int, c: dict, verdict: str, log_scale: bool = False) -> float:
    """The p-value of the decision a verdict makes, read off its 95% CI: with q the CI's 97.5% quantile
    (Student t with n − 1 df; normal for n < 2) and se the half-width on the side of the bound over q, the
    one-sided p of the effect against the bound the verdict rests on, doubled — so p < 0.05 exactly when the
    95% CI clears that bound, the unadjusted rule. Holds (interval): the larger of the two TOST p-values;
    contradicted: the bound the CI lies beyond. NaN when the verdict decides nothing. Ratios on the log scale."""
    if verdict not in DECIDED or not all(np.isfinite(v) for v in (effect, lo, hi)):
        return math.nan
    a, b, _ = holds_region(c)
    f = (lambda x: math.log(x) if x > 0 else -math.inf) if log_scale else (lambda x: x)
    e, lo, hi = f(effect), f(lo), f(hi)
    q = float(sp.t.ppf(0.975, n - 1)) if n >= 2 else float(sp.norm.ppf(0.975))
    dist = sp.t(n - 1) if n >= 2 else sp.norm()

    def p_beyond(bound, side):  # side +1: the effect lies above the bound; -1: below
        bound = f(bound)
        if not np.isfinite(bound):
            return 0.0
        half = (e - lo) if side > 0 else (hi - e)
        if half <= 0:
            return 0.0 if side * (e - bound) > 0 else 1.0
        return float(min(1.0, 2 * dist.sf(side * (e - bound) / (half / q))))

    if "interval" in c:
        if verdict == "holds":
            return max(p_beyond(a, +1), p_beyond(b, -1))
        return p_beyond(a, -1) if hi < f(a) else p_beyond(b, +1)
    d = c["direction"]
    t = a if d in ("above", "at_least") else b
    claimed = +1 if d in ("above", "at_least") else -1
    return p_beyond(t, claimed if verdict == "holds" else -claimed)


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its checks': contradicted if any is; holds if all hold; not run if none ran;
    else inconclusive ("not judged" and "still moving" checks count as undecided)."""
    if not verdicts:
        return "not run"
    if "contradicted" in verdicts:
        return "contradicted"
    if all(v == "holds" for v in verdicts):
        return "holds"
    if all(v == "not run" for v in verdicts):
        return "not run"
    return "inconclusive"


# ------------------------------------------------------------------------------------------------
# power: minimum detectable effect and seeds to decide
# ------------------------------------------------------------------------------------------------
def _t975(df: int) -> float:
    return float(sp.t.ppf(1 - ALPHA / 2, df))


def sigma_from_ci(lo: float, hi: float, n: int) -> float:
    """The seed-to-seed sd implied by a 95% t interval of a mean over n seeds."""
    if n < 2 or not (np.isfinite(lo) and np.isfinite(hi)):
        return math.nan
    return (hi - lo) / 2 * math.sqrt(n) / _t975(n - 1)


def t_power(effect_size: float, n: int) -> float:
    """Power of the two-sided one-sample t test at α = 0.05 for a standardised effect over n seeds
    (``statsmodels.stats.power.TTestPower``; where its noncentral-t evaluation fails numerically, far in the
    tail, the normal approximation Φ(δ√n − t) + Φ(−δ√n − t), which is exact there to many digits)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(np.squeeze(TTestPower().power(effect_size=effect_size, nobs=n, alpha=ALPHA,
                                                alternative="two-sided")))
    if not np.isfinite(p):
        nc, tc = effect_size * math.sqrt(n), _t975(n - 1)
        p = float(sp.norm.cdf(nc - tc) + sp.norm.cdf(-nc - tc))
    return p


def mde(sigma: float, n: int) -> float:
    """Minimum detectable effect: the true distance from a bound that n seeds (one-sample t, two-sided
    α = 0.05) detect with 80% power, in the units of ``sigma``."""
    if n < 2 or not np.isfinite(sigma):
        return math.nan
    if sigma == 0:
        return 0.0
    return float(brentq(lambda es: t_power(es, n) - POWER, 1e-9, 1e4, xtol=1e-10)) * sigma


def seeds_for(distance: float, sigma: float) -> float:
    """The fewest seeds (≥ 2) that detect a true distance ``distance`` from a bound with 80% power (two-sided
    α = 0.05); inf when the distance is 0 or the answer exceeds ``MAX_SEEDS``."""
    if not (np.isfinite(distance) and np.isfinite(sigma)):
        return math.nan
    if distance <= 0:
        return math.inf
    if sigma == 0:
        return 2.0
    es = distance / sigma
    if t_power(es, 2) >= POWER:
        return 2.0
    if t_power(es, MAX_SEEDS) < POWER:
        return math.inf
    lo, hi = 2, MAX_SEEDS  # power grows with n: bisect for the first n that reaches POWER
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if t_power(es, mid) >= POWER else (mid, hi)
    return float(hi)


def power(effect: float, lo: float, hi: float, n: int, c: dict, log_scale: bool = False) -> dict:
    """{mde, seeds_needed, decides_as, to_decide}: see the module docstring. ``log_scale``: the kind's CI is
    a t interval of a mean log ratio (mde is then reported as a factor, e.g. 1.05 = 5%)."""
    out = {"mde": math.nan, "seeds_needed": math.nan, "decides_as": "", "to_decide": ""}
    if c.get("deterministic"):
        out.update(mde=0.0, to_decide="deterministic: one measurement decides")
        return out
    a, b, _ = holds_region(c)
    f = (lambda x: math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)) if log_scale else (lambda x: x)
    if not all(np.isfinite(v) for v in (effect, lo, hi)) or n < 2 or (log_scale and min(effect, lo, hi) <= 0):
        out["to_decide"] = "no finite CI over ≥ 2 seeds yet: run ≥ 3 seeds"
        return out
    e, l_, h_ = f(effect), f(lo), f(hi)
    sigma = sigma_from_ci(l_, h_, n)
    m = mde(sigma, n)
    out["mde"] = math.exp(m) if log_scale and np.isfinite(m) else m
    fa = f(a) if np.isfinite(a) else a
    fb = f(b) if np.isfinite(b) else b
    inside = fa < e < fb if "interval" in c else (e > fa if c["direction"] in ("above", "at_least") else e < fb)
    if "interval" in c:
        dist = min(e - fa, fb - e) if inside else (fa - e if e <= fa else e - fb)
    else:
        t = fa if c["direction"] in ("above", "at_least") else fb
        dist = abs(e - t)
    out["decides_as"] = "holds" if inside else "contradicted"
    need = seeds_for(dist, sigma)
    out["seeds_needed"] = need
    if "interval" in c and not inside:
        reach = "holds is out of reach at this effect (it lies outside the region)"
    else:
        reach = ""
    if math.isinf(need):
        out["to_decide"] = "undecidable at the observed effect: it sits on a bound" + (f"; {reach}" if reach else "")
    else:
        out["to_decide"] = (f"~{int(need)} seeds would decide it as {out['decides_as']} at the observed effect and "
                            f"noise (80% power)" + (f"; {reach}" if reach else ""))
    return out


# ------------------------------------------------------------------------------------------------
def fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    a = abs(x)
    if a < 1e-12:
        return "0"
    if a < 1e-3 or a >= 1e5:
        return f"{x:.2e}"
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.3f}"
