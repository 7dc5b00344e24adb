# archbench: data → train → aggregate → figures → claims.
#
#   snakemake --cores all                                   # the default CPU grid (config/config.yaml),
#                                                           # with profiles/default (= workflows/profiles/default)
#   snakemake --cores all --sdm conda                       # every rule in environment.yml's conda env
#   snakemake --cores all --configfile config/paper.yaml    # the paper-scale grid (GPU)
#   snakemake --cores all --configfile config/ladder.yaml   # every variant at 3 sizes: compute multipliers
#   snakemake --workflow-profile workflows/profiles/gpu     # several jobs share one GPU
#   snakemake --report results/report.html                  # figures with captions, one HTML file
from snakemake.utils import min_version

min_version("8.0")


# --configfile replaces the default grid instead of being merged into it
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"



report: "workflows/report/workflow.rst"


include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/pilot.smk"
include: "workflows/rules/train.smk"
include: "workflows/rules/aggregate.smk"
include: "workflows/rules/figures.smk"
include: "workflows/rules/speed.smk"
include: "workflows/rules/claims.smk"
include: "workflows/rules/ladder.smk"
include: "workflows/rules/decode.smk"
include: "workflows/rules/profile.smk"


rule all:
    default_target: True
    input:
        TABLES,
        PILOT_OUTPUTS,
        FIGURE_FILES,
        CLAIM_OUTPUTS,
        LADDER_OUTPUTS,
        DECODE_OUTPUTS,
        PROFILE_OUTPUTS,
