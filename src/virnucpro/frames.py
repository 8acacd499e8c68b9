"""The original VirNucPro chunking and six-frame selection, vectorised.

Rules (see shared notes, original-semantics.md):
- A record of length L is cut into n = ceil(L / C) overlapping chunks; chunk k
  starts at k*(C - low) - min(k, up) with repeat = n*C - L, low = repeat // n,
  up = repeat - low*(n-1), and ends at min(start + C, L).
- Each chunk (upper-cased) is translated in frames F1-F3 (forward, from offset
  0, 1, 2) and R1-R3 (same on the reverse complement; only ACGT complemented).
  Codons outside the standard 64 (any ambiguity code) are skipped, making the
  protein shorter. A frame is kept if its protein is non-empty and stop-free.
- The kept nucleotide is frame[f : f + 1 + 3*len(protein)] clipped to the chunk:
  one base more than the codons, a quirk of the original that is kept.

Everything works on one block of records at a time with numpy, so the cost per
read is a handful of array operations amortised over thousands of reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from virnucpro.textblock import copy_spans, gather_spans, ramp, translate

_CODON_TABLE = {
    "TTT": "F", "TTC": "F", "TTA": "L", "TTG": "L", "CTT": "L", "CTC": "L", "CTA": "L", "CTG": "L",
    "ATT": "I", "ATC": "I", "ATA": "I", "ATG": "M", "GTT": "V", "GTC": "V", "GTA": "V", "GTG": "V",
    "TCT": "S", "TCC": "S", "TCA": "S", "TCG": "S", "CCT": "P", "CCC": "P", "CCA": "P", "CCG": "P",
    "ACT": "T", "ACC": "T", "ACA": "T", "ACG": "T", "GCT": "A", "GCC": "A", "GCA": "A", "GCG": "A",
    "TAT": "Y", "TAC": "Y", "TAA": "*", "TAG": "*", "CAT": "H", "CAC": "H", "CAA": "Q", "CAG": "Q",
    "AAT": "N", "AAC": "N", "AAA": "K", "AAG": "K", "GAT": "D", "GAC": "D", "GAA": "E", "GAG": "E",
    "TGT": "C", "TGC": "C", "TGA": "*", "TGG": "W", "CGT": "R", "CGC": "R", "CGA": "R", "CGG": "R",
    "AGT": "S", "AGC": "S", "AGA": "R", "AGG": "R", "GGT": "G", "GGC": "G", "GGA": "G", "GGG": "G",
}

_BASES = b"ACGT"
_INVALID = 4  # code of any letter that is not A, C, G or T (either case)


def _tables() -> dict[str, np.ndarray]:
    upper = np.arange(256, dtype=np.uint8)
    upper[ord("a"): ord("z") + 1] -= 32
    complement_upper = upper.copy()
    for a, b in zip(b"ACGT", b"TGCA"):
        complement_upper[a] = complement_upper[a + 32] = b
    # Codons are indexed in base 5 (c0*25 + c1*5 + c2) so that a codon with any
    # invalid letter maps to "no amino acid" (0). The reverse table gives the
    # amino acid that the reverse strand reads over the same three bases.
    forward = np.zeros(256, dtype=np.uint8)
    reverse = np.zeros(256, dtype=np.uint8)
    for codon, aa in _CODON_TABLE.items():
        c0, c1, c2 = (_BASES.index(ord(x)) for x in codon)
        forward[c0 * 25 + c1 * 5 + c2] = ord(aa)
        reverse[(3 - c2) * 25 + (3 - c1) * 5 + (3 - c0)] = ord(aa)
    stop_flags = (forward == ord("*")).astype(np.uint8) | 2 * (reverse == ord("*")).astype(np.uint8)
    return {"upper": upper, "complement_upper": complement_upper, "forward": forward,
            "reverse": reverse, "stop_flags": stop_flags}


_T = _tables()
_STOP_FLAGS = _T["stop_flags"].tobytes()
_UPPER = _T["upper"].tobytes()
_PHASE_SHIFT = np.tile(np.array([1, 4, 16], dtype=np.uint8), 1 << 21)  # longer than most blocks
_FORWARD_AMINO = _T["forward"].tobytes()
_REVERSE_AMINO = _T["reverse"].tobytes()
_COMPLEMENT_UPPER = _T["complement_upper"].tobytes()


@dataclass
class Chunks:
    """Chunk layout of a block: per chunk its record, 1-based number and span."""

    record: np.ndarray  # index of the record within the block
    number: np.ndarray  # 1-based chunk number within the record
    start: np.ndarray  # absolute start in the block's concatenated sequence
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.record)


def chunk_layout(lengths: np.ndarray, offsets: np.ndarray, chunk_size: int) -> Chunks:
    """Chunk spans of every record (original integer arithmetic, vectorised)."""
    n = -(-lengths // chunk_size)
    repeat = n * chunk_size - lengths
    low = repeat // n
    up = repeat - low * (n - 1)
    record = np.repeat(np.arange(len(lengths)), n)
    k = ramp(n)
    rel_start = k * (chunk_size - low[record]) - np.minimum(k, up[record])
    rel_end = np.minimum(rel_start + chunk_size, lengths[record])
    return Chunks(record, k + 1, offsets[record] + rel_start, rel_end - rel_start)


@dataclass
class KeptFrames:
    """Stop-free frames of a block, in original order (chunk, then F1..F3, R1..R3)."""

    chunk: np.ndarray  # index into the block's Chunks
    frame: np.ndarray  # 0..5 -> F1, F2, F3, R1, R2, R3
    nucleotide: np.ndarray  # uint8, kept nucleotide sequences concatenated
    nucleotide_ends: np.ndarray  # cumulative end offsets into `nucleotide`
    protein: np.ndarray
    protein_ends: np.ndarray

    def __len__(self) -> int:
        return len(self.chunk)

    def without_chunks(self, dropped: np.ndarray) -> KeptFrames:
        """These frames minus those of the chunks flagged in `dropped` (bool per chunk)."""
        keep = ~dropped[self.chunk]
        if keep.all():
            return self
        parts = []
        for seq, ends in ((self.nucleotide, self.nucleotide_ends),
                          (self.protein, self.protein_ends)):
            lengths = np.diff(ends, prepend=0)
            kept = lengths[keep]
            parts += [gather_spans(seq, (ends - lengths)[keep], kept), np.cumsum(kept)]
        return KeptFrames(self.chunk[keep], self.frame[keep], *parts)


def ambiguous_chunks(codes: np.ndarray, chunks: Chunks) -> np.ndarray:
    """Per chunk: does it hold any letter other than A, C, G, T (codes 0-3)?"""
    other = np.concatenate([[0], np.cumsum(codes > 3, dtype=np.int64)])
    return other[chunks.start + chunks.length] > other[chunks.start]


def _stops_per_phase(stops: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Stop flags of the codons starting in [first, last] of every chunk, per
    phase (position % 3), shape (chunks, 3, 2): [..., 0] forward, [..., 1] reverse.

    Each position's two flag bits are shifted by 2 * (position % 3), so one
    OR-reduction over each chunk's contiguous range gives all six answers.
    """
    shift = _PHASE_SHIFT if len(stops) <= len(_PHASE_SHIFT) else \
        np.tile(_PHASE_SHIFT[:3], -(-len(stops) // 3))
    phased = stops * shift[: len(stops)]
    bounds = np.empty(2 * len(first), dtype=np.int64)
    bounds[0::2], bounds[1::2] = first, np.maximum(first, last + 1)
    bits = np.bitwise_or.reduceat(phased, bounds)[0::2] if len(first) else np.zeros(0, np.uint8)
    bits[last < first] = 0
    return ((bits[:, None] >> np.arange(6, dtype=np.uint8)) & 1).reshape(-1, 3, 2).astype(bool)


def select_frames(data: np.ndarray, codes: np.ndarray, chunks: Chunks) -> KeptFrames:
    """Translate the six frames of every chunk and keep the stop-free ones.

    `codes` classifies `data` byte for byte (0-3 = A, C, G, T; 4-8 not a base)
    and extends at least 3 bytes past it. Works in forward coordinates only: reverse frame f of a
    chunk [o, o+l) reads, on the forward strand, the codons starting at o+l-3-f,
    o+l-6-f, ... through the reverse codon table, so nothing is
    reverse-complemented except the nucleotides of the frames that are kept.
    Chunks are read in place when they do not overlap (one chunk per read),
    else gathered first.
    """
    disjoint = np.all(chunks.start[1:] >= (chunks.start + chunks.length)[:-1])
    if disjoint:
        x, o = data, chunks.start
    else:
        x = gather_spans(data, chunks.start, chunks.length)
        codes = np.concatenate([gather_spans(codes, chunks.start, chunks.length),
                                np.full(3, _INVALID, dtype=np.uint8)])
        o = np.cumsum(chunks.length) - chunks.length
    length = chunks.length

    # Codon index in base 5 at every position, then stop flags: bit 0 = stop on
    # the forward strand, bit 1 = on the reverse strand. Codes above 3 (not a
    # base) make garbage indices only at codon starts that are never used:
    # every codon inside a chunk consists of validated sequence letters.
    buffer = bytearray(len(codes) - 2)
    idx = np.frombuffer(buffer, dtype=np.uint8)
    np.multiply(codes[:-2], np.uint8(25), out=idx)
    idx += codes[1:-1] * np.uint8(5)
    idx += codes[2:]
    stops = np.frombuffer(buffer.translate(_STOP_FLAGS), dtype=np.uint8)

    last = o + length - 3  # last codon start inside each chunk
    phase_stop = _stops_per_phase(stops, o, last)
    forward_stop, reverse_stop = phase_stop[:, :, 0], phase_stop[:, :, 1]

    f = np.arange(3)
    rows = np.arange(len(o))[:, None]
    codons = np.maximum(0, (length[:, None] - f) // 3)
    stop = np.concatenate([forward_stop[rows, (o[:, None] + f) % 3],
                           reverse_stop[rows, (last[:, None] - f) % 3]], axis=1)
    candidate = np.flatnonzero(~stop.ravel() & (np.concatenate([codons, codons], 1).ravel() > 0))
    chunk, frame = np.divmod(candidate, 6)
    reverse = frame >= 3
    shift = frame % 3

    # Proteins: the amino acids at codon starts o+shift, o+shift+3, ... (forward)
    # or last-shift, last-shift-3, ... (reverse); codons with ambiguous letters
    # translate to nothing (0) and are dropped afterwards.
    n_codons = codons[chunk, shift]
    first = np.cumsum(n_codons) - n_codons
    letters = np.empty(int(n_codons.sum()), dtype=np.uint8)
    fwd = ~reverse
    copy_spans(letters, first[fwd], translate(buffer, _FORWARD_AMINO), o[chunk[fwd]] + shift[fwd],
               n_codons[fwd], step=3)
    copy_spans(letters, first[reverse], translate(buffer, _REVERSE_AMINO),
               last[chunk[reverse]] - shift[reverse], n_codons[reverse], step=-3)
    translated = letters != 0
    protein = letters[translated]
    plen = np.add.reduceat(translated, first, dtype=np.int64) if len(candidate) else \
        np.zeros(0, dtype=np.int64)
    kept = plen > 0  # an all-ambiguous frame has an empty protein: not written
    chunk, frame, reverse = chunk[kept], frame[kept], reverse[kept]
    shift, plen = shift[kept], plen[kept]

    # Nucleotides: frame[shift : shift + 1 + 3*len(protein)], clipped to the chunk.
    # Reverse frames are forward spans read backwards and complemented: gathered
    # in reverse order, the whole buffer reversed once, then translated.
    n_bases = np.minimum(length[chunk], shift + 1 + 3 * plen) - shift
    dst = np.cumsum(n_bases) - n_bases
    nucleotide = np.empty(int(n_bases.sum()), dtype=np.uint8)
    fwd, rev = ~reverse, np.flatnonzero(reverse)[::-1]
    copy_spans(nucleotide, dst[fwd], x, o[chunk[fwd]] + shift[fwd], n_bases[fwd])
    backwards = gather_spans(x, (o + length)[chunk[rev]] - shift[rev] - n_bases[rev], n_bases[rev])
    backwards = translate(backwards[::-1], _COMPLEMENT_UPPER)
    rev = rev[::-1]
    rev_bases = n_bases[rev]
    copy_spans(nucleotide, dst[rev], backwards, np.cumsum(rev_bases) - rev_bases, rev_bases)
    nucleotide = translate(nucleotide, _UPPER)
    return KeptFrames(chunk, frame, nucleotide, np.cumsum(n_bases), protein, np.cumsum(plen))
