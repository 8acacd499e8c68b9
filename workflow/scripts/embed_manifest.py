# Snakemake adapter: list a sample's feature files and their frame counts.
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.resume import write_manifest
from virnucpro.runner import run_step

level = "sentinel" if snakemake.config["checkpoint"]["skip_validation"] else "quick"
run_step(snakemake.log[0], write_manifest, list(snakemake.input.done), snakemake.output[0],
         snakemake.params.registry, level)
