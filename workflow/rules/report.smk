# Report: the run's provenance (models hashed once), a page per sample and an overview page,
# each plot and table also a file of its own for `snakemake --report`.


rule provenance:
    input:
        unpack(run_models),
    output:
        f"{OUTDIR}/provenance.json",
    log:
        f"{OUTDIR}/logs/provenance.log",
    benchmark:
        f"{OUTDIR}/benchmarks/provenance.tsv"
    # Quick, and every page needs it: before the long embedding jobs, not after them.
    priority: 1
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=60,
    params:
        settings=RUN_SETTINGS,
        # Its demo manifest marks demo models wherever they were copied to.
        demo_models=DEMO_MODELS,
    script:
        "../scripts/provenance.py"


rule sample_report:
    input:
        counts=f"{OUTDIR}/{{sample}}/counts.json",
        provenance=f"{OUTDIR}/provenance.json",
    output:
        page=sample_entry(f"{OUTDIR}/{{sample}}/report.html", "sample.rst", "report page"),
        calls=sample_entry(f"{OUTDIR}/{{sample}}/plots/calls.svg", "calls.rst", "calls (plot)"),
        scores=sample_entry(
            f"{OUTDIR}/{{sample}}/plots/scores.svg", "scores.rst", "score distribution (plot)"
        ),
        length=sample_entry(
            f"{OUTDIR}/{{sample}}/plots/length_vs_score.svg",
            "length_vs_score.rst",
            "score against read length (plot)",
        ),
        top_reads=sample_entry(
            f"{OUTDIR}/{{sample}}/top_reads.tsv", "top_reads.rst", "top-scoring reads"
        ),
    log:
        f"{OUTDIR}/logs/sample_report/{{sample}}.log",
    benchmark:
        f"{OUTDIR}/benchmarks/sample_report/{{sample}}.tsv"
    localrule: True  # an HTML page and plots from counts.json: not worth a cluster job
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        reads=sample_reads,
        # Named on the page and in its caption in the Snakemake report (not in the report).
        virus_reads=lambda wildcards: [
            os.path.basename(path) for path in virus_reads_files(wildcards.sample)
        ],
    script:
        "../scripts/sample_report.py"


rule overview_report:
    input:
        counts=expand(f"{OUTDIR}/{{sample}}/counts.json", sample=SAMPLES),
        provenance=f"{OUTDIR}/provenance.json",
    output:
        page=overview_entry(f"{OUTDIR}/overview.html", "overview.rst", "overview page"),
        calls=overview_entry(
            f"{OUTDIR}/plots/samples_calls.svg", "samples_calls.rst", "calls per sample (plot)"
        ),
        scores=overview_entry(
            f"{OUTDIR}/plots/samples_scores.svg",
            "samples_scores.rst",
            "score distributions (plot)",
        ),
    log:
        f"{OUTDIR}/logs/overview_report.log",
    benchmark:
        f"{OUTDIR}/benchmarks/overview_report.tsv"
    localrule: True  # one page across the samples' counts
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        samples=SAMPLES,
        reads={sample: SAMPLE_READS[sample] for sample in SAMPLES},
    script:
        "../scripts/overview_report.py"
