"""The ladder's expansion: a grid config's ``ladder`` (its rungs, the tokens rule, the fit) → one variant per
(variant, rung), named ``<variant>@<rung>``, validated before any job runs, naming the rung. The format of
``ladder`` and what is estimated from the runs: workflows/analysis/ladder.py. Runs when the grid is built (no
torch unless the config has a ladder: each rung's non-embedding parameters are counted on a model built on the
meta device).
"""
from __future__ import annotations

import copy
import re

from models.checks import ConfigError

from workflows.grid.config import DataConfig, deep_update

FITS = ("loglinear", "power")
MIN_RUNGS = {"loglinear": 3, "power": 4}  # a fit needs more rungs than parameters, or its R² is 1 by construction
RUNG_KEYS = ("model", "train", "lrs", "lr_scale", "baseline_only", "description")
LADDER_KEYS = ("rungs", "tokens_exponent", "fit", "horizons", "description")
HORIZON = "-x"  # the baseline trained for h × a rung's steps: arm "<baseline>-x<h>"
SCHEDULE = ("warmup_steps", "eval_every", "stats_every", "checkpoint_every")  # step counts that scale with steps
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*$")
SEP = "@"


def name_of(arm: str, rung: str) -> str:
    return f"{arm}{SEP}{rung}"


def _sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def horizon_arm(baseline: str, h: float) -> str:
    """The arm of the baseline trained for ``h`` × each rung's steps (its training-length curve)."""
    return f"{baseline}{HORIZON}{h:g}"


def _horizons(lad: dict) -> list[float]:
    """``ladder.horizons``, validated: training-length factors of the baseline around 1, at least one on each side."""
    hz = lad.get("horizons")
    if hz is None:
        return []
    if (not isinstance(hz, list) or not hz
            or not all(isinstance(h, (int, float)) and not isinstance(h, bool) and h > 0 for h in hz)):
        raise ConfigError(f"ladder.horizons={hz!r} must be a list of numbers > 0 (training-length factors of the "
                          "baseline, e.g. [0.667, 1.5])")
    if len(set(hz)) != len(hz) or 1 in hz:
        raise ConfigError(f"ladder.horizons={hz!r}: the factors must be distinct and not 1 (1 is the baseline)")
    if not (min(hz) < 1 < max(hz)):
        raise ConfigError(f"ladder.horizons={hz!r}: needs a factor below 1 and one above 1 (the baseline's "
                          "training-length curve on both sides of each rung)")
    return sorted(float(h) for h in hz)


def _scale_schedule(train: dict, ref: dict, factor: float, every: bool = False) -> dict:
    """``train`` with the schedule's step counts (``SCHEDULE``) set to ``ref``'s × ``factor``: those ``train`` does
    not set itself, or with ``every`` all of them (the steps changed, so every interval scales). Returns ``train``."""
    for k in SCHEDULE:
        if ref.get(k) and (every or k not in train):
            train[k] = max(1, round(ref[k] * factor))
    return train


def _at_rung(vs: dict, spec: dict, train: dict, scale: float, grid_lrs: list) -> dict:
    """Variant spec ``vs`` at rung ``spec``: the rung's model and ``train`` under the variant's own, and its LRs
    (the rung's list, or the variant's or the grid's × the rung's ``lr_scale``)."""
    new = copy.deepcopy({k: x for k, x in vs.items() if k != "lrs"})
    new["model"] = {**(spec.get("model") or {}), **(vs.get("model") or {})}
    new["train"] = {**train, **(vs.get("train") or {})}
    new = {k: x for k, x in new.items() if x != {}}
    new["lrs"] = [float(x) for x in (spec.get("lrs") or [_sig(x * scale) for x in (vs.get("lrs") or grid_lrs)])]
    return new


