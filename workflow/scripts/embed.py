# Snakemake adapter: embed one shard with incremental checkpoints (logic in virnucpro.resume):
# rule embed keeps its feature file, rule embed_classify scores it in the same job.
from pathlib import Path

from virnucpro.runner import run_step


def embed(sm):
    from virnucpro.gpu import gpu_lease

    # The lease (and CUDA_VISIBLE_DEVICES) must be in place before CUDA starts. An
    # explicit device (cpu, cuda:N) is used as given.
    leased = sm.config["embed"]["device"] in ("auto", "cuda")
    with gpu_lease(None if leased else []):
        embed_on_device(sm)


def embed_on_device(sm):
    import torch

    from virnucpro.embed import EmbeddingEngine
    from virnucpro.shards import ShardFrames
    from virnucpro.models.classifier import load_classifier
    from virnucpro.resume import CheckpointSettings, FeatureRows, ScoreRows, embed_shard_resumable

    frames = ShardFrames(sm.input.nucleotide, sm.input.protein)
    scanned = frames.scan()  # a damaged shard fails before the models load
    if sm.rule == "embed_classify":
        classifier = load_classifier(sm.input.classifier)
        result = ScoreRows(Path(sm.output.scores), Path(sm.input.index), classifier)
    else:
        dtype = getattr(torch, sm.params.features_dtype)
        result = FeatureRows(Path(sm.output.features), dtype)
    e, c = sm.config["embed"], sm.config["checkpoint"]
    engine = EmbeddingEngine.from_config(sm.input.esm, sm.input.dnabert, e["device"],
                                         sm.params.dtype, e["esm_tokens"] or None,
                                         e["dnabert_tokens"] or None, compile=sm.params.compile)
    if sm.rule == "embed_classify":
        classifier.expected_input(engine.embed_dim)
    settings = CheckpointSettings(c["frames"], c["seconds"], c["window_frames"], c["force_resume"])
    embed_shard_resumable(frames, result, engine, settings, sm.params.registry, scanned)


run_step(snakemake.log[0], embed, snakemake)
