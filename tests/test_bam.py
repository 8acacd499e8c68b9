"""BAM and CRAM input: the results of the same reads as FASTQ, the reads as `samtools fastq`
gives them, and one-line errors for files that cannot be read as a sample's reads."""

import json
import subprocess
import sys
from pathlib import Path

import pysam
import pytest

from conftest import fastq_text, run_cli, unaligned_bam
from test_fastq import flat_outputs, mates, named, random_records, shard_outputs
from virnucpro.errors import UsageError
from virnucpro.preflight import unprepared
from virnucpro.prepare import estimate, head_counts, write_shards
from virnucpro.reads import ReadSource
from virnucpro.samples import is_paired

Record = tuple[str, str]

ILLUMINA = "M00123:7:000000000-A1B2C:1:1101:{id}"


def bam_letters(records: list[Record]) -> list[Record]:
    """BAM stores bases as upper-case IUPAC codes (no U, no lower case)."""
    return [(header, seq.upper().replace("U", "T")) for header, seq in records]


def single_reads(n: int = 300) -> list[Record]:
    return bam_letters(random_records(n, seed=21, prefix="M00123:7:000000000-A1B2C:1:1101:",
                                      description=" 1:N:0:ACGT"))


def paired_fastq(tmp: Path, n: int = 300) -> list[Path]:
    """R1 and R2 FASTQ files with Illumina names ('ID 1:N:0:ACGT' / 'ID 2:N:0:ACGT')."""
    one, two = (bam_letters(named(reads, ILLUMINA)) for reads in mates(n))
    paths = [tmp / "R1.fq", tmp / "R2.fq"]
    paths[0].write_text(fastq_text(named(one, "{id} 1:N:0:ACGT")))
    paths[1].write_text(fastq_text(named(two, "{id} 2:N:0:ACGT")))
    return paths


def samtools_fastq(path: Path) -> bytes:
    """What `samtools fastq` (pysam's) writes for the file: interleaved mates NAME/1, NAME/2."""
    proc = subprocess.run([sys.executable, "-c", "import pysam, sys; "
                           "pysam.samtools.fastq(sys.argv[1], catch_stdout=False)", str(path)],
                          capture_output=True, check=True)
    return proc.stdout


def fastq_of_blocks(source: ReadSource) -> bytes:
    """The FASTQ text of a BAM's blocks: the records the reads were parsed from."""
    return b"".join(block.text.tobytes() for block in source.blocks())


@pytest.mark.parametrize("suffix", [".bam", ".cram"])
def test_single_reads_give_the_fastq_results_byte_for_byte(tmp_path, suffix):
    fastq = tmp_path / "reads.fq"
    fastq.write_text(fastq_text(single_reads()))
    bam = unaligned_bam(tmp_path / f"reads{suffix}", fastq)
    assert flat_outputs(bam, tmp_path, "bam") == flat_outputs(fastq, tmp_path, "fq")
    ours = shard_outputs(bam, tmp_path, "bam-shards")
    assert ours == shard_outputs(fastq, tmp_path, "fq-shards")
    assert ours["stats"]["paired"] is False and ours["stats"]["reads"] == 300
    assert fastq_of_blocks(ReadSource(bam)) == samtools_fastq(bam)


@pytest.mark.parametrize("suffix", [".bam", ".cram"])
def test_paired_reads_give_the_results_of_the_paired_fastq_files(tmp_path, suffix):
    r1, r2 = paired_fastq(tmp_path)
    bam = unaligned_bam(tmp_path / f"pe{suffix}", r1, r2)
    assert flat_outputs(bam, tmp_path, "bam") == flat_outputs([r1, r2], tmp_path, "fq")
    ours = shard_outputs(bam, tmp_path, "bam-shards")
    theirs = shard_outputs([r1, r2], tmp_path, "fq-shards")
    # the format of an R2 file: a BAM has none (stats.json's input2 is null too)
    assert (ours["stats"].pop("format2"), theirs["stats"].pop("format2")) == (None, "fastq")
    assert ours == theirs
    assert ours["stats"]["paired"] is True and ours["stats"]["reads"] == 600
    reads = [row.split("\t")[1] for row in ours["reads.tsv"].decode().splitlines()[1:3]]
    assert reads == [f"{ILLUMINA.format(id='pair0')}/1", f"{ILLUMINA.format(id='pair0')}/2"]
    stats = json.loads((tmp_path / "bam-shards" / "stats.json").read_text())
    assert (stats["input"], stats["input2"]) == (str(bam), None)
    assert fastq_of_blocks(ReadSource(bam)) == samtools_fastq(bam)


