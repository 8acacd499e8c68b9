# Snakemake adapter: one table of prepare counts for all samples.
from virnucpro.prepare import write_prepare_summary
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_prepare_summary,
         dict(zip(snakemake.params.samples, snakemake.input)), snakemake.output[0])
