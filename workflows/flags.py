"""Guards against citing noise: three flags per variant of ``summary.csv`` (``workflows.aggregate``),
marked in ``summary.md`` and the ``loss_by_variant`` figure.

- ``best_lr_at_edge`` (†): the variant's best LR is the smallest or the largest LR it was run at, so its
  optimum may lie outside the grid (true when it ran a single LR).
- ``still_improving`` (↗): at the best LR, the mean over seeds of the validation loss fell, over the last
  10% of training, by more than 2% of its total drop from ℓ0 = ln(vocab): with s90 the latest
  evaluation step ≤ 0.9·steps, ℓ(s90) − ℓ(steps) > 0.02 · (ℓ0 − ℓ(steps)), the means taken over the
  seeds with a finite validation loss at both steps. NaN without an evaluation at the last step or
  at/before 0.9·steps.
- ``on_plateau`` (≈): the best mean final loss is within 0.1 nats of the training split's unigram
  entropy H₁ (the loss of predicting token frequencies alone; ``workflows.data.unigram_entropy``):
  |loss − H₁| ≤ 0.1. NaN when H₁ or the loss is unknown.

Each flag is True, False or NaN (not decidable); ``FLAG_RULES`` states each rule in words.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

IMPROVING_WINDOW = 0.1  # the last 10% of training steps
IMPROVING_FRACTION = 0.02  # ... still removes > 2% of the total drop from ℓ0
PLATEAU_NATS = 0.1  # |best mean loss − unigram entropy| ≤ 0.1 nats
FLAGS = {"best_lr_at_edge": "†", "still_improving": "↗", "on_plateau": "≈"}
FLAG_RULES = {
    "best_lr_at_edge": "best LR at grid edge: the variant's best LR is the smallest or largest LR it was run "
                       "at, so its optimum may lie outside the grid",
    "still_improving": f"still improving: at the best LR the validation loss (mean over seeds) fell over the last "
                       f"{IMPROVING_WINDOW:.0%} of training (from the latest evaluation at or before "
                       f"{1 - IMPROVING_WINDOW:g}·steps to the last step) by more than {IMPROVING_FRACTION:.0%} "
                       f"of its total drop from ℓ0 = ln(vocab)",
    "on_plateau": f"on the unigram plateau: the best mean loss is within {PLATEAU_NATS:g} nats of the training "
                  f"split's unigram entropy (the loss of predicting token frequencies alone)",
}


def best_lr_at_edge(best_lr: float, lrs) -> bool:
    """True when ``best_lr`` is the smallest or the largest of ``lrs`` (the LRs the variant ran)."""
    lrs = sorted(float(x) for x in lrs)
    return bool(np.isclose(best_lr, lrs[0], rtol=1e-9, atol=0) or np.isclose(best_lr, lrs[-1], rtol=1e-9, atol=0))


def still_improving(val: pd.DataFrame, steps: float, init_loss: float):
    """The ``still_improving`` rule on one variant's validation-loss history at its best LR.

    ``val``: columns seed, step, value (validation loss). With s90 the latest evaluation step ≤ 0.9·steps
    and ℓ(s) the mean over the seeds with a finite loss at both s90 and ``steps``:
    ℓ(s90) − ℓ(steps) > 0.02 · (ℓ0 − ℓ(steps)). NaN (not decidable) without such seeds or steps."""
    if val is None or not len(val) or not (np.isfinite(steps) and np.isfinite(init_loss)):
        return math.nan
    val = pd.DataFrame({"seed": val.seed.to_numpy(), "step": val.step.to_numpy(dtype=float),
                        "value": val.value.to_numpy(dtype=float)})
    val = val[np.isfinite(val.value)]
    steps = float(steps)
    early = val.step[val.step <= (1 - IMPROVING_WINDOW) * steps * (1 + 1e-12)]
    if not len(early) or not (val.step == steps).any():
        return math.nan
    s90 = float(early.max())
    if s90 >= steps:
        return math.nan
    at = val[val.step.isin([s90, steps])].pivot_table(index="seed", columns="step", values="value", aggfunc="mean")
    at = at.reindex(columns=[s90, steps]).dropna()
    if not len(at):
        return math.nan
    before, end = (float(x) for x in at.mean(axis=0))
    return bool(before - end > IMPROVING_FRACTION * (init_loss - end))


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
