# Aggregate: every finished run → tidy pandas tables.
TABLES = [f"{RESULTS}/{name}" for name in
          ("runs.csv", "runs.parquet", "history.parquet", "summary.csv", "summary.md", "summary.tex")]


rule aggregate:
    input:
        grid=f"{RESULTS}/grid.json",
        jobs=job_dirs(),  # each train job's folder of runs (lr<lr>/metrics.json, history.parquet)
        data_meta=DATA_META,  # the training split's unigram entropy (the plateau flag)
        ngram=NGRAM,  # n-gram references on the evaluation tokens (the not_past_trigram flag)
        assignment=[LR_ASSIGNMENT] if GRID.lr_pilot is not None else [],
    output:
        TABLES,
    log:
        f"{LOGS}/aggregate.log",
    conda:
        "../../environment.yml"
    params:
        # every run each variant names, in grid order; VARIANT=FOLDER: a run shared with an earlier variant
        runs=lambda w: " ".join(shlex.quote(r) for r in aggregate_runs()),
        out=lambda w, output: os.path.dirname(output[0]),  # RESULTS
        assigned=lambda w, input: f"--assignment {input.assignment}" if input.assignment else "",
    shell:
        "python -m workflows.analysis.aggregate --grid {input.grid} --runs {params.runs} --out {params.out}"
        " --data-meta {input.data_meta} --ngram {input.ngram} {params.assigned} > {log} 2>&1"
