# Snakemake adapter: per-sample result files from the shard scores (logic in virnucpro.classify).
# The rule for paired samples (aggregate_pairs) declares pairs.tsv too.
from pathlib import Path

from virnucpro.classify import aggregate
from virnucpro.runner import run_step

run_step(snakemake.log[0], aggregate, snakemake.input.reads, list(snakemake.input.scores),
         Path(snakemake.output.summary).parent, snakemake.params.threshold,
         "pairs" in snakemake.output.keys())
