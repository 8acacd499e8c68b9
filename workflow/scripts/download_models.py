# Snakemake adapter: fetch a published model (ESM-2 into the torch hub cache, or DNABERT-S).
from virnucpro.models.download import download_dnabert_s, download_esm2
from virnucpro.runner import run_step

if snakemake.rule == "download_esm":
    run_step(snakemake.log[0], download_esm2, snakemake.output[0])
else:
    run_step(snakemake.log[0], download_dnabert_s, snakemake.output[0])
