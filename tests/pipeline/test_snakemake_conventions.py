"""Snakemake conventions, checked without running a job: `snakemake --lint` finds nothing (every rule
has its conda env, no globals in shell commands, no '+' path composition), and a plain `snakemake`
from the repository root uses the default workflow profile (workflows/profiles/default, found through
the root-level `profiles` link) so that rerun-incomplete and keep-going hold without flags."""
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "config" / "micro.yaml"
DEFAULT_PROFILE = REPO / "workflows" / "profiles" / "default"

pytestmark = pytest.mark.slow


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`snakemake ARGS` as a user types it in `cwd` (no -s: the Snakefile and profiles/ are found
    there), with no user-level profile from the environment."""
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_lint_finds_nothing(tmp_path):
    proc = snakemake("--lint", "--directory", str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-6000:]
    assert "Congratulations, your workflow is in a good condition!" in out, out[-3000:]


def test_every_rule_runs_in_the_environment_file():
    """The conda env each rule names (`--sdm conda`) is environment.yml, resolved from its .smk file."""
    rules = sorted((REPO / "workflows" / "rules").glob("*.smk"))
    envs = [(smk, line.strip()) for smk in rules for line in smk.read_text().splitlines()
            if line.strip().startswith('"') and line.strip().endswith('.yml"')]
    assert envs
    for smk, env in envs:
        assert (smk.parent / env.strip('"')).resolve() == REPO / "environment.yml", (smk, env)
    spec = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    assert "torch==2.13.0" in pip, pip  # the torch .ci/setup installs, as the CPU build


def test_profile_link_points_at_the_default_profile():
    assert (REPO / "profiles").is_symlink()
    assert (REPO / "profiles" / "default").resolve() == DEFAULT_PROFILE.resolve()
    profile = yaml.safe_load((DEFAULT_PROFILE / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True and profile["keep-going"] is True


def test_plain_snakemake_uses_the_default_profile(tmp_path):
    """A file left incomplete by a killed job: a plain dry run plans to redo it (the profile's
    rerun-incomplete), while the same run with `--workflow-profile none` stops, as Snakemake does
    without the flag."""
    target = "results/grid.json"
    (tmp_path / "results").mkdir()
    (tmp_path / target).write_text("{}")
    marker = tmp_path / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(target.encode()).decode()
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"external_jobid": None}))
    args = ("-n", "--directory", str(tmp_path), "--configfile", str(MICRO), "--", target)

    plain = snakemake(*args)
    out = plain.stdout + plain.stderr
    assert plain.returncode == 0, out[-3000:]
    assert "Using workflow specific profile profiles/default for setting default command line arguments" in out
    # rerun-incomplete: Snakemake forces the jobs of incomplete files (unmarked, the file is up to date)
    assert "rule grid:" in out and "reason: Forced execution" in out, out[-3000:]

    without = snakemake("--workflow-profile", "none", *args)
    out = without.stdout + without.stderr
    assert without.returncode != 0 and "--rerun-incomplete" in out, out[-3000:]
