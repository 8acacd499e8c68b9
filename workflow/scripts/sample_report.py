# Snakemake adapter: a sample's report page, plots and top reads (logic in virnucpro.report).
from virnucpro.report import write_sample_report
from virnucpro.runner import run_step

out = snakemake.output
run_step(snakemake.log[0], write_sample_report, snakemake.wildcards.sample,
         snakemake.input.counts, snakemake.input.provenance, snakemake.params.reads, out.page,
         {"calls": out.calls, "scores": out.scores, "length": out.length}, out.top_reads,
         snakemake.params.virus_reads)
