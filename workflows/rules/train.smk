# Train: one job per variant trains all its (seed, LR) runs in one process (workflows.train.loop.run_job)
# and writes each to results/runs/<variant>/seed<s>/lr<lr>/ (metrics.json, history.parquet,
# config.yaml). Runs train in stores under WORK/runs/ that outlive a cut-off job, so a killed grid
# resumes without retraining a finished run. A diverged run is a successful run with a result.
# Jobs with more training steps start first (priority), which balances the cores at the end of a grid.
# No run is trained twice: a run identical to an earlier variant's (same model, data, train, lr, seed;
# workflows.grid.grid.Grid.owner) is not in this variant's job, and a variant whose runs all are shared has
# no train job (aggregate reads the shared runs from the variant that trained them).


rule train:
    input:
        data=DATA_META,
        peak=PEAK_FLOPS,
        # a piloted variant waits for its assigned LR; a variant with one candidate LR has no pilot and starts at once
        # (its runs already carry that LR), which also leaves the probes for the end of the grid, where they fill
        # the cores the last train job leaves idle
        assignment=lambda w: [LR_ASSIGNMENT] if GRID.pilot_job_runs(w.variant) else [],
    output:
        directory(JOB_DIR),
    log:
        f"{LOGS}/train/{{variant}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train/{{variant}}.tsv"
    conda:
        "../../environment.yml"
    wildcard_constraints:
        variant=TRAINED_VARIANTS,  # only variants with runs of their own
    priority: lambda w: GRID.job_steps(w.variant)
    params:
        # the job's run configs, key order normalised: a change to them (and only to them) re-runs this job
        runs=lambda w: shlex.quote(json.dumps(GRID.job_runs(w.variant), sort_keys=True)),
        # derived from the output, so not a rerun trigger of its own (the run configs above are)
        outs=lambda w, output: " ".join(f"{output[0]}/{sub}" for sub in job_run_subdirs(w.variant)),
        work=lambda w, input: work_of(input.data),
        assigned=lambda w, input: f"--assigned-lrs {input.assignment}" if input.assignment else "",
    threads: config["threads"]
    resources:
        mem_mb=config["mem_mb"],
        runtime=lambda w: config["runtime"] * len(GRID.job_runs(w.variant)),  # minutes per run x runs
        gpu=1 if config.get("gpu_mem_mb") else 0,
        gpu_mem_mb=config.get("gpu_mem_mb", 0),
    shell:
        "python -m workflows.train --json {params.runs} --out {params.outs} --work {params.work}"
        " --threads {threads} --peak-flops {input.peak} --gpu-mem-mb {resources.gpu_mem_mb} {params.assigned}"
        " > {log} 2>&1"
