# Train: one job per (variant, seed, LR). A diverged run is a successful job with a result.


rule run_config:
    """The run's full config; rewritten (and the run redone) only when its own values change."""
    output:
        f"{RUN_DIR}/config.yaml",
    params:
        run=lambda w: GRID.run_dict(w.variant, int(w.seed), GRID.lr_of(w.variant, w.lr)),
    run:
        import yaml
        from workflows.io import write_text

        write_text(output[0], yaml.safe_dump(params.run, sort_keys=False))


rule train:
    input:
        cfg=f"{RUN_DIR}/config.yaml",
        data=DATA_META,
        peak=PEAK_FLOPS,
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        history=f"{RUN_DIR}/history.parquet",
    log:
        LOGS + "/train/{variant}/seed{seed}/lr{lr}.log",
    benchmark:
        LOGS + "/benchmarks/train/{variant}/seed{seed}/lr{lr}.tsv"
    threads: config["threads"]
    resources:
        mem_mb=config["mem_mb"],
        runtime=config["runtime"],
        gpu=1 if config.get("gpu_mem_mb") else 0,
        gpu_mem_mb=config.get("gpu_mem_mb", 0),
    shell:
        "{PY} -m workflows.train --config {input.cfg} --out {RESULTS}/runs/{wildcards.variant}/seed{wildcards.seed}/lr{wildcards.lr}"
        " --work {WORK} --threads {threads} --peak-flops {input.peak} > {log} 2>&1"
