"""The import structure: no import cycle among the project's modules (read from the source, module-level and
function-level imports alike), the grid's modules and ``models.config`` import without torch, and Snakemake
parses the workflow (a dry run, and the rejection of a malformed config) with torch made unimportable."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "workflows")


# ---- the import graph ------------------------------------------------------------------------------
def modules_of(root: Path, packages) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules) -> str | None:
    """The project module ``name`` imports: itself, else its longest prefix that is one (an attribute of a
    module, ``pkg.mod.attr``); None outside the project."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules) -> set[str]:
    """The project modules ``module`` imports anywhere in its source (top level, functions, classes, branches):
    ``import a.b``, ``from a.b import c`` (``a.b.c`` when that is a module) and relative imports."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            targets = [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for t in targets:
            hit = _resolve(t, modules)
            if hit is not None and hit != module:
                out.add(hit)
    return out


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    modules = modules_of(root, packages)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, deterministic order)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def every_cycle(graph: dict[str, set[str]]) -> list[list[str]]:
    """``find_cycle`` until none is left, each found cycle broken at its closing edge (for the message)."""
    graph, out = {m: set(ns) for m, ns in graph.items()}, []
    while cycle := find_cycle(graph):
        out.append(cycle)
        graph[cycle[-2]].discard(cycle[-1])
    return out


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_sees_absolute_relative_and_function_level_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import thing\n",
        "pkg/b.py": "import os\nthing = 1\n",
        "pkg/sub/__init__.py": "from .. import a\n",
        "pkg/sub/c.py": "def f():\n    import pkg.b\n    from pkg.sub import d\n",
        "pkg/sub/d.py": "from ..b import thing\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": set(), "pkg.sub": {"pkg.a"},
                     "pkg.sub.c": {"pkg.b", "pkg.sub.d"}, "pkg.sub.d": {"pkg.b"}}
    assert find_cycle(graph) is None


@pytest.mark.parametrize("closing", ["from .a import x\n", "def late():\n    from pkg import a\n",
                                     "def late():\n    import pkg.a\n"])
def test_checker_finds_a_constructed_cycle(tmp_path, closing):
    """a -> b at module level; b -> a at module level or only inside a function: a cycle either way."""
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import y\nx = 1\n",
                      "pkg/b.py": "y = 2\n" + closing, "pkg/c.py": "from pkg import a\n"})
    graph = import_graph(tmp_path, ("pkg",))
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert every_cycle(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_no_import_cycle_in_the_project():
    graph = import_graph(REPO)
    assert {"models.config", "models.checks", "workflows.grid.grid", "workflows.grid.ladder"} <= set(graph)
    cycles = every_cycle(graph)
    assert not cycles, "import cycle(s):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_checks_module_is_a_leaf():
    """models/checks.py (ConfigError, check_types, from_mapping) imports only the standard library."""
    tree = ast.parse((REPO / "models" / "checks.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)


# ---- no torch where the workflow is parsed -----------------------------------------------------------
def test_grid_and_model_config_import_without_torch():
    code = ("import sys, workflows.grid.grid, workflows.grid.sweeps, workflows.grid.ladder, models.config\n"
            "from models import ConfigError, ModelConfig\n"
            "ModelConfig(); bad = [m for m in ('torch', 'models.custom', 'models.transformer') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def no_torch(tmp_path) -> dict:
    """An environment whose PYTHONPATH shadows torch by a package that cannot be imported."""
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('torch imported while parsing the workflow')\n")
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow.parent), env.get("PYTHONPATH")]))
    return env


def dry_run(tmp_path: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    wd = tmp_path / "wd"
    wd.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(REPO / "Snakefile"),
           "--directory", str(wd), *extra, "--config", f"work={tmp_path / 'work'}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dry_run_of_the_default_config_never_imports_torch(tmp_path, no_torch):
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch, capture_output=True, text=True)
    assert proc.returncode != 0 and "torch imported while parsing" in proc.stderr  # the shadow works
    proc = dry_run(tmp_path, no_torch)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule train:" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("section, field, value", [("model", "bogus_field", 1), ("data", "tokenizer", "bogus_tok")])
def test_malformed_config_is_rejected_by_name_without_torch(tmp_path, no_torch, section, field, value):
    """A model field (ConfigError) and a data field (DataError, raised before any data is fetched) are both refused
    as "invalid config" naming the field, not with a traceback."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config[section] = {**(config.get(section) or {}), field: value}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = dry_run(tmp_path, no_torch, "--configfile", str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid config" in out and f"{field}" in out and "Traceback" not in out, out[-3000:]
    assert "torch imported while parsing" not in out
