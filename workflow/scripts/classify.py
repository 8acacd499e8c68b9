# Snakemake adapter: score one shard with the classifier (logic in virnucpro.classify).
from virnucpro.runner import run_step


def classify(sm):
    from virnucpro.classify import score_shard
    from virnucpro.models.classifier import load_classifier

    score_shard(sm.input.features, sm.input.index, load_classifier(sm.input.model), sm.output[0],
                sm.params.registry, validate=not sm.config["checkpoint"]["skip_validation"],
                derived=sm.params.derived)


run_step(snakemake.log[0], classify, snakemake)
