# Operator profile: where the time of a training step goes, by operator class (workflows.bench.opprofile).
#   results/op_profile.parquet, .md, figures/op_profile.png/.pdf   with a `profile:` mapping in the config:
#       profile: {variants: [baseline, layernorm], steps: 5}
# One job, alone on the machine (threads: every core), profiles one training step of each named grid variant
# (its first seed and LR) with torch.profiler; torch uses the grid's per-job threads, as the train jobs do.
PROFILE_CFG = config.get("profile") or {}
PROFILE_VARIANTS = list(PROFILE_CFG.get("variants") or [])
if PROFILE_CFG:
    _unknown = [v for v in PROFILE_VARIANTS if v not in GRID.variants]
    if _unknown or not PROFILE_VARIANTS:
        raise WorkflowError(f"invalid config: profile.variants={PROFILE_VARIANTS!r}: {_unknown or 'none given'} "
                            f"not in the grid; choose from {list(GRID.variants)}")
from workflows.plots import registry as plots_registry  # the figure names (imports no matplotlib)

PROFILE_TABLE = f"{RESULTS}/op_profile.parquet"
(PROFILE_FIGURE,) = plots_registry.names("op_profile")
PROFILE_OUTPUTS = ([PROFILE_TABLE, f"{RESULTS}/op_profile.md", *plots_registry.files(FIGURES, [PROFILE_FIGURE])]
                   if PROFILE_CFG else [])


if PROFILE_OUTPUTS:

    rule op_profile:
        """torch.profiler breakdown of one training step per variant: FLOP and time share by operator class."""
        output:
            table=PROFILE_TABLE,
            md=report(f"{RESULTS}/op_profile.md", caption="../report/op_profile.rst", category="Operator profile",
                      labels={"op_profile": "table", "format": "Markdown"}),
            png=report(f"{FIGURES}/{PROFILE_FIGURE}.png", caption="../report/op_profile.rst",
                       category="Operator profile", labels={"op_profile": "figure", "format": "PNG"}),
            pdf=f"{FIGURES}/{PROFILE_FIGURE}.pdf",
        log:
            f"{LOGS}/op_profile.log",
        conda:
            "../../environment.yml"
        threads: workflow.cores
        params:
            runs=shlex.quote(json.dumps({v: GRID.run_dict(v, GRID.variant_seeds(v)[0], GRID.variant_lrs(v)[0])
                                         for v in PROFILE_VARIANTS})),  # in the config's order
            steps=int(PROFILE_CFG.get("steps", 5)),
            torch_threads=int(config.get("threads", 1)),
        shell:
            "python -m workflows.bench.opprofile --variants-json {params.runs} --out {output.table} --md {output.md}"
            " --figure {output.png} --steps {params.steps} --threads {params.torch_threads} > {log} 2>&1"
