"""Unaligned BAM and CRAM input: a sample's reads in one file, read with pysam (htslib).

Large sequencing centres deliver reads as unaligned BAM (Picard FastqToSam, samtools
import) or CRAM. Each read of such a file is taken as the FASTQ record `samtools fastq`
writes for it, and blocks of those records go through the FASTQ parser (virnucpro.fasta):
a BAM gives the FastaBlocks, the checks and the messages of the same reads as FASTQ, so the
same results. Memory is bounded by the block size, as for FASTQ.

- Reads are the primary records. Secondary (flag 0x100) and supplementary (0x800) records
  repeat all or part of a read that has its own primary record: they are skipped, as
  `samtools fastq` skips them, so no read is counted twice (an aligned BAM given by mistake
  gives each read once). QC-failed and duplicate-flagged records are reads.
- Orientation: a record flagged reverse-strand (0x10: an aligned read) stores the reverse
  complement of the read and its qualities reversed; both are turned back, as `samtools
  fastq` does, so every read is as the sequencer read it.
- Layout: paired when the file's first read is flagged paired (0x1). Each pair's two mates
  must then follow each other, READ1 (0x40) then READ2 (0x80) with the same name, as
  unaligned BAMs hold them; they become the reads NAME/1 and NAME/2, interleaved as paired
  FASTQ files give them (virnucpro.reads). A lone mate, or mates apart or in the other
  order, is refused, naming the record. Single otherwise: each read is named NAME. A file
  that mixes paired and single reads is refused: a sample's reads are one or the other.
- A record number in a message (#N) counts the file's reads (primary records) from 1.

Reading an aligned CRAM needs its reference sequence (htslib looks for it as samtools does,
REF_PATH/REF_CACHE); an unaligned CRAM needs none.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator

from virnucpro.errors import one_line
from virnucpro.layout import FASTQ
from virnucpro.fasta import DEFAULT_BLOCK_BYTES, GZIP_MAGIC, FastaBlock, Head, ReadsReader

BAM, CRAM = "BAM", "CRAM"
BAM_MAGIC = b"BAM\x01"  # the start of a BAM's text, inside its first BGZF (gzip) block
CRAM_MAGIC = b"CRAM"
# The end-of-file container that ends every CRAM 3 file (CRAM specification, section 9).
# htslib reads a CRAM cut short at a container boundary without a word, so it is checked here.
CRAM3_EOF = bytes.fromhex("0f000000ffffffff0fe0454f46000000000100"
                          "05bdd94f0001000606010001000100ee63014b")

PAIRED, REVERSE, READ1, READ2 = 0x1, 0x10, 0x40, 0x80
NOT_A_READ = 0x100 | 0x800  # secondary, supplementary
# `samtools fastq` complements IUPAC codes pairwise (R <-> Y, ...); BAM bases are upper case.
COMPLEMENT = bytes.maketrans(b"ACGTMRWSYKVHDBN", b"TGCAKYWSRMBDHVN")
PHRED_TO_FASTQ = bytes((q + 33) & 0xFF for q in range(256))  # FASTQ's quality characters
MISSING_QUALITY = b"B"  # what `samtools fastq` writes for each base of a read without qualities

ORDER_HINT = ("a paired BAM or CRAM holds each pair's two mates one after the other, READ1 "
              "then READ2, as Picard FastqToSam and samtools import write them: group the "
              "mates with 'samtools collate' (or 'samtools sort -n'), and remove mates whose "
              "partner is missing")
MIXED_HINT = ("a sample's reads are all paired or all single: split the file with 'samtools "
              "view -f 1' (paired) and 'samtools view -F 1' (single) and give two samples")
DAMAGED_HINT = "the file is corrupt or truncated; re-create it or download it again"
REFERENCE_HINT = ("an aligned CRAM (its header lists reference sequences) is decoded with its "
                  "reference: make that available where samtools finds it (REF_PATH, "
                  "REF_CACHE) or convert the file to BAM ('samtools view -b -T REF.fa'); "
                  "otherwise " + DAMAGED_HINT)


def alignment_format(path: str | os.PathLike) -> str | None:
    """BAM or CRAM when the file is one, told by its content (a BAM is BGZF, gzip blocks whose
    text starts with BAM\\1; a CRAM starts with CRAM), else None: also for what is not a
    regular file, which is never opened here (a named pipe would wait for a writer)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as raw:
            head = raw.read(1 << 16)  # a BGZF block is at most 64 KiB
    except OSError:
        return None
    if head.startswith(CRAM_MAGIC):
        return CRAM
    if head.startswith(GZIP_MAGIC):
        try:
            text = zlib.decompressobj(wbits=31).decompress(head, len(BAM_MAGIC))
        except zlib.error:
            return None
        if text == BAM_MAGIC:
            return BAM
    return None


