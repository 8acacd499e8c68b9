# Embed: one job per shard (one GPU, one model load), DNABERT-S + ESM-2 features.
# Intra-shard checkpoints live in RESULT.partial/ (virnucpro.layout), which is not a declared
# output, so a rerun after a kill resumes instead of starting the shard over.


# Local rules (`localrule: True`) run where Snakemake runs, never as cluster jobs: the
# downloads, because compute nodes often have no internet, and jobs so small that a
# submission would cost more than they do.


rule demo_models:
    output:
        esm=f"{DEMO_MODELS}/esm2_demo_t2_d32.pt",
        dnabert=directory(f"{DEMO_MODELS}/dnabert2_demo"),
        classifier=f"{DEMO_MODELS}/classifier.pth",
        manifest=f"{DEMO_MODELS}/models.json",
    log:
        f"{OUTDIR}/logs/demo_models.log",
    benchmark:
        f"{OUTDIR}/benchmarks/demo_models.tsv"
    localrule: True
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/demo_models.py"


if not esm_model_file().startswith(DEMO_MODELS):

    rule download_esm:
        output:
            esm_model_file(),
        log:
            f"{OUTDIR}/logs/download_esm.log",
        benchmark:
            f"{OUTDIR}/benchmarks/download_esm.tsv"
        localrule: True
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=1000,
            runtime=120,
        script:
            "../scripts/download_models.py"


if not config["models"]["dnabert"].startswith(DEMO_MODELS):

    rule download_dnabert:
        output:
            directory(config["models"]["dnabert"]),
        log:
            f"{OUTDIR}/logs/download_dnabert.log",
        benchmark:
            f"{OUTDIR}/benchmarks/download_dnabert.tsv"
        localrule: True
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=1000,
            runtime=60,
        script:
            "../scripts/download_models.py"


# Features are an intermediate: by default each shard is embedded and scored in one job
# (rule embed_classify) and no feature file is written. Training files, and every sample
# with keep_features: true, keep their feature files (rule embed; scored by rule classify).


rule embed:
    input:
        nucleotide=SHARD_FILES["nucleotide"],
        protein=SHARD_FILES["protein"],
        prepared=SHARD_DONE,
        esm=esm_model_file(),
        dnabert=config["models"]["dnabert"],
    output:
        features=FEATURE_FILE,
        done=FEATURE_DONE,
    log:
        f"{OUTDIR}/logs/embed/{{sample}}/{{shard}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/embed/{{sample}}/{{shard}}.tsv"
    wildcard_constraints:
        sample=sample_pattern(FEATURE_SAMPLES),
    conda:
        ENV
    threads: 2
    resources:
        gpu=1,
        mem_mb=config["embed"]["mem_mb"],
        runtime=config["embed"]["runtime"],
    params:
        # Only what changes the numbers: a changed param reruns finished shards
        # (rerun-triggers). Batch sizes, memory and checkpoint intervals do not;
        # the script reads them from the config.
        dtype=config["embed"]["dtype"],
        compile=config["embed"]["compile"],
        features_dtype=config["features_dtype"],
        registry=FAILED_REGISTRY,
    script:
        "../scripts/embed.py"


if not KEEP_FEATURES:

    rule embed_classify:
        input:
            nucleotide=SHARD_FILES["nucleotide"],
            protein=SHARD_FILES["protein"],
            prepared=SHARD_DONE,
            index=SHARD_FILES["index"],
            esm=esm_model_file(),
            dnabert=config["models"]["dnabert"],
            classifier=config["models"]["classifier"],
        output:
            scores=SCORES_FILE,
        log:
            f"{OUTDIR}/logs/embed_classify/{{sample}}/{{shard}}.log",
        benchmark:
            f"{OUTDIR}/benchmarks/embed_classify/{{sample}}/{{shard}}.tsv"
        conda:
            ENV
        threads: 2
        resources:
            gpu=1,
            mem_mb=config["embed"]["mem_mb"],
            runtime=config["embed"]["runtime"],
        params:
            dtype=config["embed"]["dtype"],
            compile=config["embed"]["compile"],
            registry=FAILED_REGISTRY,
        script:
            "../scripts/embed.py"
