# Train: one job per (variant, seed) trains that seed's LRs in one process (workflows.train.run_job)
# and writes each run to results/runs/<variant>/seed<s>/lr<lr>/ (metrics.json, history.parquet,
# config.yaml). Runs train in stores under WORK/runs/ that outlive a cut-off job, so a killed grid
# resumes without retraining a finished run. A diverged run is a successful run with a result.


rule train:
    input:
        data=DATA_META,
        peak=PEAK_FLOPS,
    output:
        directory(JOB_DIR),
    log:
        f"{LOGS}/train/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{LOGS}/benchmarks/train/{{variant}}/seed{{seed}}.tsv"
    conda:
        "../../environment.yml"
    params:
        # the job's run configs, key order normalised: a change to them (and only to them) re-runs this job
        runs=lambda w: shlex.quote(json.dumps(GRID.job_runs(w.variant, int(w.seed)), sort_keys=True)),
        outs=lambda w, output: " ".join(f"{output[0]}/lr{lr_label(lr)}" for lr in GRID.variant_lrs(w.variant)),
        work=lambda w, input: work_of(input.data),
    threads: config["threads"]
    resources:
        mem_mb=config["mem_mb"],
        runtime=config["runtime"],
        gpu=1 if config.get("gpu_mem_mb") else 0,
        gpu_mem_mb=config.get("gpu_mem_mb", 0),
    shell:
        "python -m workflows.train --json {params.runs} --out {params.outs} --work {params.work}"
        " --threads {threads} --peak-flops {input.peak} > {log} 2>&1"
