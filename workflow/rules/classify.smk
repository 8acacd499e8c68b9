# Classify: the shard scores (made by embed_classify, or here from kept features), then one
# streaming aggregation per sample into the original's result files and a per-read summary.


# Kept features (keep_features: true) are scored by a job of their own, so changing only
# the classifier rescores without embedding again.
if KEEP_FEATURES:

    rule classify:
        input:
            features=f"{OUTDIR}/{{sample}}/features/{{shard}}.pt",
            done=f"{OUTDIR}/{{sample}}/features/{{shard}}.done",
            index=f"{OUTDIR}/{{sample}}/prepare/shards/{{shard}}.index.tsv",
            model=config["models"]["classifier"],
        output:
            f"{OUTDIR}/{{sample}}/scores/{{shard}}.tsv",
        params:
            registry=FAILED_REGISTRY,
            # Results built from this shard: withdrawn if its features turn out corrupted.
            derived=lambda wildcards: sample_results(wildcards.sample),
        log:
            f"{OUTDIR}/logs/classify/{{sample}}/{{shard}}.log",
        benchmark:
            f"{OUTDIR}/benchmarks/classify/{{sample}}/{{shard}}.tsv"
        threads: 1
        resources:
            # The feature file is memory-mapped and scored a window at a time.
            mem_mb=2000,
            runtime=60,
        conda:
            ENV
        script:
            "../scripts/classify.py"


rule aggregate:
    input:
        reads=prepared_reads,
        scores=shard_scores,
    output:
        predictions=f"{OUTDIR}/{{sample}}/prediction_results.txt",
        highest=f"{OUTDIR}/{{sample}}/prediction_results_highestscore.csv",
        summary=report(
            f"{OUTDIR}/{{sample}}/summary.tsv",
            caption="../report/summary.rst",
            category="Results",
            subcategory="{sample}",
        ),
        counts=f"{OUTDIR}/{{sample}}/counts.json",
    log:
        f"{OUTDIR}/logs/aggregate/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/aggregate/{{sample}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/aggregate.py"


rule sample_report:
    localrule: True  # an HTML page from counts.json: not worth a cluster job
    input:
        f"{OUTDIR}/{{sample}}/counts.json",
    output:
        report(
            f"{OUTDIR}/{{sample}}/report.html",
            caption="../report/sample.rst",
            category="Results",
            subcategory="{sample}",
        ),
    params:
        settings=lambda wildcards: {
            "input": " + ".join(sample_reads(wildcards)),
            "chunk_size": config["chunk_size"],
            "shard_size": config["shard_size"],
            "esm": config["models"]["esm"],
            "dnabert": config["models"]["dnabert"],
            "classifier": config["models"]["classifier"],
            "dtype": config["embed"]["dtype"],
        },
    log:
        f"{OUTDIR}/logs/sample_report/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/sample_report/{{sample}}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/sample_report.py"
