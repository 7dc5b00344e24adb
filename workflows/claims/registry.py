"""The claims registry (config/claims.yaml): loading and validation.

Every bound is fixed before the runs, in the check's raw unit: ``margin`` is a number (nats, a ratio, a
fraction) with its ``rationale``; a noise-scaled margin (``sigmas``, "2σ of seeds") is rejected by name,
because with it a noisier experiment passes an equivalence more easily (Lakens 2017). A check may state
the ``published`` effect it reproduces; the loader rejects a check whose holds region excludes it (the
check would then contradict its own source).
"""
from __future__ import annotations

import math

import yaml

from workflows.analysis.selection import MODES

from . import kinds as _kinds  # noqa: F401  (registers the kinds)
from .kinds import KINDS
from .verdict import DIRECTIONS, holds_region

COMMON_KEYS = {"id", "what", "kind", "interval", "direction", "threshold", "margin", "rationale", "published",
               "min_seeds", "min_lrs", "unit", "deterministic", "note", "primary", "engaged"}
ENGAGED_KEYS = {"metric", "arm", "transform", "above", "below", "what"}
NOISE_SCALED = ("sigmas", "sigma", "sd", "std", "se")


class RegistryError(ValueError):
    """The claims registry is malformed; the message names the claim, the check and the field."""


def _bound(x, where: str):
    if isinstance(x, str) and x.strip() in ("margin", "+margin", "-margin"):
        return x.strip()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RegistryError(f"{where}: {x!r} must be a number, 'margin' or '-margin'")
    return float(x)


def _margin(m, where: str) -> float:
    if isinstance(m, dict):
        scaled = [k for k in m if k in NOISE_SCALED]
        if scaled:
            raise RegistryError(f"{where}: margin.{scaled[0]} is a noise-scaled margin; a margin is fixed before "
                                "the runs in raw units (nats, a ratio, a fraction): give margin: <number> with its "
                                "rationale")
        raise RegistryError(f"{where}: margin must be a number in the check's unit (got a mapping {sorted(m)})")
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0:
        raise RegistryError(f"{where}: margin={m!r} must be a positive number in the check's unit")
    return float(m)


def validate_check(c: dict, where: str, defaults: dict) -> dict:
    if not isinstance(c, dict):
        raise RegistryError(f"{where}: a check must be a mapping")
    kind = c.get("kind")
    if kind not in KINDS:
        raise RegistryError(f"{where}: kind={kind!r}; choose one of {sorted(KINDS)}")
    spec = KINDS[kind]
    missing = sorted(spec.required - set(c))
    if missing:
        raise RegistryError(f"{where}: kind {kind!r} needs {missing}")
    unknown = sorted(set(c) - COMMON_KEYS - spec.required - spec.optional)
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {unknown} for kind {kind!r}; allowed: "
                            f"{sorted(COMMON_KEYS | spec.required | spec.optional)}")
    if not c.get("id") or not c.get("what"):
        raise RegistryError(f"{where}: a check needs an id and a 'what'")
    has_interval = "interval" in c
    has_direction = "direction" in c or "threshold" in c
    if has_interval == has_direction:
        raise RegistryError(f"{where}: give either interval: [lo, hi] or direction + threshold")
    out = {**{k: v for k, v in defaults.items() if k in ("min_seeds", "min_lrs")}, **c,
           "unit": c.get("unit", spec.unit)}
    if "at" in spec.optional:
        out.setdefault("at", defaults.get("at", "shared"))
        if out["at"] not in MODES:
            raise RegistryError(f"{where}: at={out['at']!r}; choose one of {list(MODES)}")
    elif "at" in c:
        raise RegistryError(f"{where}: kind {kind!r} takes no 'at'")
    if has_interval:
        iv = c["interval"]
        if not isinstance(iv, list) or len(iv) != 2:
            raise RegistryError(f"{where}: interval must be [lo, hi]")
        out["interval"] = [_bound(iv[0], where), _bound(iv[1], where)]
    else:
        if c.get("direction") not in DIRECTIONS or "threshold" not in c:
            raise RegistryError(f"{where}: direction must be one of {list(DIRECTIONS)} with a threshold")
        out["threshold"] = _bound(c["threshold"], where)
    uses_margin = any(isinstance(v, str) for v in out.get("interval", [out.get("threshold")]))
    if uses_margin != ("margin" in c):
        raise RegistryError(f"{where}: 'margin' in a bound needs margin: <number> (and a margin needs a bound "
                            "that names it)")
    if "margin" in c:
        out["margin"] = _margin(c["margin"], where)
    a, b, _ = holds_region(out)
    if has_interval and a > b:
        raise RegistryError(f"{where}: interval {c['interval']} has lo > hi")
    if "published" in c:
        p = c["published"]
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise RegistryError(f"{where}: published={p!r} must be the published effect as a number in the check's unit")
        if not a <= float(p) <= b:
            raise RegistryError(f"{where}: the published effect {p} lies outside the check's holds region "
                                f"[{a}, {b}]: the check would contradict its own source")
    if kind == "probe":
        modes = [k for k in ("by", "reduce", "stat") if k in c]
        if len(modes) > 1:
            raise RegistryError(f"{where}: give at most one of by / reduce / stat")
        if c.get("by", "depth") != "depth" or c.get("reduce", "max") not in ("max", "min") \
                or c.get("stat", "loglog_slope") != "loglog_slope":
            raise RegistryError(f"{where}: by: depth, reduce: max|min, stat: loglog_slope")
    if c.get("where") not in (None, "diverged"):
        raise RegistryError(f"{where}: where={c['where']!r}; only 'diverged' is supported")
    if c.get("transform") not in (None, "abs"):
        raise RegistryError(f"{where}: transform={c['transform']!r}; only 'abs' is supported")
    if not isinstance(c.get("primary", False), bool):
        raise RegistryError(f"{where}: primary={c['primary']!r} must be true or false (a primary check is named "
                            "before the runs; the primary checks of a grid are Holm-adjusted together)")
    if "engaged" in c:
        e = c["engaged"]
        if not isinstance(e, dict) or set(e) - ENGAGED_KEYS or "metric" not in e \
                or e.get("arm") not in ("treatment", "control") or ("above" in e) == ("below" in e) \
                or e.get("transform") not in (None, "abs"):
            raise RegistryError(f"{where}: engaged must be {{metric, arm: treatment|control, above | below: <number>, "
                                f"transform: abs (optional), what}}: the measured condition under which the "
                                f"check's mechanism acts (got {e!r})")
    if c.get("device") not in (None, "cuda"):
        raise RegistryError(f"{where}: device={c['device']!r}; only 'cuda' is supported")
    for k in ("min_seeds", "min_lrs"):
        if not isinstance(out.get(k), int) or out[k] < 1:
            raise RegistryError(f"{where}: {k}={out.get(k)!r} must be a positive integer")
    return out


