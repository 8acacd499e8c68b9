# Snakemake adapter: a sample's input records called virus, as delivered (logic in
# virnucpro.results).
from virnucpro.results import write_virus_reads
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_virus_reads, list(snakemake.input.reads),
         snakemake.input.calls, list(snakemake.output))
