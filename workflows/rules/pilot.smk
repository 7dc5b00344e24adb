# LR pilot: with `lr_pilot: {seeds: [...]}` in the config, each variant with several candidate LRs first trains
# every (pilot seed, candidate LR) in its pilot job (RESULTS/pilot/<variant>/seed<s>/lr<lr>/); rule assign_lrs
# (at the pilot's priority: every piloted evaluation job waits on it) turns them into RESULTS/lr_assignment.json
# (workflows.analysis.pilot: the candidate with the lowest mean capped loss) and pilot_runs.csv; the evaluation
# jobs (rule train) then train their seeds at the assigned LR only. Nothing without an lr_pilot.
LR_ASSIGNMENT = f"{RESULTS}/lr_assignment.json"
PILOT_JOB_DIR = f"{RESULTS}/pilot/{{variant}}"
PILOT_OUTPUTS = []
if GRID.lr_pilot is not None:
    PILOT_OUTPUTS = [LR_ASSIGNMENT, f"{RESULTS}/pilot_runs.csv"]

    rule train_pilot:
        """One variant's pilot runs (every pilot seed x candidate LR) in one process, as rule train."""
        input:
            data=DATA_META,
            peak=PEAK_FLOPS,
        output:
            directory(PILOT_JOB_DIR),
        log:
            f"{LOGS}/pilot/{{variant}}.log",
        benchmark:
            f"{LOGS}/benchmarks/pilot/{{variant}}.tsv"
        conda:
            "../../environment.yml"
        wildcard_constraints:
            variant="|".join(re.escape(v) for v in GRID.pilot_variants()) or "no-pilot-variant",
        priority: lambda w: 10**9 + GRID.pilot_steps(w.variant)  # before the evaluation jobs: they wait on it
        params:
            runs=lambda w: shlex.quote(json.dumps(GRID.pilot_job_runs(w.variant), sort_keys=True)),
            outs=lambda w, output: " ".join(f"{output[0]}/{run_subdir(d['seed'], d['train']['lr'])}"
                                            for d in GRID.pilot_job_runs(w.variant)),
            work=lambda w, input: work_of(input.data),
        threads: config["threads"]
        resources:
            mem_mb=config["mem_mb"],
            runtime=lambda w: config["runtime"] * len(GRID.pilot_job_runs(w.variant)),
            gpu=1 if config.get("gpu_mem_mb") else 0,
            gpu_mem_mb=config.get("gpu_mem_mb", 0),
        shell:
            "python -m workflows.train --json {params.runs} --out {params.outs} --work {params.work}"
            " --threads {threads} --peak-flops {input.peak} --gpu-mem-mb {resources.gpu_mem_mb} > {log} 2>&1"

    rule assign_lrs:
        """Each variant's LR from its pilot runs (or its one candidate): what the evaluation jobs train at."""
        input:
            grid=f"{RESULTS}/grid.json",
            jobs=[PILOT_JOB_DIR.format(variant=v) for v in GRID.pilot_variants()],
        output:
            assignment=LR_ASSIGNMENT,
            runs=f"{RESULTS}/pilot_runs.csv",
        log:
            f"{LOGS}/assign_lrs.log",
        conda:
            "../../environment.yml"
        # as the pilot's jobs: every piloted evaluation job waits on it, so it must not queue behind a probe
        priority: 10**9
        params:
            out=lambda w, output: os.path.dirname(output.assignment),  # RESULTS
        shell:
            "python -m workflows.analysis.pilot --grid {input.grid} --runs {input.jobs} --out {params.out} > {log} 2>&1"
