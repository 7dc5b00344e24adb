"""Hyperparameter sweeps: declared once in a grid config, expanded into one variant per value.

    sweeps:
      ffn_ratio:                                   # the family; its variants are ffn_ratio_1 ... ffn_ratio_8
        values: [1, 2, 8/3, 4, 8]                  # numbers, null, or fractions written "a/b"
        set: {model.d_ff: round(value * d_model)}  # field -> expression of `value` and the base model
        model: {ffn: gelu}                         # optional fixed overrides for every value
        reference: 4                               # the rule-of-thumb value (marked in the sweep's figure)
        scale: log                                 # the figure's x axis: log | linear
        metric: loss                               # loss (nats/token) | bpb (bits/byte: across tokenizers)
        lrs: [0.001, 0.003, 0.01]                  # optional, as for a variant; also seeds

``set`` maps a dotted field (``model.*``, ``train.*`` or ``data.*``) to an expression. Expressions are
arithmetic (+ - * / // ** and parentheses) over ``value``, the base model's fields (``d_model``,
``n_layers``, ``n_heads``, ``head_dim`` (resolved), ``d_ff`` (resolved), ``vocab_size``, ...), the
functions ``round``, ``int``, ``min``, ``max``, and ``iso_nonembed_d_model(n_layers, multiple)``: the
d_model (a multiple of ``multiple``) whose model with ``n_layers`` layers has the non-embedding parameter
count closest to the base model's (Kaplan et al. 2020's aspect-ratio comparison). A plain ``value``
sets the field to the value itself (``null`` included: e.g. gradient clipping off).

Expansion happens before the grid is validated, so a bad sweep (unknown field, an expression that
fails, a value the axis rejects, two sweeps or a sweep and a variant with the same variant name)
stops the pipeline before any job runs, naming the sweep and the value.
"""
from __future__ import annotations

import ast
import copy
import math
import operator
from fractions import Fraction

from models.checks import ConfigError
from models.config import ModelConfig

from workflows.grid.config import DataConfig

SECTIONS = ("model", "train", "data")
SCALES = ("log", "linear")
METRICS = ("loss", "bpb")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.Mod: operator.mod}


def parse_value(v):
    """A sweep value: a number, None, a bool, or a fraction string "a/b" (kept exact for labels)."""
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, str):
        try:
            return Fraction(v.replace(" ", ""))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"value {v!r} is not a number, null, a boolean or a fraction 'a/b'")


def value_label(v) -> str:
    """Path-safe label of a sweep value: 4 -> '4', 0.1 -> '0.1', 8/3 -> '2.67', None -> 'off'."""
    if v is None:
        return "off"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, Fraction) and v.denominator != 1:
        return f"{float(v):.3g}"
    return f"{float(v):g}" if isinstance(v, float) else str(int(v))


def plain(v):
    """The value as YAML/JSON will carry it (fractions as floats)."""
    return float(v) if isinstance(v, Fraction) else v


def evaluate(expr, names: dict, functions: dict):
    """Evaluate an arithmetic expression (a YAML number or string) over ``names`` and ``functions``."""
    if not isinstance(expr, str):
        return expr
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"expression {expr!r} is not valid: {e.msg}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ConfigError(f"expression {expr!r}: unknown name {node.id!r}; known: {sorted(names)}")
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            if node.func.id not in functions:
                raise ConfigError(f"expression {expr!r}: unknown function {node.func.id!r}; known: {sorted(functions)}")
            return functions[node.func.id](*[ev(a) for a in node.args])
        raise ConfigError(f"expression {expr!r}: only arithmetic on numbers, names and "
                          f"{sorted(functions)} is allowed")

    try:
        out = ev(tree)
    except ConfigError:
        raise
    except (ZeroDivisionError, TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"expression {expr!r} failed: {e}") from None
    return float(out) if isinstance(out, Fraction) else out


