"""A plain, per-record, per-codon implementation of the original prepare rules.

It is the baseline of bench/prepare.py and the independent reference the tests
compare the vectorised implementation against. It deliberately does the
obvious thing: a dict lookup per codon, string slicing per frame. As a process
it writes the original's three files, as `virnucpro prepare` does:

    python bench/plain_prepare.py READS.fa CHUNK_SIZE OUTDIR
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

CODONS = {
    a + b + c: aa
    for (a, b, c), aa in zip(
        ((x, y, z) for x in "TCAG" for y in "TCAG" for z in "TCAG"),
        "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    )
}
_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


def read_fasta(path: str) -> Iterator[tuple[str, str]]:
    record_id, lines = None, []
    with open(path) as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.startswith(">"):
                if record_id is not None:
                    yield record_id, "".join(lines)
                record_id, lines = line[1:].split(None, 1)[0], []
            else:
                lines.append(line.replace(" ", ""))
    if record_id is not None:
        yield record_id, "".join(lines)


def chunks(record_id: str, seq: str, size: int) -> Iterator[tuple[str, str]]:
    n = -(-len(seq) // size)
    repeat = n * size - len(seq)
    low = repeat // n
    up = repeat - low * (n - 1)
    moves = [low + 1] * up + [low] * max(0, n - 1 - up) + [0]
    start = 0
    for k in range(n):
        start = k * size - sum(moves[:k])
        yield f"{record_id}_chunk_{k + 1}", seq[start:start + size]


def translate(seq: str) -> str:
    return "".join(CODONS.get(seq[i:i + 3], "") for i in range(0, len(seq) - 2, 3))


def frames(chunk_id: str, chunk: str) -> Iterator[tuple[str, str, str]]:
    seq = chunk.upper()
    reverse = seq.translate(_COMPLEMENT)[::-1]
    for strand, tag in ((seq, "F"), (reverse, "R")):
        for f in range(3):
            protein = translate(strand[f:])
            if protein and "*" not in protein:
                yield f"{chunk_id}{tag}{f + 1}", strand[f:f + 1 + 3 * len(protein)], protein


def prepare(path: str, size: int) -> Iterator[tuple[str, str, str]]:
    for record_id, seq in read_fasta(path):
        for chunk_id, chunk in chunks(record_id, seq, size):
            yield from frames(chunk_id, chunk)


def prepare_text(text: str, size: int) -> Iterator[tuple[str, str, str]]:
    """prepare() on FASTA text (tests)."""
    import os
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".fa", delete=False) as handle:
        handle.write(text)
    try:
        yield from list(prepare(handle.name, size))
    finally:
        os.unlink(handle.name)


def write(path: str, size: int, outdir: str) -> None:
    """OUTDIR/chunked.fa (60-column lines), nucleotide.fa and protein.faa, record by record."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "chunked.fa", "w") as chunked, open(out / "nucleotide.fa", "w") as nuc, \
            open(out / "protein.faa", "w") as prot:
        for record_id, seq in read_fasta(path):
            for chunk_id, chunk in chunks(record_id, seq, size):
                wrapped = "\n".join(chunk[i:i + 60] for i in range(0, len(chunk), 60))
                chunked.write(f">{chunk_id}\n{wrapped}\n")
                for frame_id, nucleotide, protein in frames(chunk_id, chunk):
                    nuc.write(f">{frame_id}\n{nucleotide}\n")
                    prot.write(f">{frame_id}\n{protein}\n")


if __name__ == "__main__":
    write(sys.argv[1], int(sys.argv[2]), sys.argv[3])
