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


# The input records called virus as the sequencer gave them (virnucpro.results): one rule
# per layout and format, as each names its files differently (virus_reads.fq.gz or .fa.gz;
# paired: virus_R1 and virus_R2, both mates of the pairs called virus). Not in the Snakemake
# report (they can be large): the caption of the sample's page names them.
rule virus_reads:
    input:
        reads=sample_reads,
        calls=f"{OUTDIR}/{{sample}}/summary.tsv",
    output:
        virus_reads_patterns(False, FASTA),
    log:
        f"{OUTDIR}/logs/virus_reads/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/virus_reads/{{sample}}.tsv"
    wildcard_constraints:
        sample=virus_reads_samples(False, FASTA),
    conda:
        ENV
    threads: 1
    resources:
        # The reads and the calls are streamed a block at a time: peaks of 59 MB at 100,000
        # pairs and 66 MB at 400,000 (bench/virus_reads.py).
        mem_mb=500,
        runtime=120,
    script:
        "../scripts/virus_reads.py"


use rule virus_reads as virus_reads_fastq with:
    output:
        virus_reads_patterns(False, FASTQ),
    wildcard_constraints:
        sample=virus_reads_samples(False, FASTQ),


use rule virus_reads as virus_pairs with:
    input:
        reads=sample_reads,
        calls=f"{OUTDIR}/{{sample}}/pairs.tsv",
    output:
        virus_reads_patterns(True, FASTA),
    wildcard_constraints:
        sample=virus_reads_samples(True, FASTA),


use rule virus_pairs as virus_pairs_fastq with:
    output:
        virus_reads_patterns(True, FASTQ),
    wildcard_constraints:
        sample=virus_reads_samples(True, FASTQ),


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
