# Data: fetch the corpus once (network), tokenize with `datasets`, cache flat uint16 token files.
localrules: grid, tokens


rule grid:
    """What aggregate, figures and claims need to know about the grid (order, baseline, families)."""
    output:
        f"{RESULTS}/grid.json",
    log:
        f"{LOGS}/grid.log",
    conda:
        "../../environment.yml"
    params:
        summary=shlex.quote(json.dumps(GRID.summary())),
    shell:
        "python -c 'import sys; from workflows.io import write_text; write_text(sys.argv[1], sys.argv[2])' {output} {params.summary}"
        " > {log} 2>&1"


rule tokens:
    """Token files + meta.json (sha256 of text, tokenizer and token files) for config['data']."""
    output:
        DATA_META,
    params:
        data=shlex.quote(json.dumps(config["data"], sort_keys=True)),
        work=lambda w, output: work_of(output[0]),
    log:
        f"{LOGS}/data/{DATA_KEY}.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m workflows.data --json {params.data} --work {params.work} > {log} 2>&1"


rule peak_flops:
    """Peak matmul FLOP/s of the training device, measured once (the MFU denominator)."""
    output:
        PEAK_FLOPS,
    threads: config["threads"]
    resources:
        gpu=1 if config.get("gpu_mem_mb") else 0,
    log:
        f"{LOGS}/device/peak_flops.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m workflows.train.device --out {output} --threads {threads} > {log} 2>&1"


NGRAM = f"{RESULTS}/ngram.json"
_NGRAM_RUN = GRID.run_config(GRID.baseline, GRID.variant_seeds(GRID.baseline)[0], GRID.variant_lrs(GRID.baseline)[0])
NGRAM_CONTEXT = _NGRAM_RUN.model.context_length
# the final score's windows (train.final_eval_windows; None: the whole split): the references score the same targets
NGRAM_WINDOWS = _NGRAM_RUN.train.final_eval_windows


rule ngram:
    """Smoothed n-gram references (unigram, bigram, trigram, 5-gram; workflows.data.ngram) fitted on the training
    split and scored on the targets the runs' final score uses (every window of the validation split, or the
    train.final_eval_windows evenly spaced ones)."""
    input:
        DATA_META,
    output:
        NGRAM,
    params:
        data=shlex.quote(json.dumps(config["data"], sort_keys=True)),
        work=lambda w, input: work_of(input[0]),
        context=NGRAM_CONTEXT,
        windows="" if NGRAM_WINDOWS is None else f" --windows {NGRAM_WINDOWS}",
    log:
        f"{LOGS}/ngram.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m workflows.data.ngram --data-json {params.data} --work {params.work} --context {params.context}"
        "{params.windows} --out {output} > {log} 2>&1"