def test_blocks_stream_and_end_with_whole_pairs(tmp_path):
    bam = unaligned_bam(tmp_path / "pe.bam", *paired_fastq(tmp_path, 400))
    source = ReadSource(bam, block_bytes=2000)
    blocks = list(source.blocks())
    assert len(blocks) > 40 and all(len(b) % 2 == 0 for b in blocks)
    assert [b.first_number for b in blocks] == \
        [1 + sum(len(b) for b in blocks[:i]) for i in range(len(blocks))]
    names = [b.record_id(i).decode() for b in blocks for i in range(len(b))]
    assert names == [f"{ILLUMINA.format(id=f'pair{k}')}/{m}" for k in range(400) for m in (1, 2)]
    assert source.bytes_read == source.total_bytes == bam.stat().st_size


def test_one_base_reads_keep_their_qualities(tmp_path):
    """pysam's query_qualities_str changes CPython's shared one-byte objects in place: the
    second one-base read of a quality would come out with another (bam._fastq)."""
    fastq = tmp_path / "tiny.fq"
    fastq.write_text("".join(f"@t{i}\nA\n+\nx\n" for i in range(3)) + "@t3\nACG\n+\nxWx\n")
    bam = unaligned_bam(tmp_path / "tiny.bam", fastq)
    assert fastq_of_blocks(ReadSource(bam)) == fastq.read_bytes() == samtools_fastq(bam)


# --------------------------------------------------------------------------- aligned BAMs

def revcomp(seq: str) -> str:
    return seq[::-1].translate(str.maketrans("ACGTRYKMBVDHN", "TGCAYRMKVBHDN"))


def aligned_bam(path: Path, reads: list[tuple[str, int, str, str | None]]) -> Path:
    """An aligned BAM of (name, flag, read as sequenced, qualities or None) records: a record
    flagged reverse (0x10) stores the reverse complement and the qualities reversed, as
    aligners write it; mapped records are placed on chromosome 'chr1'."""
    header = {"HD": {"VN": "1.6", "SO": "queryname"}, "SQ": [{"SN": "chr1", "LN": 100_000}]}
    with pysam.AlignmentFile(str(path), "wb", header=header) as bam:
        for position, (name, flag, seq, quality) in enumerate(reads):
            record = pysam.AlignedSegment(bam.header)
            record.query_name, record.flag = name, flag
            if flag & 0x10:
                seq, quality = revcomp(seq), quality and quality[::-1]
            record.query_sequence = seq
            record.query_qualities = quality and pysam.qualitystring_to_array(quality)
            if not flag & 0x4:
                record.reference_id, record.reference_start = 0, 100 * position
                record.mapping_quality, record.cigarstring = 60, f"{len(seq)}M"
            bam.write(record)
    return path


READS = [(f"r{i}", seq) for i, (_, seq) in enumerate(single_reads(6))]
QUALITY = "".join(chr(33 + i % 40) for i in range(1000))

ALIGNED = {
    # case: records (name, flag, read as sequenced, qualities)
    "single: reverse strand, secondary, supplementary, unmapped, QC-failed, no qualities": [
        ("r0", 0, READS[0][1], QUALITY[:len(READS[0][1])]),
        ("r1", 0x10, READS[1][1], QUALITY[7:7 + len(READS[1][1])]),
        ("r1", 0x100 | 0x10, READS[1][1], None),  # secondary
        ("r2", 0x800, READS[2][1][:40], QUALITY[:40]),  # supplementary: part of r2
        ("r2", 0x10, READS[2][1], QUALITY[3:3 + len(READS[2][1])]),
        ("r3", 0x4, READS[3][1], QUALITY[:len(READS[3][1])]),
        ("r4", 0x200, READS[4][1], QUALITY[:len(READS[4][1])]),  # QC-failed: a read
        ("r5", 0x10, READS[5][1], None),
    ],
    "paired, mates by name: reverse strands, a secondary record between the mates": [
        ("p0", 0x1 | 0x2 | 0x10 | 0x40, READS[0][1], QUALITY[:len(READS[0][1])]),
        ("p0", 0x1 | 0x100 | 0x40, READS[0][1], QUALITY[:len(READS[0][1])]),
        ("p0", 0x1 | 0x2 | 0x20 | 0x80, READS[1][1], QUALITY[1:1 + len(READS[1][1])]),
        ("p1", 0x1 | 0x8 | 0x40, READS[2][1], QUALITY[:len(READS[2][1])]),
        ("p1", 0x1 | 0x4 | 0x10 | 0x80, READS[3][1], None),
        ("p1", 0x1 | 0x800 | 0x80, READS[3][1][:30], QUALITY[:30]),
    ],
}


