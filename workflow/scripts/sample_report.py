# Snakemake adapter: the per-sample HTML page of the Snakemake report.
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.report import write_sample_report
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_sample_report, snakemake.wildcards.sample, snakemake.input[0],
         snakemake.params.settings, snakemake.output[0])
