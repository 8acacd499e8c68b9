# Snakemake adapter: write the small random-init demo models.
from pathlib import Path

from virnucpro.demo_models import write_demo_models
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_demo_models, Path(snakemake.output.manifest).parent)