def load_registry(path_or_dict) -> dict:
    """Read and validate the registry; every check gets the defaults and a full id ('C1.a')."""
    if isinstance(path_or_dict, dict):
        reg = path_or_dict
    else:
        with open(path_or_dict) as f:
            reg = yaml.safe_load(f) or {}
    if not isinstance(reg.get("claims"), list) or not reg["claims"]:
        raise RegistryError("the registry needs a non-empty 'claims' list")
    defaults = {"min_seeds": 3, "min_lrs": 1, "at": "shared", **(reg.get("defaults") or {})}
    floors = defaults.pop("floors", None) or {}
    from .evidence import FLOORS

    unknown = sorted(set(floors) - set(FLOORS))
    if unknown:
        raise RegistryError(f"defaults.floors: unknown floor(s) {unknown}; allowed: {sorted(FLOORS)}")
    probes = reg.get("probes") or {}
    seen, claims = set(), []
    for i, cl in enumerate(reg["claims"]):
        cid = cl.get("id") if isinstance(cl, dict) else None
        where = f"claim {cid or i}"
        if not cid or cid in seen:
            raise RegistryError(f"{where}: missing or duplicate id")
        seen.add(cid)
        for k in ("title", "source", "published", "checks"):
            if not cl.get(k):
                raise RegistryError(f"{where}: missing {k!r}")
        if not isinstance(cl["source"], dict) or not cl["source"].get("paper"):
            raise RegistryError(f"{where}: source must be a mapping with paper (and arxiv, where, quote)")
        checks, ids = [], set()
        for c in cl["checks"]:
            w = f"{where} check {c.get('id') if isinstance(c, dict) else '?'}"
            c = validate_check(c, w, defaults)
            if c["id"] in ids:
                raise RegistryError(f"{w}: duplicate check id")
            ids.add(c["id"])
            if c["kind"] == "probe":
                arms = (probes.get(c["probe"]) or {}).get("arms") or {}
                if c["arm"] not in arms:
                    raise RegistryError(f"{w}: probe {c['probe']!r} has no arm {c['arm']!r} in the probes: section")
            c["full_id"] = f"{cid}.{c['id']}"
            checks.append(c)
        claims.append({**cl, "checks": checks})
    return {**reg, "claims": claims, "defaults": defaults, "floors": {**FLOORS, **floors}, "probes": probes}


def check_variants(c: dict) -> list[str]:
    """The grid variants a check reads (none for the probes' arms and the decode bench's)."""
    if c["kind"] in ("probe", "probe_delta", "decode_ratio"):
        return []
    if c["kind"] == "profile_share":
        return [c["variant"]] + ([c["control"]] if "control" in c else [])
    return list(c["variants"]) if c["kind"] == "spread" else [c["treatment"], c["control"]]


def compares(c: dict) -> str:
    """What a check compares, in one line of the scorecard."""
    if c["kind"] == "probe":
        return f"{c['probe']}:{c['arm']}"
    if c["kind"] == "probe_delta":
        return f"{c['probe']}:{c['arm']} vs {c['control_arm']}"
    if c["kind"] == "decode_ratio":
        return f"decode:{c['treatment']} vs {c['control']}"
    return " vs ".join(check_variants(c))
