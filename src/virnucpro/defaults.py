"""The defaults that both the CLI and the workflow use, in one place (no torch import, so
the CLI's parser and Snakemake's parsing stay fast). The workflow's config schema repeats
them as its `default:`s; a test holds the two equal."""

# An unfinished shard's progress is saved every CHECKPOINT_FRAMES frames or
# CHECKPOINT_SECONDS seconds, whichever comes first (config `checkpoint.frames`, `.seconds`).
CHECKPOINT_FRAMES = 10_000
CHECKPOINT_SECONDS = 300.0
# Frames embedded, scored and saved together (config `checkpoint.window_frames`).
WINDOW_FRAMES = 4096
# A chunk whose sequence came before in the sample is not embedded again (config `dedup`;
# the CLI's `prepare --no-dedup`).
DEDUP = True