@pytest.mark.parametrize("case", ALIGNED)
def test_an_aligned_bam_gives_each_read_once_as_sequenced(tmp_path, case):
    """Secondary and supplementary records are skipped, reverse-strand records turned back:
    the reads `samtools fastq` writes, and the results of those reads as FASTQ."""
    bam = aligned_bam(tmp_path / "aligned.bam", ALIGNED[case])
    fastq = tmp_path / "samtools.fq"
    fastq.write_bytes(samtools_fastq(bam))
    assert fastq_of_blocks(ReadSource(bam)) == fastq.read_bytes()
    reads = [(name, seq) for name, flag, seq, _ in ALIGNED[case] if not flag & 0x900]
    assert fastq.read_bytes().count(b"\n@") + 1 == len(reads)
    assert [b.sequence(i).decode() for b in ReadSource(bam).blocks() for i in range(len(b))] \
        == [seq for _, seq in reads]
    assert flat_outputs(bam, tmp_path, "bam") == flat_outputs(fastq, tmp_path, "fq")


# --------------------------------------------------------------------------- errors

def write_records(path: Path, records: list[tuple[str, int]]) -> Path:
    """An unaligned BAM of (name, flag) records, each read ACGTACGTAC."""
    with pysam.AlignmentFile(str(path), "wb", header={"HD": {"VN": "1.6"}}) as bam:
        for name, flag in records:
            record = pysam.AlignedSegment(bam.header)
            record.query_name, record.flag, record.query_sequence = name, flag, "ACGTACGTAC"
            record.query_qualities = pysam.qualitystring_to_array("I" * 10)
            bam.write(record)
    return path


R1, R2 = 77, 141  # paired, unmapped, READ1 / READ2
ORDER_HINT = ("a paired BAM or CRAM holds each pair's two mates one after the other, READ1 "
              "then READ2, as Picard FastqToSam and samtools import write them: group the "
              "mates with 'samtools collate' (or 'samtools sort -n'), and remove mates whose "
              "partner is missing")
ERRORS = {
    # case: (records, the one line after "virnucpro: error: FILE: ")
    "a lone mate at the end": (
        [("a", R1), ("a", R2), ("b", R1)],
        "record 'b' (#3): is the first mate (READ1) of a pair, but the file ends before its "
        f"second mate (READ2); {ORDER_HINT}"),
    "a lone second mate": (
        [("a", R1), ("a", R2), ("b", R2), ("c", R1), ("c", R2)],
        "record 'b' (#3): is the second mate (READ2) of a pair, but its first mate (READ1) "
        f"does not come just before it; {ORDER_HINT}"),
    "mates in the other order": (
        [("a", R2), ("a", R1)],
        "record 'a' (#1): is the second mate (READ2) of a pair, but its first mate (READ1) "
        "does not come just before it"),
    "mates apart (sorted by position)": (
        [("a", R1), ("b", R1), ("a", R2), ("b", R2)],
        "record 'a' (#1): is the first mate (READ1) of a pair, but the next read, 'b' (#2), "
        "is not its second mate (READ2 of the same name)"),
    "paired and single reads mixed": (
        [("a", R1), ("a", R2), ("c", 4)],
        "record 'c' (#3): is a single read (not flagged paired, 0x1) but the file's first "
        "read is paired; a sample's reads are all paired or all single: split the file with "
        "'samtools view -f 1' (paired) and 'samtools view -F 1' (single) and give two samples"),
    "flagged paired, neither mate": (
        [("a", 0x1 | 0x4)],
        "record 'a' (#1): is flagged paired (0x1) but as neither mate (READ1 0x40 or READ2 "
        "0x80)"),
    "a duplicate read name": (
        [("a", 4), ("b", 4), ("a", 4)],
        "record 'a' (#3): duplicate record ID (first seen at record #1); record IDs must be "
        "unique within a sample; rename one of them"),
    "only a header": (
        [], "holds no reads (no primary records); give a BAM file with at least one read"),
    "only secondary records": (
        [("a", 0x100)], "holds no reads (no primary records)"),
}


def prepare_error(tmp_path: Path, *reads: Path, status: int = 65) -> str:
    """The one error line of `virnucpro prepare` (either layout), checked to leave nothing."""
    found = set()
    for extra in ([], ["--shard-size", "2"]):
        out = tmp_path / f"out{len(extra)}"
        proc = run_cli("prepare", *reads, "--chunk-size", "300", "--outdir", out, *extra)
        assert proc.returncode == status, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(lines) == 1, proc.stderr
        found.add(lines[0])
        assert not out.exists() or not any(out.iterdir())
    assert len(found) == 1
    return found.pop()


@pytest.mark.parametrize("case", ERRORS)
def test_files_that_are_not_a_sample_s_reads_are_one_line_errors(tmp_path, case):
    records, message = ERRORS[case]
    bam = write_records(tmp_path / "reads.bam", records)
    assert prepare_error(tmp_path, bam).startswith(f"virnucpro: error: {bam}: {message}")


