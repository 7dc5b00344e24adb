"""The checks every configuration dataclass of the project shares: ``ConfigError`` and the two generic helpers
``check_types`` (each field against its annotation) and ``from_mapping`` (a dataclass from a mapping, unknown
keys rejected by name). The model config, the data, train and run configs of the grid and the probes' settings
use them. A leaf: the standard library only, so any module may import it (the grid without torch)."""
from __future__ import annotations

import math
from dataclasses import fields


class ConfigError(ValueError):
    """A config field has an invalid value; the message names the field and what is allowed."""


def check_types(obj, error: type[Exception] = ConfigError) -> None:
    """Check every field of a (``from __future__ import annotations``) dataclass against its
    annotation: int, float, bool, str, list, and ``X | None``. Raises ``error`` naming the field."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        kind = f.type.replace(" | None", "")
        optional = "None" in f.type
        if value is None:
            if optional:
                continue
            raise error(f"{f.name} may not be null")
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, (int, float)) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(kind.split("[")[0], True)
        if kind.startswith(("list", "tuple")):
            ok = isinstance(value, (list, tuple))
        if not ok:
            raise error(f"{f.name}={value!r} must be of type {kind}{' or null' if optional else ''}")
        if kind == "float" and not math.isfinite(value):
            raise error(f"{f.name}={value!r} must be finite")


def from_mapping(cls, d, error: type[Exception] = ConfigError, what: str = "config"):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise error(f"the {what} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"unknown {what} field(s) {unknown}; allowed fields: {sorted(known)}")
    d = dict(d)
    for f in fields(cls):  # YAML 1.1 reads 3e-3 as a string: accept numeric strings for floats
        if f.type.startswith("float") and isinstance(d.get(f.name), str):
            try:
                d[f.name] = float(d[f.name])
            except ValueError:
                raise error(f"{f.name}={d[f.name]!r} must be a number") from None
    return cls(**d)
