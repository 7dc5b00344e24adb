# Ladder: with `ladder:` in the config, every variant trains at every rung (<variant>@<rung>); this rule turns
# the run table into the compute multipliers (workflows.analysis.ladder): results/ladder.csv/.md, ladder_trend.csv and
# the figures ladder_curves and compute_multiplier. Nothing without a ladder.
from workflows.plots import registry as plots_registry  # the figure names (imports no matplotlib)

LADDER_FIGURES = plots_registry.names("ladder")
LADDER_OUTPUTS = []
if GRID.ladder:
    LADDER_OUTPUTS = [f"{RESULTS}/ladder.csv", f"{RESULTS}/ladder.md", f"{RESULTS}/ladder_trend.csv",
                      f"{RESULTS}/ladder_decisions.csv"] + plots_registry.files(FIGURES, LADDER_FIGURES)

    rule ladder:
        input:
            runs=f"{RESULTS}/runs.parquet",
            grid=f"{RESULTS}/grid.json",
            data_meta=DATA_META,  # the unigram-entropy reference line
        output:
            csv=f"{RESULTS}/ladder.csv",
            md=report(f"{RESULTS}/ladder.md", caption="../report/ladder.rst", category="Across scale",
                      labels={"ladder": "table", "format": "Markdown"}),
            trend=f"{RESULTS}/ladder_trend.csv",
            decisions=f"{RESULTS}/ladder_decisions.csv",
            png=[report(f"{FIGURES}/{name}.png", caption="../report/ladder.rst", category="Across scale",
                        labels={"ladder": name, "format": "PNG"}) for name in LADDER_FIGURES],
            pdf=[f"{FIGURES}/{name}.pdf" for name in LADDER_FIGURES],
        log:
            f"{LOGS}/ladder.log",
        conda:
            "../../environment.yml"
        params:
            out=lambda w, output: os.path.dirname(output.csv),  # RESULTS
            figures=lambda w, output: os.path.dirname(output.png[0]),  # FIGURES
        shell:
            "python -m workflows.analysis.ladder --runs {input.runs} --grid {input.grid} --out {params.out}"
            " --figures {params.figures} --data-meta {input.data_meta} > {log} 2>&1"
