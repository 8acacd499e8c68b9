# Snakemake adapter: prepare one sample (logic in virnucpro.prepare).
from virnucpro.prepare import write_shards
from virnucpro.runner import run_step

# The input is one reads file, or R1 and R2.
run_step(snakemake.log[0], write_shards, list(snakemake.input), snakemake.params.chunk_size,
         snakemake.params.shard_size, snakemake.output[0], snakemake.params.u_as_t,
         snakemake.params.drop_ambiguous, snakemake.params.dedup,
         flat_heap=False)  # see runner.call_reporting_errors
