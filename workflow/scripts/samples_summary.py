# Snakemake adapter: one row of counts per sample (logic in virnucpro.results).
from virnucpro.results import write_samples_summary
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_samples_summary,
         dict(zip(snakemake.params.samples, snakemake.input)), snakemake.output[0])
