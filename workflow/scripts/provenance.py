# Snakemake adapter: the run's provenance.json, models hashed once (logic in virnucpro.provenance).
from virnucpro.provenance import MODEL_ROLES, write_provenance
from virnucpro.runner import run_step

run_step(snakemake.log[0], write_provenance,
         {role: getattr(snakemake.input, role) for role in MODEL_ROLES}, snakemake.params.settings,
         snakemake.output[0], [snakemake.params.demo_models])
