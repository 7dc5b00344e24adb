"""Guards against citing noise: four flags per variant of ``summary.csv`` (``workflows.analysis.aggregate``),
marked in ``summary.md`` and the ``loss_by_variant`` figure.

- ``best_lr_at_edge`` (†): the variant's best LR is the smallest or the largest LR it was run at, so its
  optimum may lie outside the grid (true when it ran a single LR).
- ``still_improving`` (↗): at the compared LR the validation loss was still falling at the end of training
  by more than its own noise: the slope over the evaluations in the last third of training (OLS per seed,
  in nats per 10% of training), averaged over seeds, has its whole 95% Student-t interval below 0.
  (The old rule, a drop over the last 10% of more than 2% of the total drop from ln(vocab), could not fire
  on curves that still fell 0.023-0.044 nats over their last 20%.) NaN with fewer than three evaluations
  in that window.
- ``on_plateau`` (≈): the best mean final loss is within 0.1 nats of the training split's unigram
  entropy H₁ (the loss of predicting token frequencies alone; ``workflows.data.corpus.unigram_entropy``):
  |loss − H₁| ≤ 0.1. NaN when H₁ or the loss is unknown.
- ``not_past_trigram`` (⊘): the 95% upper bound of the final loss is not below a smoothed trigram model's
  loss on the same evaluation tokens (``workflows.data.ngram``): the model has not clearly learned more than
  n-gram statistics, so a comparison there is about how fast training starts. Not cited; the claims do not
  judge it. NaN without the references.

Each flag is True, False or NaN (not decidable); ``FLAG_RULES`` states each rule in words.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

IMPROVING_WINDOW = 1 / 3  # the slope over the evaluations in the last third of training ...
IMPROVING_MIN_EVALS = 3  # ... at least three of them, the last at the final step
PLATEAU_NATS = 0.1  # |best mean loss − unigram entropy| ≤ 0.1 nats
FLAGS = {"best_lr_at_edge": "†", "still_improving": "↗", "on_plateau": "≈", "not_past_trigram": "⊘"}
FLAG_RULES = {
    "best_lr_at_edge": "best LR at grid edge: the variant's best LR is the smallest or largest LR it was run "
                       "at, so its optimum may lie outside the grid",
    "still_improving": "still improving: at the compared LR the validation loss was still falling at the end: its "
                       "slope over the evaluations in the last third of training (OLS per seed, nats per 10% of "
                       "training; column final_slope) is below 0 with its whole 95% interval over seeds",
    "on_plateau": f"on the unigram plateau: the best mean loss is within {PLATEAU_NATS:g} nats of the training "
                  f"split's unigram entropy (the loss of predicting token frequencies alone)",
    "not_past_trigram": "not past n-gram statistics: the 95% upper bound of the final loss is not below a smoothed "
                        "trigram model's loss on the same evaluation tokens (workflows.data.ngram); such a row is not "
                        "cited and the claims do not judge it",
}


def best_lr_at_edge(best_lr: float, lrs) -> bool:
    """True when ``best_lr`` is the smallest or the largest of ``lrs`` (the LRs the variant ran)."""
    lrs = sorted(float(x) for x in lrs)
    return bool(np.isclose(best_lr, lrs[0], rtol=1e-9, atol=0) or np.isclose(best_lr, lrs[-1], rtol=1e-9, atol=0))


def improving_slope(val: pd.DataFrame, steps: float) -> tuple[float, float, float, int]:
    """(slope, low, high, seeds): the validation loss's slope over the evaluations in the last
    ``IMPROVING_WINDOW`` of training, in nats per 10% of training (OLS per seed over those evaluations,
    then the mean over seeds with its 95% Student-t interval; with one seed, the OLS slope's own t interval
    from its residuals). NaN without ≥ ``IMPROVING_MIN_EVALS`` evaluations in the window, the last at ``steps``."""
    nan = (math.nan, math.nan, math.nan, 0)
    if val is None or not len(val) or not np.isfinite(steps):
        return nan
    val = pd.DataFrame({"seed": val.seed.to_numpy(), "step": val.step.to_numpy(dtype=float),
                        "value": val.value.to_numpy(dtype=float)})
    val = val[np.isfinite(val.value) & (val.step >= (1 - IMPROVING_WINDOW) * steps * (1 - 1e-12))]
    per_seed = []
    for _, g in val.groupby("seed"):
        if g.step.nunique() >= IMPROVING_MIN_EVALS and (g.step == steps).any():
            fit = stats.linregress(g.step.to_numpy(), g.value.to_numpy())
            per_seed.append((fit.slope * 0.1 * steps, fit.stderr * 0.1 * steps, len(g) - 2))
    if not per_seed:
        return nan
    if len(per_seed) == 1:
        b, se, df = per_seed[0]
        q = stats.t.ppf(0.975, df) if df > 0 else math.inf
        return b, b - q * se, b + q * se, 1
    b = np.array([x[0] for x in per_seed])
    q = stats.t.ppf(0.975, len(b) - 1) * b.std(ddof=1) / math.sqrt(len(b))
    return float(b.mean()), float(b.mean() - q), float(b.mean() + q), len(b)


def still_improving(val: pd.DataFrame, steps: float, init_loss: float | None = None):
    """The ``still_improving`` rule on one variant's validation-loss history at its compared LR: the slope
    over the last third of training (``improving_slope``) is below 0 with its whole 95% interval — the loss
    was still falling by more than its own evaluation-to-evaluation noise. ``val``: columns seed, step, value.
    NaN (not decidable) without enough evaluations. ``init_loss`` is accepted for the old signature."""
    b, lo, hi, n = improving_slope(val, steps)
    if not n or not np.isfinite(hi):
        return math.nan
    return bool(hi < 0)


def past_ngram(loss_high: float, reference: float):
    """True when a final loss's 95% upper bound lies below an n-gram reference scored on the same tokens
    (``workflows.data.ngram``); NaN when either is unknown."""
    if not (np.isfinite(loss_high) and np.isfinite(reference)):
        return math.nan
    return bool(loss_high < reference)


def on_plateau(loss: float, unigram_entropy: float):
    """True when ``loss`` is within PLATEAU_NATS of the unigram entropy; NaN if either is unknown."""
    if not (np.isfinite(loss) and np.isfinite(unigram_entropy)):
        return math.nan
    return bool(abs(loss - unigram_entropy) <= PLATEAU_NATS)


def flag_marks(row) -> str:
    """'†↗≈'-style marks of a summary row (only flags that are true)."""
    return "".join(mark for col, mark in FLAGS.items() if _is_true(row.get(col)))


def _is_true(x) -> bool:
    return x is True or isinstance(x, (bool, np.bool_)) and bool(x) or (isinstance(x, str) and x == "True")
