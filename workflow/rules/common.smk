# Shared helpers: paths and sample lookup.
import re

OUTDIR = config["outdir"].rstrip("/")
SAMPLES = sorted(config["samples"])
ENV = "../../envs/virnucpro.yaml"


wildcard_constraints:
    sample="|".join(map(re.escape, SAMPLES)),


def sample_fasta(wildcards):
    return config["samples"][wildcards.sample]