def _base_names(model: dict, data: dict) -> dict:
    """The base model's fields as expression names (resolved: head_dim, d_ff, vocab_size)."""
    mc = ModelConfig.from_dict({"vocab_size": DataConfig.from_dict(data or {}).vocab_size, **model})
    names = {k: v for k, v in mc.to_dict().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    names.update(head_dim=mc.dim_head, d_ff=mc.ffn_dim, n_kv_heads=mc.kv_heads)
    return names


def nonembed_params(model: dict, vocab_size: int) -> int:
    """Kaplan et al.'s non-embedding parameters of a model config (built on the meta device)."""
    import torch

    from models import build, count_params

    with torch.device("meta"):
        return count_params(build(ModelConfig.from_dict({**model, "vocab_size": vocab_size})))["nonembed"]


def iso_nonembed_solver(model: dict, vocab_size: int):
    """iso_nonembed_d_model(n_layers, multiple[, ffn_ratio]): the d_model whose model with ``n_layers``
    layers (and, if given, d_ff = round(ffn_ratio · d_model)) has the non-embedding parameter count closest
    to the base model's (Kaplan et al. 2020 Fig. 5 compare shapes at fixed non-embedding parameters). The
    number of query and KV heads is kept, so the head dimension is d_model / n_heads and d_model runs over
    multiples of lcm(multiple, 2·n_heads) (an even head dimension, as RoPE needs). Returns the solver and
    ``shape(d_model, n_layers, ffn_ratio)``, the model overrides of that shape."""
    base = nonembed_params(model, vocab_size)
    mc = ModelConfig.from_dict({**model, "vocab_size": vocab_size})

    def shape(d, n_layers, ffn_ratio=None):
        over = {**model, "d_model": int(d), "n_layers": int(n_layers), "n_heads": mc.n_heads,
                "n_kv_heads": mc.kv_heads}
        over.pop("head_dim", None)
        over.pop("d_ff", None)
        if ffn_ratio:
            over["d_ff"] = max(1, round(ffn_ratio * d))
        return over

    def solve(n_layers, multiple=1, ffn_ratio=None):
        n_layers, multiple = int(n_layers), int(multiple)
        if n_layers < 1 or multiple < 1 or (ffn_ratio is not None and not ffn_ratio > 0):
            raise ConfigError(f"iso_nonembed_d_model({n_layers}, {multiple}, {ffn_ratio}): needs n_layers >= 1, "
                              "multiple >= 1 and ffn_ratio > 0")
        step = math.lcm(multiple, 2 * mc.n_heads)
        best, best_err = None, math.inf
        for d in range(step, 64 * mc.d_model + 1, step):
            err = nonembed_params(shape(d, n_layers, ffn_ratio), vocab_size) - base
            if abs(err) < best_err:
                best, best_err = d, abs(err)
            if err > 0:
                break
        return best

    return solve, shape


def _set_path(spec: dict, path: str, value, where: str) -> None:
    section, _, key = path.partition(".")
    if section not in SECTIONS or not key or "." in key:
        raise ConfigError(f"{where}: field {path!r} must be 'model.X', 'train.X' or 'data.X'")
    spec.setdefault(section, {})[key] = value


def expand(config: dict) -> tuple[dict, dict]:
    """(variants, sweeps summary): the config's variants followed by one variant per sweep value
    (family = sweep name, named ``<sweep>_<value label>``); the summary (per sweep: x label, reference,
    scale and its (variant, value, label) list) is what the sweep figures and claims read."""
    sweeps = config.get("sweeps") or {}
    variants = copy.deepcopy(dict(config.get("variants") or {}))
    base_model, base_data = config.get("model") or {}, config.get("data") or {}
    summary = {}
    for name, sw in sweeps.items():
        where = f"sweep {name!r}"
        if not isinstance(sw, dict) or not sw.get("values"):
            raise ConfigError(f"{where}: needs a non-empty list 'values'")
        unknown = sorted(set(sw) - {"values", "set", "model", "train", "data", "reference", "scale", "metric",
                                    "lrs", "seeds", "description", "x"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: values, set, model, train, data, "
                              "reference, scale, metric, x, lrs, seeds, description")
        if sw.get("scale", "linear") not in SCALES:
            raise ConfigError(f"{where}: scale={sw['scale']!r}; choose one of {list(SCALES)}")
        if sw.get("metric", "loss") not in METRICS:
            raise ConfigError(f"{where}: metric={sw['metric']!r}; choose one of {list(METRICS)}")
        if not isinstance(sw.get("set"), dict) or not sw["set"]:
            raise ConfigError(f"{where}: needs 'set', a mapping of field -> expression of value")
        fixed_model = {**base_model, **(sw.get("model") or {})}
        fixed_data = {**base_data, **(sw.get("data") or {})}
        try:
            names = _base_names(fixed_model, fixed_data)
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
        functions = {"round": round, "int": int, "min": min, "max": max}
        if any("iso_nonembed_d_model" in str(e) for e in sw["set"].values()):
            functions["iso_nonembed_d_model"], shape = iso_nonembed_solver(fixed_model, names["vocab_size"])
        values = []
        for raw in sw["values"]:
            try:
                v = parse_value(raw)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
            label = value_label(v)
            vname = f"{name}_{label}"
            if vname in variants:
                raise ConfigError(f"{where}, value {raw!r}: variant name {vname!r} is already taken "
                                  "(by a variant or another sweep value)")
            spec = {"family": name, "model": dict(sw.get("model") or {}), "train": dict(sw.get("train") or {})}
            if sw.get("data"):
                spec["data"] = dict(sw["data"])
            for path, expr in sw["set"].items():
                try:
                    val = plain(v) if expr == "value" else evaluate(expr, {**names, "value": plain(v)}, functions)
                except ConfigError as e:
                    raise ConfigError(f"{where}, value {raw!r}, {path}: {e}") from None
                _set_path(spec, path, val, f"{where}, value {raw!r}")
            if "iso_nonembed_d_model" in functions and "d_model" in spec["model"]:
                shaped = shape(spec["model"]["d_model"], spec["model"].get("n_layers", fixed_model.get("n_layers", 4)))
                for k in ("n_heads", "n_kv_heads"):  # keep the head counts (head_dim follows d_model)
                    spec["model"].setdefault(k, shaped[k])
                spec["model"].setdefault("head_dim", None)
            for k in ("lrs", "seeds"):
                if sw.get(k):
                    spec[k] = sw[k]
            settings = ", ".join(f"{p}={_get(spec, p)}" for p in sw["set"])
            spec["description"] = f"{sw.get('x', name)} = {raw}: {settings}"
            spec = {k: v for k, v in spec.items() if v != {}}
            variants[vname] = spec
            values.append({"variant": vname, "value": plain(v), "label": label})
        summary[name] = {"x": sw.get("x", name), "reference": plain(parse_value(sw["reference"]))
                         if sw.get("reference") is not None else None,
                         "scale": sw.get("scale", "linear"), "metric": sw.get("metric", "loss"), "values": values,
                         "description": sw.get("description", "")}
    return variants, summary


def _get(spec: dict, path: str):
    section, _, key = path.partition(".")
    return (spec.get(section) or {}).get(key)
