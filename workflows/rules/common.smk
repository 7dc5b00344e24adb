# Shared by every rule: the validated config, the grid of runs, paths and the Python to call.
import json
import os
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

from workflows.grid import Grid, lr_label  # noqa: E402
from workflows.data import DataConfig  # noqa: E402

try:
    GRID = Grid.from_config(config)
except ValueError as e:  # ConfigError / DataError: name the field, run nothing
    raise WorkflowError(f"invalid config: {e}") from None

RESULTS, FIGURES, WORK, LOGS = config["results"], config["figures"], config["work"], config["logs"]
DATA_KEY = DataConfig.from_dict(config["data"]).key()
DATA_META = f"{WORK}/data/{DATA_KEY}/meta.json"
PEAK_FLOPS = f"{WORK}/device/peak_flops.json"
JOB_DIR = f"{RESULTS}/runs/{{variant}}"  # one train job per variant: its runs are JOB_DIR/seed<s>/lr<lr>/

wildcard_constraints:
    variant=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def repo_path(path):
    """A config path as given if it exists from the working directory, else relative to the repo."""
    return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO, path)


def work_of(data_meta):
    """The work folder WORK of the corpus's DATA_META (WORK/data/KEY/meta.json): rules take it from
    their own input or output (`lambda w, input: work_of(input.data)`), not from a global."""
    return os.path.dirname(os.path.dirname(os.path.dirname(data_meta)))


def job_dirs():
    return [JOB_DIR.format(variant=v) for v in GRID.variants]


def job_run_subdirs(variant):
    """seed<s>/lr<lr> of each of variant's runs inside its JOB_DIR, in its train job's order (GRID.job_runs)."""
    return [f"seed{d['seed']}/lr{lr_label(d['train']['lr'])}" for d in GRID.job_runs(variant)]


def run_dirs():
    return [f"{JOB_DIR.format(variant=v)}/{sub}" for v in GRID.variants for sub in job_run_subdirs(v)]
