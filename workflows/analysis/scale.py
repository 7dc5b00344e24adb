"""The scale a result was measured at, stated once for every table and figure.

- ``human``: 12345 → "12.3k".
- ``scale_of``: (parameters, training tokens) of some run tables as short strings (the scorecard column).
- ``scale_line``: one line for a figure's subtitle: parameters (the baseline's, and the range over the
  variants), training tokens per run, seeds and device, from runs.parquet's ``params``,
  ``tokens_seen``, ``seed`` and ``device`` columns.

A figure puts that line under its title with ``workflows.plots.style.add_subtitle``.
"""
from __future__ import annotations

import pandas as pd


def human(n: float) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.3g}{unit}"
    return f"{int(n)}"


def _ints(frames, name) -> list[int]:
    return sorted({int(x) for f in frames if f is not None and name in f.columns for x in f[name].dropna()})


def scale_of(*frames) -> tuple[str, str]:
    """("params or min–max", "max training tokens") over the rows of ``frames``; "—" when unknown."""
    params, tokens = _ints(frames, "params"), _ints(frames, "tokens_seen")
    p = human(params[0]) if len(params) == 1 else f"{human(params[0])}–{human(params[-1])}" if params else "—"
    t = human(tokens[-1]) if tokens else "—"
    return p, t


def seeds_text(runs: pd.DataFrame, baseline: str | None = None) -> str:
    """'7 seeds', or where the variants train on different numbers of seeds (a grid whose arms name their own)
    '4–9 seeds per variant (baseline 9)'."""
    if "seed" not in runs.columns or not runs.seed.notna().any():
        return "seeds unknown"
    per = runs.groupby("variant").seed.nunique() if "variant" in runs.columns else pd.Series([runs.seed.nunique()])
    lo, hi = int(per.min()), int(per.max())
    if lo == hi:
        return f"{hi} seed{'s' if hi != 1 else ''}"
    return f"{lo}–{hi} seeds per variant" + (f" ({baseline} {int(per[baseline])})" if baseline in per.index else "")


def scale_line(runs: pd.DataFrame | None, baseline: str | None = None) -> str:
    """'scale: 210k params (baseline; 190k–260k over variants) · 82k training tokens per run · 2 seeds ·
    device: …'. Tokens per run: the longest run (diverged runs stop early); where the runs are planned at different
    lengths (a ladder's horizon arms), the baseline's with the range over runs."""
    if runs is None or not len(runs):
        return "scale: no training runs"
    params = _ints([runs], "params")
    base = runs[runs.variant == baseline] if baseline is not None and "variant" in runs.columns else runs.iloc[:0]
    base_params = _ints([base], "params")
    if base_params and len(base_params) == 1:
        p = f"{human(base_params[0])} params ({baseline}"
        p += f"; {human(params[0])}–{human(params[-1])} over variants)" if len(params) > 1 else ")"
    elif params:
        p = f"{human(params[0])} params" if len(params) == 1 else f"{human(params[0])}–{human(params[-1])} params"
    else:
        p = "params unknown"
    tokens = _ints([runs], "tokens_seen")
    t = f"{human(tokens[-1])} training tokens per run" if tokens else "training tokens unknown"
    if {"steps", "batch_size", "context_length"} <= set(runs.columns):  # runs planned at different lengths
        planned = sorted({int(x) for x in (runs.steps * runs.batch_size * runs.context_length).dropna()})
        base_planned = sorted({int(x) for x in (base.steps * base.batch_size * base.context_length).dropna()})
        if len(planned) > 1:
            span = f"{human(planned[0])}–{human(planned[-1])}"
            t = (f"{human(base_planned[-1])} training tokens per run ({baseline}; {span} over runs)" if base_planned
                 else f"{span} training tokens per run")
    s = seeds_text(runs, baseline)
    devices = sorted({str(x) for x in runs.device.dropna()}) if "device" in runs.columns else []
    dev = "device: " + (", ".join(devices) if devices else "unknown")
    return f"scale: {p} · {t} · {s} · {dev}"