@pytest.mark.parametrize("suffix", [".bam", ".cram"])
@pytest.mark.parametrize("cut", ["at a block's end", "inside a block"])
def test_a_truncated_file_is_one_line(tmp_path, suffix, cut):
    fastq = tmp_path / "reads.fq"
    fastq.write_text(fastq_text(single_reads(2000)))
    whole = unaligned_bam(tmp_path / f"whole{suffix}", fastq).read_bytes()
    # Without its end-of-file block (28 bytes in a BAM, 38 in a CRAM 3), or cut in the middle.
    end = len(whole) - (28 if suffix == ".bam" else 38) if cut == "at a block's end" \
        else len(whole) // 2
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(whole[:end])
    kind = suffix[1:].upper()
    line = prepare_error(tmp_path, truncated)
    assert line.startswith(f"virnucpro: error: {truncated}: ")
    if cut == "at a block's end":
        assert line == (f"virnucpro: error: {truncated}: is truncated ({kind} files end with an "
                        "end-of-file block, this one does not); the file is corrupt or "
                        "truncated; re-create it or download it again")
    else:
        assert "the file is corrupt or truncated; re-create it or download it again" in line


def test_an_aligned_cram_without_its_reference_says_so(tmp_path):
    reads = [(name, 0, seq, QUALITY[:len(seq)]) for name, seq in READS]
    bam = aligned_bam(tmp_path / "aligned.bam", reads)
    reference = tmp_path / "chr1.fa"
    reference.write_text(">chr1\n" + "".join(seq for _, seq in READS) * 100 + "\n")
    cram = tmp_path / "aligned.cram"
    pysam.samtools.view("-C", "-T", str(reference), "-o", str(cram), str(bam),
                        catch_stdout=False)
    reference.unlink()
    assert prepare_error(tmp_path, cram) == (
        f"virnucpro: error: {cram}: cannot be read as CRAM (truncated file); an aligned CRAM "
        "(its header lists reference sequences) is decoded with its reference: make that "
        "available where samtools finds it (REF_PATH, REF_CACHE) or convert the file to BAM "
        "('samtools view -b -T REF.fa'); otherwise the file is corrupt or truncated; re-create "
        "it or download it again")


def test_a_bam_with_an_r2_file_is_refused(tmp_path):
    r1, r2 = paired_fastq(tmp_path, 5)
    bam = unaligned_bam(tmp_path / "pe.bam", r1, r2)
    for reads in ([bam, r2], [r1, bam]):
        assert prepare_error(tmp_path, *reads, status=64) == (
            f"virnucpro: error: {bam}: a BAM file holds both mates of paired reads, so it is "
            f"given alone, without an R2 file ({r2 if reads[0] == bam else r1}); give the BAM "
            "file as the sample's only reads file")
    with pytest.raises(UsageError):
        ReadSource([bam, r2])


# --------------------------------------------------------------------------- planning a run

def test_a_sample_is_paired_by_its_files_or_its_reads_flags(tmp_path):
    r1, r2 = paired_fastq(tmp_path, 5)
    paired = unaligned_bam(tmp_path / "pe.cram", r1, r2)
    single = unaligned_bam(tmp_path / "se.bam", r1)
    prepared = tmp_path / "prepared"
    assert [is_paired(reads, prepared) for reads in ([str(r1), str(r2)], [str(paired)],
                                                     [str(single)], [str(r1)])] == \
        [True, True, False, False]
    # Once prepared, reads may be gone: what prepare recorded.
    write_shards(paired, 300, 10, prepared)
    paired.unlink()
    assert is_paired([str(paired)], prepared) is True
    assert is_paired([str(paired)], tmp_path / "not-prepared") is False
    (tmp_path / "empty.bam").write_bytes(b"")  # no format to tell
    assert is_paired([str(tmp_path / "empty.bam")], prepared) is True


@pytest.mark.parametrize("suffix", [".bam", ".cram"])
def test_the_dry_run_estimate_of_a_bam(tmp_path, suffix):
    fastq = tmp_path / "reads.fq"
    fastq.write_text(fastq_text(single_reads(30_000)))  # 10 MB of FASTQ
    bam = unaligned_bam(tmp_path / f"reads{suffix}", fastq)
    stats = write_shards(bam, 500, 1000, tmp_path / "prepared")
    guess = estimate([head_counts(str(bam), 500, 1 << 20)], 1000)
    assert not guess.exact
    assert abs(guess.reads - stats.reads) < 0.05 * stats.reads
    assert abs(guess.frames - stats.frames) < 0.05 * stats.frames
    small = unaligned_bam(tmp_path / f"small{suffix}", *paired_fastq(tmp_path, 50))
    stats = write_shards(small, 500, 10_000, tmp_path / "small")
    assert stats.paired and stats.reads == 100
    assert unprepared("s", [str(small)], 500, 10_000) == (
        "sample s: prepare has not run yet; its embedding jobs appear after it: 100 reads, "
        f"{stats.frames} frames, 1 shard (counted in full)")

