# Claims: probes (measurements that are not training runs) and the replication scorecard.
#   results/probes/<probe>.parquet  one job per probe of the registry (workflows.probes)
#   results/claims.csv, .md, figures/claims.png/.pdf  verdict per check (workflows.claims)
import yaml as _yaml

from workflows.stats import BOOTSTRAP_SEED as _BOOT_SEED  # noqa: E402

CLAIMS_CFG = config.get("claims") or {}
CLAIMS_REGISTRY = repo_path(CLAIMS_CFG.get("registry", "config/claims.yaml"))
CLAIMS_GRIDS = [repo_path(g) for g in CLAIMS_CFG.get("grids", ["config/config.yaml", "config/cpu-full.yaml", "config/hparams.yaml", "config/paper.yaml"])]
with open(CLAIMS_REGISTRY) as _f:
    PROBE_SPECS = (_yaml.safe_load(_f) or {}).get("probes") or {}
PROBE_NAMES = sorted(PROBE_SPECS)
PROBE_FILES = [f"{RESULTS}/probes/{name}.parquet" for name in PROBE_NAMES]
CLAIM_OUTPUTS = [f"{RESULTS}/claims.csv", f"{RESULTS}/claims.md", f"{FIGURES}/claims.png", f"{FIGURES}/claims.pdf"]


rule probe:
    """One probe (arms from the registry, sizes from config['claims']['probes']) -> a long parquet table.
    The arms travel as a param, so editing a claim's threshold re-runs the scorecard, not the probes."""
    input:
        data=DATA_META,
    output:
        f"{RESULTS}/probes/{{probe}}.parquet",
    log:
        f"{LOGS}/probes/{{probe}}.log",
    conda:
        "../../environment.yml"
    wildcard_constraints:
        probe="|".join(PROBE_NAMES) or "none",
    threads: 1
    params:
        cfg=shlex.quote(json.dumps({"model": config.get("model", {}), "data": config["data"],
                                    "probes": CLAIMS_CFG.get("probes", {})}, sort_keys=True)),
        arms=lambda w: shlex.quote(json.dumps(PROBE_SPECS[w.probe].get("arms") or {}, sort_keys=True)),
        work=lambda w, input: work_of(input.data),
    shell:
        "python -m workflows.probes --probe {wildcards.probe} --config-json {params.cfg} --arms-json {params.arms}"
        " --out {output} --work {params.work} --threads {threads} > {log} 2>&1"


rule claims:
    """The scorecard: every check of the registry judged on runs.parquet and the probe tables."""
    input:
        runs=f"{RESULTS}/runs.parquet",
        grid=f"{RESULTS}/grid.json",
        registry=CLAIMS_REGISTRY,
        probes=PROBE_FILES,
    output:
        csv=f"{RESULTS}/claims.csv",
        md=report(f"{RESULTS}/claims.md", caption="../report/claims.rst", category="Claims",
                  labels={"claims": "scorecard", "format": "Markdown"}),
        png=report(f"{FIGURES}/claims.png", caption="../report/claims.rst", category="Claims",
                   labels={"claims": "effect sizes", "format": "PNG"}),
        pdf=f"{FIGURES}/claims.pdf",
    log:
        f"{LOGS}/claims.log",
    conda:
        "../../environment.yml"
    params:
        grids=" ".join(shlex.quote(g) for g in CLAIMS_GRIDS),
        seed=_BOOT_SEED,  # shown in the caption
    shell:
        "python -m workflows.claims --registry {input.registry} --runs {input.runs} --grid {input.grid}"
        " --probes {input.probes} --grids {params.grids} --csv {output.csv} --md {output.md}"
        " --figure {output.png} > {log} 2>&1"
