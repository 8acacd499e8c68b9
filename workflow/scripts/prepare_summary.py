# Snakemake adapter: one table of prepare counts for all samples.
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.prepare import write_prepare_summary
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_prepare_summary, dict(zip(snakemake.params.samples, snakemake.input)),
         snakemake.output[0])
