# Snakemake adapter: list a sample's feature files and their frame counts.
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.resume import write_manifest
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_manifest, list(snakemake.input), snakemake.output[0])
