"""The SLURM profile (workflows/profiles/slurm/config.yaml) without a cluster: it names the slurm
executor, the resources the rules use and the plugin reads, rules and groups that exist, and a
--cores that never caps a shipped grid's threads; Snakemake accepts it (dry run). Where `sinfo`
answers (a SLURM login node), the partitions it names exist. The end-to-end proof on a real
one-node cluster is workflows/cluster/slurm-smoke.sh (root, apt, about 5 minutes)."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "workflows/profiles/slurm/config.yaml"
RULES = REPO / "workflows/rules"

# resources snakemake-executor-plugin-slurm 2.8 turns into sbatch options (submit_string.py, utils.py)
PLUGIN_RESOURCES = {"slurm_partition", "slurm_account", "runtime", "mem_mb", "mem_mb_per_cpu",
                    "cpus_per_task", "cpus_per_gpu", "gpu", "gpu_model", "gres", "constraint", "qos",
                    "slurm_extra", "nodes", "tasks", "tasks_per_gpu", "mpi", "slurm_cluster"}


@pytest.fixture(scope="module")
def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def rules_source() -> str:
    return "\n".join(p.read_text() for p in sorted(RULES.glob("*.smk")))


def rule_block(name: str) -> str:
    src = rules_source()
    m = re.search(rf"^rule {name}:\n(.*?)(?=^\S|\Z)", src, re.M | re.S)
    assert m, f"rule {name} not in {RULES}"
    return m.group(1)


def rule_resources(name: str) -> set[str]:
    block = rule_block(name)
    m = re.search(r"^    resources:\n((?:        .*\n)+)", block, re.M)
    return set(re.findall(r"^        (\w+)\s*=", m.group(1), re.M)) if m else set()


def test_names_the_slurm_executor_and_cluster_settings(profile):
    assert profile["executor"] == "slurm"
    assert isinstance(profile["jobs"], int) and profile["jobs"] >= 1
    assert profile["latency-wait"] >= 5
    assert profile["rerun-incomplete"] is True


def test_default_resources_cover_what_sbatch_needs(profile):
    defaults = profile["default-resources"]
    for name in ("slurm_partition", "slurm_account", "runtime", "mem_mb"):
        assert name in defaults, f"default-resources lacks {name}"
    assert isinstance(defaults["runtime"], int) and defaults["runtime"] > 0
    assert isinstance(defaults["mem_mb"], int) and defaults["mem_mb"] > 0


def test_resources_are_ones_the_rules_use_or_the_plugin_reads(profile):
    train = rule_resources("train")
    assert {"mem_mb", "runtime", "gpu"} <= train, train   # what the profile's comments rely on
    assert "threads: config[\"threads\"]" in rule_block("train")   # -> --cpus-per-task
    named = set(profile["default-resources"])
    for rule, res in profile.get("set-resources", {}).items():
        rule_block(rule)   # the rule exists
        named |= set(res)
    unknown = named - PLUGIN_RESOURCES - train
    assert not unknown, f"resources neither a rule nor the slurm plugin uses: {unknown}"


def test_plugin_reads_the_resource_names(profile):
    spec = importlib.util.find_spec("snakemake_executor_plugin_slurm")
    if spec is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')")
    src = "\n".join(p.read_text() for p in Path(spec.origin).parent.glob("*.py"))
    named = set(profile["default-resources"]) | {
        r for res in profile.get("set-resources", {}).values() for r in res} | {"gpu"}
    for name in named:
        assert f'"{name}"' in src or f"'{name}'" in src or f".{name}" in src, \
            f"the installed slurm plugin never reads resource {name!r}"


def test_groups_bundle_existing_rules(profile):
    groups, components = profile.get("groups", {}), profile.get("group-components", {})
    for rule in groups:
        rule_block(rule)
    assert set(components) <= set(groups.values())
    assert all(isinstance(n, int) and n >= 1 for n in components.values())


@pytest.mark.parametrize("grid", ["config/config.yaml", "config/micro.yaml", "config/paper.yaml"])
def test_cores_never_caps_a_grids_threads(profile, grid):
    path = REPO / grid
    if not path.exists():
        pytest.skip(f"{grid} not in this checkout")
    threads = yaml.safe_load(path.read_text()).get("threads", 1)
    assert profile["cores"] >= threads, f"--cores {profile['cores']} would cap {grid}'s threads={threads}"


@pytest.mark.slow
def test_snakemake_accepts_the_profile(tmp_path):
    """A dry run of the micro grid through the profile: Snakemake and the plugin parse every setting."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--workflow-profile", str(PROFILE.parent),
           "--configfile", str(REPO / "config/micro.yaml"), "--config", f"results={tmp_path}/results",
           f"figures={tmp_path}/figures", f"logs={tmp_path}/logs", f"work={tmp_path}/work",
           "--", f"{tmp_path}/results/runs.parquet"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"^train\s+4$", out, re.M), out[-3000:]  # one train job per variant of the micro grid


def sinfo(*args: str) -> str | None:
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def test_partitions_exist_on_this_cluster(profile):
    partitions = sinfo("-o", "%P")
    if partitions is None:
        pytest.skip("no responding `sinfo`: not on a SLURM cluster")
    names = {p.rstrip("*") for p in partitions.split()}
    wanted = {profile["default-resources"]["slurm_partition"]} | {
        res["slurm_partition"] for res in profile.get("set-resources", {}).values() if "slurm_partition" in res}
    for p in wanted:
        if p:
            assert p in names, f"partition {p!r} of the profile is not on this cluster ({sorted(names)})"
        else:
            assert any(x.endswith("*") for x in partitions.split()), \
                "the profile leaves slurm_partition empty but this cluster has no default partition"
