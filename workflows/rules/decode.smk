# Decode: with `decode:` in the config, KV-cached decoding speed of MHA / GQA / MQA measured side by side in one
# job that takes every core (workflows.bench.decode): results/decode.parquet (tokens/s and KV-cache bytes per arm × rep ×
# batch × context) and figures/decode.png/.pdf. Nothing without a `decode:` mapping (`decode: {}` = the defaults).
from workflows.plots import registry as plots_registry  # the figure names (imports no matplotlib)

DECODE_CFG = config.get("decode")
DECODE_OUTPUTS = []
(DECODE_FIGURE,) = plots_registry.names("decode")
if DECODE_CFG is not None:
    DECODE_TABLE = f"{RESULTS}/decode.parquet"
    DECODE_OUTPUTS = [DECODE_TABLE, *plots_registry.files(FIGURES, [DECODE_FIGURE])]

    rule decode:
        """Decode tokens/s of the grid's model at MHA, GQA and MQA (only n_kv_heads differs), every arm in turn
        per (batch, context) cell with the order rotated each rep; torch takes every core of the job."""
        output:
            DECODE_TABLE,
        log:
            f"{LOGS}/decode.log",
        conda:
            "../../environment.yml"
        threads: workflow.cores
        params:
            batch=" ".join(str(int(b)) for b in DECODE_CFG.get("batch", [1, 8, 64])),
            context=" ".join(str(int(c)) for c in DECODE_CFG.get("context", [128, 512, 1024])),
            reps=int(DECODE_CFG.get("reps", 5)),
            steps=int(DECODE_CFG.get("steps", 8)),
            model=shlex.quote(json.dumps(config.get("model") or {}, sort_keys=True)),
            # decode.model: fields over the grid's model (default: workflows.bench.decode.DECODE_SCALE)
            overrides=(f"--overrides-json {shlex.quote(json.dumps(DECODE_CFG['model'], sort_keys=True))}"
                       if DECODE_CFG.get("model") is not None else ""),
        shell:
            "python -m workflows.bench.decode --out {output} --batch {params.batch} --context {params.context}"
            " --reps {params.reps} --steps {params.steps} --model-json {params.model} {params.overrides}"
            " --threads {threads} > {log} 2>&1"

    rule decode_figure:
        """Decode tokens/s vs context per batch size (hue = attention kind) and the KV cache's size."""
        input:
            DECODE_TABLE,
        output:
            png=report(f"{FIGURES}/{DECODE_FIGURE}.png", caption="../report/decode.rst", category="Decoding",
                       labels={"figure": DECODE_FIGURE, "format": "PNG"}),
            pdf=f"{FIGURES}/{DECODE_FIGURE}.pdf",
        log:
            f"{LOGS}/decode_figure.log",
        conda:
            "../../environment.yml"
        params:
            out=lambda w, output: os.path.dirname(output.png),  # FIGURES
        shell:
            "python -m workflows.bench.decode --plot {input} --figures {params.out} > {log} 2>&1"
