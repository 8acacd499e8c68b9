# Prepare: reads -> overlapping chunks -> stop-free frames -> shards.
# A Snakemake checkpoint, because the number of shards is known only after it ran.
# Its input is the sample's reads file, or its R1 and R2 files (paired reads).


checkpoint prepare:
    input:
        sample_reads,
    output:
        directory(f"{OUTDIR}/{{sample}}/prepare"),
    params:
        chunk_size=config["chunk_size"],
        shard_size=config["shard_size"],
        u_as_t=config["u_as_t"],
        # The original's training-time rule: chunks with ambiguous bases give no frame.
        drop_ambiguous=lambda wildcards: wildcards.sample in TRAINING,
    log:
        f"{OUTDIR}/logs/prepare/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/prepare/{{sample}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        ENV
    script:
        "../scripts/prepare.py"


rule prepare_summary:
    localrule: True  # a table of the samples' counts: not worth a cluster job
    input:
        expand(f"{OUTDIR}/{{sample}}/prepare", sample=SAMPLES),
    output:
        f"{OUTDIR}/prepare_summary.tsv",
    params:
        samples=SAMPLES,
    log:
        f"{OUTDIR}/logs/prepare_summary.log",
    benchmark:
        f"{OUTDIR}/benchmarks/prepare_summary.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/prepare_summary.py"
