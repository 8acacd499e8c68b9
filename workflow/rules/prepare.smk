# Prepare: reads -> overlapping chunks -> stop-free frames -> shards.
# A Snakemake checkpoint, because the number of shards is known only after it ran.
# Its input is the sample's reads file, or its R1 and R2 files (paired reads).


checkpoint prepare:
    input:
        sample_reads,
    output:
        directory(PREPARE_DIR),
    log:
        f"{OUTDIR}/logs/prepare/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/prepare/{{sample}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        chunk_size=config["chunk_size"],
        shard_size=config["shard_size"],
        u_as_t=config["u_as_t"],
        # The original's training-time rule: chunks with ambiguous bases give no frame.
        drop_ambiguous=lambda wildcards: wildcards.sample in TRAINING,
        # Each distinct chunk embedded once; training files keep every frame (training
        # weighs frames).
        dedup=lambda wildcards: prepare_settings(wildcards.sample)["dedup"],
    script:
        "../scripts/prepare.py"


rule prepare_summary:
    input:
        expand(PREPARE_DIR, sample=SAMPLES),
    output:
        f"{OUTDIR}/prepare_summary.tsv",
    log:
        f"{OUTDIR}/logs/prepare_summary.log",
    benchmark:
        f"{OUTDIR}/benchmarks/prepare_summary.tsv"
    localrule: True  # a table of the samples' counts: not worth a cluster job
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        samples=SAMPLES,
    script:
        "../scripts/prepare_summary.py"
