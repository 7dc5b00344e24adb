"""archbench's pipeline steps, in the order the data flows:

data → train → aggregate → figures → claims (with probes), plus the shared config schema.
Each step is an importable module and a command (``python -m workflows.<step> --help``);
the Snakemake rules in ``workflows/rules/`` call these commands.
"""
