# Snakemake adapter: write the small random-init demo models.
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.demo_models import write_demo_models
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_demo_models, Path(snakemake.output.manifest).parent)
