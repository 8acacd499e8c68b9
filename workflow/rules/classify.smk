# Classify: the shard scores (made by embed_classify, or here from kept features), then one
# streaming aggregation per sample into the original's result files and a per-read summary.


# Kept features (keep_features: true) are scored by a job of their own, so changing only
# the classifier rescores without embedding again.
if KEEP_FEATURES:

    rule classify:
        input:
            features=FEATURE_FILE,
            done=FEATURE_DONE,
            index=SHARD_FILES["index"],
            model=config["models"]["classifier"],
        output:
            SCORES_FILE,
        log:
            f"{OUTDIR}/logs/classify/{{sample}}/{{shard}}.log",
        benchmark:
            f"{OUTDIR}/benchmarks/classify/{{sample}}/{{shard}}.tsv"
        conda:
            ENV
        threads: 1
        resources:
            # The feature file is memory-mapped and scored a window at a time.
            mem_mb=2000,
            runtime=60,
        params:
            registry=FAILED_REGISTRY,
            # Results built from this shard: withdrawn if its features turn out corrupted.
            derived=lambda wildcards: sample_results(wildcards.sample),
        script:
            "../scripts/classify.py"


# The per-sample result files; paired samples' rule (aggregate_pairs) adds pairs.tsv. None
# is in the Snakemake report: their rows grow with the reads (the report would too), so they
# sit beside it, and the sample's page and its caption say where.
AGGREGATE_OUTPUT = dict(
    predictions=f"{OUTDIR}/{{sample}}/prediction_results.txt",
    highest=f"{OUTDIR}/{{sample}}/prediction_results_highestscore.csv",
    summary=f"{OUTDIR}/{{sample}}/summary.tsv",
    counts=f"{OUTDIR}/{{sample}}/counts.json",
)


rule aggregate:
    input:
        reads=prepared_reads,
        scores=shard_scores,
    output:
        **AGGREGATE_OUTPUT,
    log:
        f"{OUTDIR}/logs/aggregate/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/aggregate/{{sample}}.tsv"
    wildcard_constraints:
        sample=sample_pattern(SINGLE_SAMPLES),
    conda:
        ENV
    threads: 1
    resources:
        # Flat in the sample's size (the per-chunk table is sorted on disk, beside the
        # results): 257 MB peak RSS at 1 and at 4 million reads (bench/scale.py aggregate),
        # most of it the libraries of the CPU build of torch; a CUDA build maps more.
        mem_mb=1000,
        runtime=60,
    params:
        # Sets the read (and pair) calls; the original's two tables do not depend on it.
        threshold=config["virus_threshold"],
    script:
        "../scripts/aggregate.py"


use rule aggregate as aggregate_pairs with:
    output:
        **AGGREGATE_OUTPUT,
        pairs=f"{OUTDIR}/{{sample}}/pairs.tsv",
    wildcard_constraints:
        sample=sample_pattern(PAIRED_SAMPLES),


# The input records called virus, with their original headers; not in the Snakemake report
# (it grows with the reads): it sits beside summary.tsv.
rule virus_reads:
    input:
        reads=sample_reads,
        summary=f"{OUTDIR}/{{sample}}/summary.tsv",
    output:
        f"{OUTDIR}/{{sample}}/virus_reads.fa.gz",
    log:
        f"{OUTDIR}/logs/virus_reads/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/virus_reads/{{sample}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    script:
        "../scripts/virus_reads.py"


rule samples_summary:
    input:
        expand(f"{OUTDIR}/{{sample}}/counts.json", sample=SAMPLES),
    output:
        overview_entry(f"{OUTDIR}/samples_summary.tsv", "samples_summary.rst", "counts per sample"),
    log:
        f"{OUTDIR}/logs/samples_summary.log",
    benchmark:
        f"{OUTDIR}/benchmarks/samples_summary.tsv"
    localrule: True  # a table of the samples' counts
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        samples=SAMPLES,
    script:
        "../scripts/samples_summary.py"
