# Snakemake adapter: embed one shard with incremental checkpoints (logic in virnucpro.resume).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")
from virnucpro.resume import CheckpointSettings, embed_shard_resumable
from virnucpro.runner import run_step


def embed(sm):
    from virnucpro.gpu import gpu_lease

    # The lease (and CUDA_VISIBLE_DEVICES) must be in place before CUDA starts. An
    # explicit device (cpu, cuda:N) is used as given.
    leased = sm.config["embed"]["device"] in ("auto", "cuda")
    with gpu_lease(None if leased else []):
        embed_on_device(sm)


def embed_on_device(sm):
    from virnucpro.embed import EmbeddingEngine

    e, c = sm.config["embed"], sm.config["checkpoint"]
    engine = EmbeddingEngine.from_config(sm.input.esm, sm.input.dnabert, e["device"], sm.params.dtype,
                                         e["esm_tokens"] or None, e["dnabert_tokens"] or None)
    settings = CheckpointSettings(c["frames"], c["seconds"], c["window_frames"], c["force_resume"])
    embed_shard_resumable(sm.input.nucleotide, sm.input.protein, sm.output.features,
                          sm.output.done, engine, settings,
                          f"{sm.config['outdir'].rstrip('/')}/failed_checkpoints.txt")


run_step(snakemake.log[0], embed, snakemake)