# ------------------------------------------------------------------------------------------------
# expansion: config → variants
def expand(config: dict, variants: dict) -> tuple[dict, dict | None, str]:
    """(variants, ladder summary, baseline name) with the ladder expanded; unchanged without a ladder."""
    lad = config.get("ladder")
    baseline = config["baseline"]
    if not lad:
        return variants, None, baseline
    from workflows.grid.sweeps import nonembed_params  # builds each rung's model (torch, on the meta device)

    if not isinstance(lad, dict):
        raise ConfigError("ladder must be a mapping with 'rungs'")
    unknown = sorted(set(lad) - set(LADDER_KEYS))
    if unknown:
        raise ConfigError(f"ladder: unknown key(s) {unknown}; allowed: {list(LADDER_KEYS)}")
    if config.get("sweeps"):
        raise ConfigError("ladder: a grid with a ladder may not also have sweeps (declare the sweep's values as "
                          "variants, or run the sweep in a grid of its own)")
    fit = lad.get("fit", "loglinear")
    if fit not in FITS:
        raise ConfigError(f"ladder.fit={fit!r}; choose one of {list(FITS)}")
    a = lad.get("tokens_exponent", 1.0)
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 2:
        raise ConfigError(f"ladder.tokens_exponent={a!r} must be a number in [0, 2] (1: fixed tokens per parameter)")
    horizons = _horizons(lad)
    taken = sorted(horizon_arm(baseline, h) for h in horizons if horizon_arm(baseline, h) in variants)
    if taken:
        raise ConfigError(f"ladder.horizons: variant name(s) {taken} are the baseline's horizon arms; rename them")
    rungs = lad.get("rungs")
    if not isinstance(rungs, dict) or not rungs:
        raise ConfigError("ladder.rungs must be a non-empty mapping rung -> {model, train, lrs | lr_scale, baseline_only}")
    if baseline not in variants:
        raise ConfigError(f"baseline={baseline!r} is not one of the variants {list(variants)}")
    base_model, base_train = config.get("model") or {}, config.get("train") or {}
    vocab = DataConfig.from_dict(config.get("data") or {}).vocab_size
    base_steps = int(base_train.get("steps", 0) or 0)
    full = [r for r, spec in rungs.items() if not (spec or {}).get("baseline_only")]
    if len(rungs) < MIN_RUNGS[fit]:
        raise ConfigError(f"ladder: {len(rungs)} rung(s); a {fit} fit needs ≥ {MIN_RUNGS[fit]} "
                          f"(more rungs than the form's parameters)")
    if len(full) < 2:
        raise ConfigError("ladder: needs ≥ 2 rungs where every variant trains (not baseline_only)")
    try:
        n_grid = nonembed_params(base_model, vocab)  # the tokens rule's reference: the grid's own model
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"ladder: the grid's model: {e}") from None
    out, summary_rungs = {}, []
    for r, spec in rungs.items():
        where = f"ladder rung {r!r}"
        spec = spec or {}
        if not isinstance(r, str) or not NAME.match(r) or SEP in r:
            raise ConfigError(f"{where}: a rung name is letters, digits, '_', '.' or '-' (no {SEP!r})")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a mapping with keys {list(RUNG_KEYS)}")
        unknown = sorted(set(spec) - set(RUNG_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {list(RUNG_KEYS)}")
        if "lrs" in spec and "lr_scale" in spec:
            raise ConfigError(f"{where}: set lrs or lr_scale, not both")
        scale = spec.get("lr_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ConfigError(f"{where}: lr_scale={scale!r} must be a number > 0")
        if "lrs" in spec and (not isinstance(spec["lrs"], list) or not spec["lrs"]
                              or not all(isinstance(x, (int, float)) and x > 0 for x in spec["lrs"])):
            raise ConfigError(f"{where}: lrs={spec['lrs']!r} must be a non-empty list of numbers > 0")
        model = deep_update(base_model, spec.get("model") or {})
        try:
            n = nonembed_params(model, vocab)
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
        train = dict(spec.get("train") or {})
        if "steps" not in train:
            if not base_steps:
                raise ConfigError(f"{where}: the grid's train.steps is needed to scale the tokens")
            factor = (n / n_grid) ** a
            train["steps"] = max(1, round(base_steps * factor))
        _scale_schedule(train, base_train, train["steps"] / base_steps if base_steps else 1.0)
        arms = [baseline] if spec.get("baseline_only") else list(variants)
        for v in arms:
            vs = variants[v] or {}
            clash = sorted(set((vs.get("model") or {})) & set(spec.get("model") or {}))
            clash += sorted(f"train.{k}" for k in set(vs.get("train") or {}) & set(spec.get("train") or {}))
            if clash:
                raise ConfigError(f"{where}: variant {v!r} sets {clash}, which the rung sets too; a rung sets the "
                                  "size, a variant its axis")
            new = _at_rung(vs, spec, train, scale, config["lrs"])
            new.update(rung=r, arm=v, baseline=name_of(baseline, r), description=f"{vs.get('description') or v} @ {r}")
            out[name_of(v, r)] = new
        for h in horizons if not spec.get("baseline_only") else []:  # the baseline's training-length curve here
            steps = max(1, round(train["steps"] * h))
            htrain = _scale_schedule({**train, "steps": steps}, train, steps / train["steps"], every=True)
            new = _at_rung(variants[baseline] or {}, spec, htrain, scale, config["lrs"])
            new.update(rung=r, arm=horizon_arm(baseline, h), baseline=name_of(baseline, r), horizon=h,
                       family="horizon", description=f"the baseline trained for {h:g} x the rung's steps ({steps}) @ {r}")
            out[name_of(horizon_arm(baseline, h), r)] = new
        summary_rungs.append({"rung": r, "model": spec.get("model") or {}, "steps": int(train["steps"]),
                              "nonembed_params": int(n), "baseline_only": bool(spec.get("baseline_only")),
                              "lrs": spec.get("lrs"), "lr_scale": spec.get("lr_scale"),
                              "description": spec.get("description", "")})
    order = {name: i for i, name in enumerate(out)}  # variant-major, then rung (the figures' order)
    arm_rank = {v: i for i, v in enumerate(variants)}  # the horizon arms right after the baseline
    arm_rank.update({horizon_arm(baseline, h): arm_rank[baseline] + (k + 1) / (len(horizons) + 1)
                     for k, h in enumerate(horizons)})
    out = dict(sorted(out.items(), key=lambda kv: (arm_rank[kv[1]["arm"]], order[kv[0]])))
    first = name_of(baseline, full[0])
    summary = {"baseline": baseline, "arms": list(variants), "rungs": summary_rungs, "fit": fit,
               "tokens_exponent": float(a), "description": lad.get("description", ""),
               "horizons": {horizon_arm(baseline, h): h for h in horizons}}
    return out, summary, first
