"""The original VirNucPro's way of embedding a shard, as one process: the baseline that
bench/embed_processes.py times `virnucpro embed` against.

DNABERT-S one sequence per forward pass and the mean over all its tokens (the original's loop;
on this package's DNABERT-2 model, since the original's remote code does not run under the
pinned transformers), ESM-2 through fair-esm's own model with the original's batching
(extract.py: 2,048 tokens a batch, the mean over residues 1..len), in float32; the feature
rows [DNABERT-S | ESM-2] saved with torch.save.

    python bench/original_embed.py NUCLEOTIDE_FASTA PROTEIN_FASTA ESM_MODEL DNABERT_DIR OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from embed import dnabert_one_at_a_time, fair_esm_original  # noqa: E402
from virnucpro.models.dnabert2 import load_dnabert2  # noqa: E402
from virnucpro.shards import read_frames  # noqa: E402


def main() -> None:
    nucleotide, protein, esm_model, dnabert_dir, out = sys.argv[1:6]
    ids, nucleotides, proteins = read_frames(nucleotide, protein)
    dnabert = dnabert_one_at_a_time(load_dnabert2(dnabert_dir), nucleotides)()
    esm = fair_esm_original(Path(esm_model), proteins)()
    torch.save({"ids": ids, "data": torch.cat([dnabert, esm], dim=1)}, out)


if __name__ == "__main__":
    main()
