# Shared by every rule: the validated config, the grid of runs, paths and the Python to call.
import json
import os
import re
import shlex
import sys

# jobs run `python -m workflows.*` from the working directory: make the repo importable there too, and
# `python` the interpreter running Snakemake (as activating its venv would); with `--sdm conda` each
# job activates the rule's conda env (environment.yml) first, whose `python` then comes first instead.
REPO = os.path.dirname(os.path.abspath(workflow.main_snakefile))
sys.path.insert(0, REPO)
os.environ.update(
    PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
    PATH=os.pathsep.join(filter(None, [os.path.dirname(sys.executable), os.environ.get("PATH")])),
)

from snakemake.utils import validate

validate(config, "../schemas/config.schema.json")

# the grid and its configs only: parsing the workflow imports no torch (tests/pipeline/test_imports.py)
from workflows.grid.grid import Grid, lr_label  # noqa: E402
from workflows.grid.config import DataConfig, DataError, offset_probe_seeds  # noqa: E402

try:
    GRID = Grid.from_config(config)
except (ValueError, DataError) as e:  # ConfigError (a ValueError) / DataError: name the field, run nothing
    raise WorkflowError(f"invalid config: {e}") from None
# seed_offset shifts the probes' seeds too (claims.probes.seeds, default workflows.grid.config.DEFAULT_PROBE_SEEDS)
if GRID.seed_offset:
    config["claims"] = {**(config.get("claims") or {})}
    config["claims"]["probes"] = offset_probe_seeds((config["claims"].get("probes") or {}), GRID.seed_offset)
# one line at start-up: runs named / trained / shared (an identical run is trained once: Grid.dedup)
print(GRID.dedup_line(), file=sys.stderr)

RESULTS, FIGURES, WORK, LOGS = config["results"], config["figures"], config["work"], config["logs"]
DATA_KEY = DataConfig.from_dict(config["data"]).key()
DATA_META = f"{WORK}/data/{DATA_KEY}/meta.json"
PEAK_FLOPS = f"{WORK}/device/peak_flops.json"
JOB_DIR = f"{RESULTS}/runs/{{variant}}"  # one train job per variant: its runs are JOB_DIR/seed<s>/lr<lr>/

wildcard_constraints:
    variant=r"[A-Za-z0-9][A-Za-z0-9_.@-]*",  # '@': a ladder's <variant>@<rung>


def repo_path(path):
    """A config path as given if it exists from the working directory, else relative to the repo."""
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO, path)


def work_of(data_meta):
    """The work folder WORK of the corpus's DATA_META (WORK/data/KEY/meta.json): rules take it from
    their own input or output (`lambda w, input: work_of(input.data)`), not from a global."""
    return os.path.dirname(os.path.dirname(os.path.dirname(data_meta)))


def job_dirs():
    """The train jobs' folders: one per variant with runs of its own (a variant whose runs all are
    aliases of an earlier variant's has none)."""
    return [JOB_DIR.format(variant=v) for v in GRID.trained_variants()]


def job_run_subdirs(variant):
    """seed<s>/lr<lr> of each of variant's runs inside its JOB_DIR, in its train job's order (GRID.job_runs);
    seed<s> on an LR-pilot grid (the LR is assigned when the job runs)."""
    pilot = GRID.lr_pilot is not None
    return [run_subdir(d["seed"], None if pilot else d["train"]["lr"]) for d in GRID.job_runs(variant)]


def run_subdir(seed, lr):
    return f"seed{seed}" if lr is None else f"seed{seed}/lr{lr_label(lr)}"


def aggregate_runs():
    """What aggregate reads, in grid order (variant, seed, LR), one entry per run each variant names: its
    own run's folder, or VARIANT=FOLDER for a run it shares with an earlier variant (FOLDER is that
    variant's run; aggregate files its rows under VARIANT too, numbers identical)."""
    out = []
    for v in GRID.variants:
        for s, lr in GRID.variant_runs(v):
            owner, oseed, olr = GRID.owner(v, s, lr)
            folder = f"{JOB_DIR.format(variant=owner)}/{run_subdir(oseed, olr)}"
            out.append(folder if owner == v else f"{v}={folder}")
    return out


TRAINED_VARIANTS = "|".join(re.escape(v) for v in GRID.trained_variants())  # the train rule's wildcard

# the claims registry: read by the speed rule (which variants to time) and the claims rules
CLAIMS_CFG = config.get("claims") or {}
CLAIMS_REGISTRY = repo_path(CLAIMS_CFG.get("registry", "config/claims.yaml"))
