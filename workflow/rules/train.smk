# Train: the classifier from labelled FASTA files (config `train`), through the same
# prepare (plus the original's drop of chunks with ambiguous bases) and embed stages.
# Run it as a target: `snakemake train --configfile train.yaml`.


rule train:
    input:
        features=lambda wildcards: training_shards(FEATURE_FILE),
        indexes=lambda wildcards: training_shards(SHARD_FILES["index"]),
        fasta=list(TRAINING.values()),
    output:
        model=f"{OUTDIR}/train/model.safetensors",
        sidecar=f"{OUTDIR}/train/model.safetensors.json",
        metrics=f"{OUTDIR}/train/metrics.json",
        roc=report(
            f"{OUTDIR}/train/roc.svg", caption="../report/train_roc.rst", category="Training"
        ),
        scores=report(
            f"{OUTDIR}/train/scores.svg",
            caption="../report/train_scores.rst",
            category="Training",
        ),
    log:
        f"{OUTDIR}/logs/train.log",
    benchmark:
        f"{OUTDIR}/benchmarks/train.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        files={name: f"{OUTDIR}/{name}" for name in TRAINING},
    script:
        "../scripts/train.py"
