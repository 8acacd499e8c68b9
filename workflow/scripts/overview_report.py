# Snakemake adapter: the run's overview page across samples (logic in virnucpro.report).
from virnucpro.report import write_overview
from virnucpro.runner import run_step

out = snakemake.output
run_step(snakemake.log[0], write_overview,
         dict(zip(snakemake.params.samples, snakemake.input.counts)), snakemake.params.reads,
         snakemake.input.provenance, out.page, {"calls": out.calls, "scores": out.scores})
