# Figures: the aggregated tables → seaborn figures (PNG + PDF) in FIGURES; every PNG goes into
# `snakemake --report` with its caption (workflows/report/<name>.rst). One job draws them all.
from workflows.plots import registry as plots_registry  # the figure names (imports no matplotlib)

FIGURE_NAMES = plots_registry.names("grid")
SWEEP_FIGURES = plots_registry.sweep_names(GRID.sweeps)  # one per hyperparameter sweep (caption: sweep.rst)
FIGURE_FILES = plots_registry.files(FIGURES, FIGURE_NAMES + SWEEP_FIGURES)


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
        "python -m workflows.plots --results {params.results} --grid {input.grid} --out {params.out} --only {params.names}"
        " --data-meta {input.data_meta} > {log} 2>&1"