class BamReader(ReadsReader):
    """Iterate the reads of a BAM or CRAM file as FastaBlocks of their FASTQ records; paired
    reads as the interleaved mates NAME/1, NAME/2 (`paired`, from the first read's flags)."""

    def __init__(self, path: str | os.PathLike, kind: str,
                 block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        super().__init__(path, block_bytes)
        self.kind = kind
        with contextlib.closing(self._records()) as records:
            first = next(records, None)
        self.paired = first is not None and bool(first.flag & PAIRED)
        self.bytes_read = 0

    def file_format(self) -> str:
        """FASTQ: a BAM's reads are FASTQ records as `samtools fastq` writes them, and its
        virus reads are written so."""
        return FASTQ

    def __iter__(self) -> Iterator[FastaBlock]:
        # FASTQ text as big as a FASTQ file's blocks (fasta.ReadsReader.__iter__).
        number, texts, size = 1, [], 0
        for text in self._reads():
            texts.append(text)
            size += len(text)
            if size >= 2 * self.block_bytes:
                block = self._parse_fastq(b"".join(texts), number)
                number += len(block)
                yield block
                texts, size = [], 0
        if texts:
            yield self._parse_fastq(b"".join(texts), number)
        elif number == 1:
            raise self._no_reads()
        self.bytes_read = self.total_bytes

    def head(self, limit: int) -> Head:
        """The first reads, about `limit` bytes of their FASTQ text, and the share of the file
        on disk they come from: the sample prepare.estimate scales from. The reads are taken
        to the end of a BGZF block (BAM) or CRAM container, so that share is the file's
        offset there (where htslib's position moves: after the read that ends a BAM block,
        which is the position of the next; at the first read of the next CRAM container, which
        is that container's end)."""
        texts, size, whole, offset = [], 0, True, 0
        with contextlib.closing(self._reads()) as reads:
            for text in reads:
                if size >= limit and self.bytes_read != offset:
                    if self.kind == BAM:
                        texts.append(text)
                        offset = self.bytes_read
                    whole = False
                    break
                texts.append(text)
                size += len(text)
                offset = self.bytes_read
        if not texts:
            raise self._no_reads()
        share = 1.0 if whole else offset / self.total_bytes
        return Head([self._parse_fastq(b"".join(texts), 1)], share, whole)

    def _no_reads(self) -> Exception:
        return self._error("holds no reads (no primary records)",
                           f"give a {self.kind} file with at least one read")

    def _records(self) -> Iterator:
        """The file's primary records (pysam AlignedSegments) in order; `bytes_read` follows
        them. A file htslib cannot read is one line naming it (InputError)."""
        import pysam  # only for BAM and CRAM input: FASTA and FASTQ runs never load htslib

        # htslib writes its warnings to stderr; a problem is reported here, in one line.
        pysam.set_verbosity(0)
        if self.kind == CRAM:
            self._check_cram_end()
        offset_shift = 16 if self.kind == BAM else 0  # BGZF virtual offsets: block << 16
        references = 0
        try:
            with pysam.AlignmentFile(os.fspath(self.path), "rb" if self.kind == BAM else "rc",
                                     check_sq=False) as alignments:
                references = alignments.nreferences
                # fetch(until_eof=True): iterating the file itself refuses a CRAM without @SQ
                # header lines, as an unaligned one may be (pysam issue #956).
                for record in alignments.fetch(until_eof=True):
                    self.bytes_read = alignments.tell() >> offset_shift
                    if not record.flag & NOT_A_READ:
                        yield record
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise self._damaged(exc, references) from None

    def _damaged(self, exc: Exception, references: int = 0) -> Exception:
        """A file htslib cannot read, in one line; an aligned CRAM's reference not found reads
        as damage too (htslib says "truncated file"), so its hint names both."""
        reason = one_line(exc)
        if "EOF marker" in reason:
            return self._error(f"is truncated ({self.kind} files end with an end-of-file "
                               "block, this one does not)", DAMAGED_HINT)
        return self._error(f"cannot be read as {self.kind} ({reason})",
                           REFERENCE_HINT if self.kind == CRAM and references else DAMAGED_HINT)

    def _check_cram_end(self) -> None:
        with open(self.path, "rb") as raw:
            major = raw.read(5)[4:]
            raw.seek(max(self.total_bytes - len(CRAM3_EOF), 0))
            end = raw.read()
        if major == b"\x03" and end != CRAM3_EOF:
            raise self._damaged(OSError("no CRAM EOF marker"))

    def _reads(self) -> Iterator[bytes]:
        """Each read's FASTQ record in file order; paired: each pair's two records together
        (NAME/1, NAME/2), the mates checked to follow each other."""
        first = None  # a pair's READ1 waiting for its mate: (name, number, FASTQ record)
        for number, record in enumerate(self._records(), 1):
            flag, name = record.flag, record.query_name
            if bool(flag & PAIRED) != self.paired:
                raise self._error("is a single read (not flagged paired, 0x1) but the file's "
                                  "first read is paired" if self.paired else "is flagged paired "
                                  "(0x1) but the file's first read is a single read",
                                  MIXED_HINT, name.encode(), number)
            if not self.paired:
                yield _fastq(record, name)
                continue
            mate = flag & (READ1 | READ2)
            if mate not in (READ1, READ2):
                raise self._error("is flagged paired (0x1) but as " + (
                    "both mates (READ1 0x40 and READ2 0x80)" if mate else
                    "neither mate (READ1 0x40 or READ2 0x80)"), ORDER_HINT, name.encode(), number)
            if first is None:
                if mate == READ2:
                    raise self._error("is the second mate (READ2) of a pair, but its first "
                                      "mate (READ1) does not come just before it", ORDER_HINT,
                                      name.encode(), number)
                first = (name, number, _fastq(record, f"{name}/1"))
            elif mate == READ2 and name == first[0]:
                yield first[2] + _fastq(record, f"{name}/2")
                first = None
            else:
                raise self._error(f"is the first mate (READ1) of a pair, but the next read, "
                                  f"'{name}' (#{number}), is not its second mate (READ2 of "
                                  "the same name)", ORDER_HINT, first[0].encode(), first[1])
        if first is not None:
            raise self._error("is the first mate (READ1) of a pair, but the file ends before "
                              "its second mate (READ2)", ORDER_HINT, first[0].encode(), first[1])


def _fastq(record, name: str) -> bytes:
    """The FASTQ record `samtools fastq` writes for a read (without its /1 /2 suffix, which
    `name` carries): a reverse-strand record turned back to the read as sequenced.

    Qualities are read as numbers (query_qualities), never as pysam's query_qualities_str,
    which adds 33 in place to a bytes object that, for a one-base read, is CPython's shared
    one-byte object: the next one-base read of that quality came out wrong (pysam 0.24.1)."""
    sequence = (record.query_sequence or "").encode()
    qualities = record.query_qualities
    quality = MISSING_QUALITY * len(sequence) if qualities is None else \
        qualities.tobytes().translate(PHRED_TO_FASTQ)
    if record.flag & REVERSE:
        sequence, quality = sequence.translate(COMPLEMENT)[::-1], quality[::-1]
    return b"@%s\n%s\n+\n%s\n" % (name.encode(), sequence, quality)
