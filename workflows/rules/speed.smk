# Speed: side-by-side throughput of the variants whose speed claims this grid can judge (both arms in the grid):
#   results/speed.parquet  one job that takes every core (workflows.bench.speed), read by the claims' speed checks
# and the throughput figure; the grid jobs' own tokens/s share cores and are reported, never judged.
import yaml as _yaml

with open(CLAIMS_REGISTRY) as _f:  # the variants of the speed checks whose two arms this grid has, in grid order
    _speed = {v for cl in (_yaml.safe_load(_f) or {}).get("claims") or [] for c in cl.get("checks") or []
              if c.get("kind") == "speed_ratio" and {c.get("treatment"), c.get("control")} <= set(GRID.variants)
              for v in (c["treatment"], c["control"])}
SPEED_VARIANTS = [v for v in GRID.variants if v in _speed]
SPEED_TABLE = f"{RESULTS}/speed.parquet"


rule speed:
    """Side-by-side throughput of the variants the speed claims compare (workflows.bench.speed): one job that takes
    every core, so no other job runs beside it; torch uses the grid's per-job threads."""
    output:
        SPEED_TABLE,
    log:
        f"{LOGS}/speed.log",
    conda:
        "../../environment.yml"
    threads: workflow.cores
    params:
        runs=shlex.quote(json.dumps({v: GRID.run_dict(v, GRID.variant_seeds(v)[0], GRID.variant_lrs(v)[0])
                                     for v in SPEED_VARIANTS}, sort_keys=True)),
        torch_threads=int(config.get("threads", 1)),
        reps=int((config.get("speed") or {}).get("reps", 7)),
        steps=int((config.get("speed") or {}).get("steps", 20)),
    shell:
        "python -m workflows.bench.speed --runs-json {params.runs} --out {output} --reps {params.reps}"
        " --steps {params.steps} --threads {params.torch_threads} > {log} 2>&1"
