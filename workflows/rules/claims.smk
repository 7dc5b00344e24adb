# Claims: probes (measurements that are not training runs) and the replication scorecard.
#   results/probes/<probe>.parquet  one job per probe of the registry (workflows.bench.probes)
#   results/claims.csv, .md, figures/claims.png/.pdf  verdict per check (workflows.claims)
#   results/replication.csv, .md     with replicate_of: PATH, this run's verdicts against PATH's (workflows.analysis.replicate)
import yaml as _yaml

from workflows.analysis.stats import BOOTSTRAP_SEED as _BOOT_SEED  # noqa: E402
from workflows.grid.config import CLAIMS_GRIDS as DEFAULT_CLAIMS_GRIDS  # noqa: E402

CLAIMS_GRIDS = [repo_path(g) for g in CLAIMS_CFG.get("grids", DEFAULT_CLAIMS_GRIDS)]
with open(CLAIMS_REGISTRY) as _f:
    PROBE_SPECS = (_yaml.safe_load(_f) or {}).get("probes") or {}
PROBE_NAMES = sorted(PROBE_SPECS)
PROBE_FILES = [f"{RESULTS}/probes/{name}.parquet" for name in PROBE_NAMES]
CLAIM_OUTPUTS = [f"{RESULTS}/claims.csv", f"{RESULTS}/claims.md", f"{RESULTS}/claims_trajectory.csv",
                 *plots_registry.files(FIGURES, plots_registry.names("claims"))]  # claims, claims_trajectory
# other measured tables the checks read by name (workflows.claims --table NAME=PATH), when the config measures them
CLAIM_TABLES = {**({"decode": f"{RESULTS}/decode.parquet"} if config.get("decode") is not None else {}),
                **({"op_profile": f"{RESULTS}/op_profile.parquet"} if config.get("profile") else {})}


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
        "python -m workflows.bench.probes --probe {wildcards.probe} --config-json {params.cfg} --arms-json {params.arms}"
        " --out {output} --work {params.work} --threads {threads} > {log} 2>&1"


rule claims:
    """The scorecard: every check of the registry judged on runs.parquet and the probe tables."""
    input:
        runs=f"{RESULTS}/runs.parquet",
        history=f"{RESULTS}/history.parquet",  # every check of the final loss judged at each evaluation step
        ngram=NGRAM,  # arms not below the trigram reference are not judged
        grid=f"{RESULTS}/grid.json",
        registry=CLAIMS_REGISTRY,
        probes=PROBE_FILES,
        speed=SPEED_TABLE,
        tables=list(CLAIM_TABLES.values()),
    output:
        csv=f"{RESULTS}/claims.csv",
        md=report(f"{RESULTS}/claims.md", caption="../report/claims.rst", category="Claims",
                  labels={"claims": "scorecard", "format": "Markdown"}),
        png=report(f"{FIGURES}/claims.png", caption="../report/claims.rst", category="Claims",
                   labels={"claims": "effect sizes", "format": "PNG"}),
        pdf=f"{FIGURES}/claims.pdf",
        trajectory=f"{RESULTS}/claims_trajectory.csv",
        trajectory_png=report(f"{FIGURES}/claims_trajectory.png", caption="../report/claims_trajectory.rst",
                              category="Claims", labels={"claims": "verdicts against training time", "format": "PNG"}),
        trajectory_pdf=f"{FIGURES}/claims_trajectory.pdf",
    log:
        f"{LOGS}/claims.log",
    conda:
        "../../environment.yml"
    params:
        grids=" ".join(shlex.quote(g) for g in CLAIMS_GRIDS),
        seed=_BOOT_SEED,  # shown in the caption
        tables=" ".join(f"{k}={shlex.quote(v)}" for k, v in CLAIM_TABLES.items()),
    shell:
        "python -m workflows.claims --registry {input.registry} --runs {input.runs} --grid {input.grid}"
        " --probes {input.probes} --speed {input.speed} --table {params.tables} --grids {params.grids}"
        " --history {input.history} --ngram {input.ngram} --trajectory {output.trajectory}"
        " --csv {output.csv} --md {output.md}"
        " --figure {output.png} --trajectory-figure {output.trajectory_png} > {log} 2>&1"


# Replication: `--config seed_offset=1000 replicate_of=results results=results/replicate work=work/replicate`
# trains the same grid on other seeds and compares its scorecard with the earlier run's (in rule all then).
REPLICATE_OF = os.path.normpath(config["replicate_of"]) if config.get("replicate_of") else None
if REPLICATE_OF:
    if os.path.normpath(REPLICATE_OF) == os.path.normpath(RESULTS):
        raise WorkflowError(f"replicate_of={REPLICATE_OF!r} is this run's own results folder; set results= "
                            "to a new folder (and seed_offset to new seeds)")
    REPLICATION_OUTPUTS = [f"{RESULTS}/replication.csv", f"{RESULTS}/replication.md"]
    CLAIM_OUTPUTS += REPLICATION_OUTPUTS

    rule replication:
        """This run's scorecard (RESULTS) against an earlier run's of the same grid (replicate_of)."""
        input:
            original=f"{REPLICATE_OF}/claims.csv",
            replicate=f"{RESULTS}/claims.csv",
        output:
            csv=f"{RESULTS}/replication.csv",
            md=f"{RESULTS}/replication.md",
        log:
            f"{LOGS}/replication.log",
        conda:
            "../../environment.yml"
        params:
            original=lambda w, input: os.path.dirname(input.original),  # replicate_of
            results=lambda w, input: os.path.dirname(input.replicate),  # RESULTS
        shell:
            "python -m workflows.analysis.replicate {params.original} {params.results} --out {params.results} > {log} 2>&1"
