# Aggregate: every finished run → tidy pandas tables.
TABLES = [f"{RESULTS}/{name}" for name in
          ("runs.csv", "runs.parquet", "history.parquet", "summary.csv", "summary.md", "summary.tex")]


rule aggregate:
    input:
        grid=f"{RESULTS}/grid.json",
        metrics=run_files("metrics.json"),
        history=run_files("history.parquet"),
    output:
        TABLES,
    log:
        f"{LOGS}/aggregate.log",
    params:
        runs=lambda w: " ".join(run_dirs()),
    shell:
        "{PY} -m workflows.aggregate --grid {input.grid} --runs {params.runs} --out {RESULTS} > {log} 2>&1"
