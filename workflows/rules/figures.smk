# Figures: the aggregated tables → seaborn figures (PNG + PDF) in FIGURES; every PNG goes into
# `snakemake --report` with its caption (workflows/report/<name>.rst). One job draws them all.
# the names of workflows.plots.figures.FIGURES (kept here so parsing the workflow does not import matplotlib)
FIGURE_NAMES = ["loss_by_variant", "loss_vs_lr", "divergence_heatmap", "throughput", "loss_curves",
                "activations", "grad_norms", "attn_logits", "weight_norms"]
SWEEP_FIGURES = [f"sweep_{name}" for name in GRID.sweeps]  # one per hyperparameter sweep (caption: sweep.rst)
FIGURE_FILES = [f"{FIGURES}/{name}.{fmt}" for name in FIGURE_NAMES + SWEEP_FIGURES for fmt in ("png", "pdf")]


rule figures:
    input:
        grid=f"{RESULTS}/grid.json",
        runs=f"{RESULTS}/runs.parquet",
        summary=f"{RESULTS}/summary.csv",
        history=f"{RESULTS}/history.parquet",
        data_meta=DATA_META,  # the unigram-entropy reference line
        ngram=NGRAM,  # the bigram and trigram reference lines (read from RESULTS/ngram.json)
        speed=f"{RESULTS}/speed.parquet",  # side-by-side throughput (rule speed), beside the grid jobs' tokens/s
    output:
        [report(f"{FIGURES}/{name}.png", caption=f"../report/{name}.rst", category="Figures",
                labels={"figure": name, "format": "PNG"}) for name in FIGURE_NAMES],
        [f"{FIGURES}/{name}.pdf" for name in FIGURE_NAMES],
        [report(f"{FIGURES}/{name}.png", caption="../report/sweep.rst", category="Sweeps",
                labels={"sweep": name.removeprefix("sweep_"), "format": "PNG"}) for name in SWEEP_FIGURES],
        [f"{FIGURES}/{name}.pdf" for name in SWEEP_FIGURES],
    log:
        f"{LOGS}/figures.log",
    conda:
        "../../environment.yml"
    params:
        names=" ".join(FIGURE_NAMES + SWEEP_FIGURES),
        results=lambda w, input: os.path.dirname(input.runs),  # RESULTS
        out=lambda w, output: os.path.dirname(output[0]),  # FIGURES
    shell:
        "python -m workflows.plots.figures --results {params.results} --grid {input.grid} --out {params.out} --only {params.names}"
        " --data-meta {input.data_meta} > {log} 2>&1"
