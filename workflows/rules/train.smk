# Train: one job per (variant, seed, LR). A diverged run is a successful job with a result.


rule train:
    input:
        data=DATA_META,
        peak=PEAK_FLOPS,
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        history=f"{RUN_DIR}/history.parquet",
    log:
        LOGS + "/train/{variant}/seed{seed}/lr{lr}.log",
    benchmark:
        LOGS + "/benchmarks/train/{variant}/seed{seed}/lr{lr}.tsv"
    params:
        # the run's full config, key order normalised: a change to it (and only to it) re-runs this job
        run=lambda w: shlex.quote(json.dumps(GRID.run_dict(w.variant, int(w.seed), GRID.lr_of(w.variant, w.lr)), sort_keys=True)),
    threads: config["threads"]
    resources:
        mem_mb=config["mem_mb"],
        runtime=config["runtime"],
        gpu=1 if config.get("gpu_mem_mb") else 0,
        gpu_mem_mb=config.get("gpu_mem_mb", 0),
    shell:
        "{PY} -m workflows.train --json {params.run} --out {RESULTS}/runs/{wildcards.variant}/seed{wildcards.seed}/lr{wildcards.lr}"
        " --work {WORK} --threads {threads} --peak-flops {input.peak} > {log} 2>&1"
