"""Prepare stage: identical to the original VirNucPro, record for record."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import plain_prepare
from conftest import read_fasta, run_cli
from virnucpro.fasta import ReadsReader
from virnucpro.frames import chunk_layout
from virnucpro.prepare import FLAT_FILES, write_flat, write_shards

GOLDEN = ["test_fixed_500bp", "test_sequences_small", "test_with_orfs"]


@pytest.mark.parametrize("name", GOLDEN)
def test_cli_matches_golden_files(reference, tmp_path, name):
    ref = reference / "prepare"
    run_cli("prepare", ref / f"{name}.fa", "--chunk-size", "500", "--outdir", tmp_path, check=True)
    pairs = {"chunked.fa": f"{name}_chunked500.fa",
             "nucleotide.fa": f"{name}_identified_nucleotide.fa",
             "protein.faa": f"{name}_identified_protein.faa"}
    for ours, theirs in pairs.items():
        assert read_fasta(tmp_path / ours) == read_fasta(ref / theirs)
        # Byte-identical too, including the chunk file's 60-column wrapping.
        assert (tmp_path / ours).read_bytes() == (ref / theirs).read_bytes()


def spans(length: int, size: int) -> list[tuple[int, int]]:
    c = chunk_layout(np.array([length]), np.array([0]), size)
    return [(int(s), int(s + n)) for s, n in zip(c.start, c.length)]


def test_chunking_rules():
    assert spans(501, 500) == [(0, 500), (250, 501)]  # short last chunk
    assert [b - a for a, b in spans(1001, 500)] == [500, 500, 335]
    assert spans(120, 300) == [(0, 120)]  # record shorter than the chunk
    assert spans(300, 300) == [(0, 300)]
    assert spans(1, 500) == [(0, 1)]


@pytest.mark.parametrize("size", [300, 500])
def test_chunking_equals_original_arithmetic_for_every_length(size):
    lengths = np.arange(1, 4 * size + 3)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    layout = chunk_layout(lengths, offsets, size)
    ours = [(int(r), int(s - offsets[r]), int(n))
            for r, s, n in zip(layout.record, layout.start, layout.length)]
    seq = "A" * int(lengths.max())
    theirs = []
    for r, length in enumerate(lengths):
        pos = 0
        for _, chunk in plain_prepare.chunks("x", seq[:length], size):
            start = plain_prepare_start(length, size, pos)
            theirs.append((r, start, len(chunk)))
            pos += 1
    assert ours == theirs


def plain_prepare_start(length: int, size: int, k: int) -> int:
    n = -(-length // size)
    repeat = n * size - length
    low = repeat // n
    up = repeat - low * (n - 1)
    moves = [low + 1] * up + [low] * max(0, n - 1 - up) + [0]
    return k * size - sum(moves[:k])


def frames_of(tmp_path: Path, text: str, size: int = 300, u_as_t: bool = False
              ) -> list[tuple[str, str, str]]:
    fasta = tmp_path / "in.fa"
    fasta.write_text(text)
    out = tmp_path / "out"
    write_flat(fasta, size, out, u_as_t)
    nuc = read_fasta(out / "nucleotide.fa")
    prot = read_fasta(out / "protein.faa")
    assert [i for i, _ in nuc] == [i for i, _ in prot]
    return [(i, n, p) for (i, n), (_, p) in zip(nuc, prot)]


def test_ambiguous_codons_are_skipped_and_shorten_the_protein(tmp_path):
    # F1 codons: ATG NNN AAA CCC GGG -> M (skip) K P G; the nucleotide slice is
    # 3*len(protein)+1 bases from the frame start, not the codons actually used.
    seq = "ATGNNNAAACCCGGG"
    frames = {i: (n, p) for i, n, p in frames_of(tmp_path, f">r\n{seq}\n")}
    assert frames["r_chunk_1F1"] == (seq[0:13], "MKPG")


def test_reverse_frames_take_3_len_plus_1_bases(tmp_path):
    rc = "GCTGCTGCTGCTGCTGCTG"  # 19 bases; R1 = A*6, R2 = L*6, R3 = C*5
    seq = rc.translate(str.maketrans("ACGT", "TGCA"))[::-1]
    frames = {i: (n, p) for i, n, p in frames_of(tmp_path, f">r\n{seq}\n")}
    assert frames["r_chunk_1R1"] == (rc, "AAAAAA")  # 3*6+1 = 19 bases
    assert frames["r_chunk_1R2"] == (rc[1:], "LLLLLL")  # 3*6+1 clipped at the chunk end
    assert frames["r_chunk_1R3"] == (rc[2:18], "CCCCC")  # 3*5+1 = 16 bases


def test_lowercase_kept_in_chunks_uppercased_in_frames(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">r desc here\natgaaaccc\n")
    write_flat(fasta, 300, tmp_path / "o")
    assert read_fasta(tmp_path / "o" / "chunked.fa") == [("r_chunk_1", "atgaaaccc")]
    assert ("r_chunk_1F1", "ATGAAACCC") in read_fasta(tmp_path / "o" / "nucleotide.fa")


def random_fasta(rng: random.Random, n: int, alphabet: str, lengths=(1, 1300)) -> str:
    out = []
    for i in range(n):
        length = rng.randint(*lengths)
        seq = "".join(rng.choice(alphabet) for _ in range(length))
        width = rng.choice([60, 70, 1000000])
        out.append(f">read{i} some description\n" + "\n".join(
            seq[j:j + width] for j in range(0, len(seq), width)) + "\n")
    return "".join(out)


@pytest.mark.parametrize("size", [300, 500])
def test_equals_plain_implementation_on_random_reads(tmp_path, size):
    # Mostly ACGT with some lowercase and IUPAC letters; ATG-rich so frames survive.
    rng = random.Random(size)
    text = random_fasta(rng, 300, "ACGT" * 20 + "acgtNRYKMSWBDHVU", lengths=(1, 1300))
    expected = list(plain_prepare.prepare_text(text, size))
    assert frames_of(tmp_path, text, size) == expected
    assert len(expected) > 50


def test_gt_and_non_ascii_text_in_headers_are_read_as_the_original_reads_them(tmp_path):
    # Only a '>' in a sequence line is refused (BAD_INPUTS); in a header it is text, and
    # UTF-8 IDs and descriptions are kept byte for byte.
    text = ">a x>y\nATGAAACCCGGGTTT\n>café desc é>\nATGCCCAAATTTGGG\n>b>c\nATG\nTTTGGGCCC\n"
    expected = list(plain_prepare.prepare_text(text, 300))
    assert frames_of(tmp_path, text, 300) == expected
    assert {i.split("_chunk_")[0] for i, _, _ in expected} == {"a", "café", "b>c"}


# Every IUPAC code and U, either case; ACGT weighted up so that stop-free frames occur.
IUPAC_LETTERS = "ACGT" * 8 + "URYSWKMBDHVN" + "acgturyswkmbdhvn"
random_sequences = st.lists(st.lists(st.sampled_from(IUPAC_LETTERS), min_size=1, max_size=700)
                            .map("".join), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(random_sequences, st.sampled_from([300, 500]))
def test_property_equals_plain_implementation(tmp_path_factory, seqs, size):
    tmp = tmp_path_factory.mktemp("prop")
    text = "".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs))
    assert frames_of(tmp, text, size) == list(plain_prepare.prepare_text(text, size))


@settings(max_examples=50, deadline=None)
@given(random_sequences, st.sampled_from([300, 500]))
def test_property_u_as_t_reads_rna_as_dna(tmp_path_factory, seqs, size):
    tmp = tmp_path_factory.mktemp("rna")
    text = "".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs))
    dna = text.replace("U", "T").replace("u", "t")
    assert frames_of(tmp, text, size, u_as_t=True) == list(plain_prepare.prepare_text(dna, size))


def test_gzip_crlf_and_line_width_do_not_change_the_result(tmp_path, reference):
    src = (reference / "prepare" / "test_fixed_500bp.fa").read_text()
    records = read_fasta(reference / "prepare" / "test_fixed_500bp.fa")
    one_line = "".join(f">{i}\n{s}\n" for i, s in records)
    variants = {
        "plain.fa": src.encode(),
        "crlf.fa": src.replace("\n", "\r\n").encode(),
        "gz.fa.gz": gzip.compress(src.encode()),
        "oneline.fa": one_line.encode(),
        "blank-lines.fa": ("\n\n" + src.replace("\n>", "\n\n>")).encode(),
        "byte-order-mark.fa": b"\xef\xbb\xbf" + src.encode(),
        "byte-order-mark.fa.gz": gzip.compress(b"\xef\xbb\xbf" + src.encode()),
    }
    results = set()
    for name, data in variants.items():
        path = tmp_path / name
        path.write_bytes(data)
        write_flat(path, 500, tmp_path / f"out-{name}")
        results.add(tuple((tmp_path / f"out-{name}" / f).read_bytes() for f in FLAT_FILES))
    assert len(results) == 1


def test_reader_blocks_split_anywhere_give_the_same_records(tmp_path):
    text = random_fasta(random.Random(1), 200, "ACGT", lengths=(1, 400))
    path = tmp_path / "in.fa"
    path.write_text(text)
    whole = [(i, s) for b in ReadsReader(path) for i, s in zip(b.ids, split(b))]
    for block_bytes in (7, 64, 1000):
        blocks = list(ReadsReader(path, block_bytes=block_bytes))
        assert [(i, s) for b in blocks for i, s in zip(b.ids, split(b))] == whole
        assert [b.first_number for b in blocks][0] == 1
    assert len(whole) == 200


def split(block) -> list[bytes]:
    return [block.sequence(i) for i in range(len(block.ids))]


def test_shards_partition_the_frames_in_order(tmp_path):
    text = random_fasta(random.Random(7), 120, "ACGT" * 5 + "N", lengths=(50, 900))
    fasta = tmp_path / "in.fa"
    fasta.write_text(text)
    flat = write_flat(fasta, 300, tmp_path / "flat")
    stats = write_shards(fasta, 300, 7, tmp_path / "prep")
    shards = sorted((tmp_path / "prep" / "shards").glob("shard_*.fna"))
    assert len(shards) == stats.shards == -(-flat.frames // 7)
    nuc, prot, index = [], [], []
    for fna in shards:
        stem = fna.with_suffix("")
        assert stem.with_suffix(".done").read_text().splitlines()[0] == str(len(read_fasta(fna)))
        nuc += read_fasta(fna)
        prot += read_fasta(stem.with_suffix(".faa"))
        rows = stem.with_suffix(".index.tsv").read_text().splitlines()
        assert rows[0] == "frame_id\tread_index\tchunk\tframe\trepresentative"
        index += [r.split("\t") for r in rows[1:]]
    assert nuc == read_fasta(tmp_path / "flat" / "nucleotide.fa")
    assert prot == read_fasta(tmp_path / "flat" / "protein.faa")
    reads = [r.split("\t") for r in (tmp_path / "prep" / "reads.tsv").read_text().splitlines()[1:]]
    assert [r[1] for r in reads] == [f"read{i}" for i in range(120)]
    for frame_id, read_index, chunk, tag, representative in index:
        assert frame_id == f"{reads[int(read_index)][1]}_chunk_{chunk}{tag}"
        assert representative == ""  # random reads: no chunk repeats another
    assert sum(int(r[4]) for r in reads) == len(index) == stats.frames == stats.distinct_frames
    assert stats.reads_without_frames == sum(int(r[4]) == 0 for r in reads)
    saved = json.loads((tmp_path / "prep" / "stats.json").read_text())
    assert saved["frames"] == stats.frames and saved["shards"] == stats.shards


def test_reads_without_frames_are_counted_not_errors(reference, tmp_path):
    stats = write_shards(reference / "prepare" / "test_sequences_small.fa", 500, 10, tmp_path / "p")
    assert (stats.reads, stats.frames, stats.reads_without_frames, stats.shards) == (11, 0, 11, 0)
    assert len((tmp_path / "p" / "reads.tsv").read_text().splitlines()) == 12


BAD_INPUTS = {
    "missing": (None, "does not exist", 66),
    "empty": (b"", "file is empty", 65),
    "blank": (b"\n\n\n", "contains no records (only blank lines)", 65),
    "genbank": (b"LOCUS       X 10 bp\n", "not a FASTA or FASTQ file: looks like GenBank", 65),
    "unknown": (b"hello\n", "not a FASTA or FASTQ file: does not start with a FASTA ('>') or "
                "FASTQ ('@') header; first line: 'hello'", 65),
    "binary": (bytes(range(256)) * 4, "binary", 65),
    "bad-gzip": (b"\x1f\x8b" + b"garbage" * 20, "cannot be decompressed", 65),
    "empty-record": (b">a\nACGT\n>b\n>c\nACGT\n", "record 'b' (#2): has an empty sequence", 65),
    "no-id": (b">a\nACGT\n>\nACGT\n", "header line has no record ID", 65),
    "duplicate": (b">a\nACGT\n>b\nAAAA\n>a\nCCCC\n",
                  "record 'a' (#3): duplicate record ID (first seen at record #1)", 65),
    "protein": (b">p1\nMKVLEEIQ\n",
                "record 'p1' (#1): has 'L' at position 4, which is not a nucleotide", 65),
    # A header glued to the end of a sequence line: refused, never translated or dropped.
    "gt-in-sequence": (b">a\nACGT\n>b\nGAAACAG>CAGCTTAAT\n",
                       "record 'b' (#2): has '>' inside a sequence line, at position 8; a "
                       "header starts with '>' at the beginning of a line", 65),
    "gt-in-wrapped-sequence": (b">a\nACGT\n>b\nGAAACAGCA\nGCT>TAAT\nACG\n",
                               "record 'b' (#2): has '>' inside a sequence line, at position 13",
                               65),
    "at-in-sequence": (b">a\nACGT@ACGT\n", "record 'a' (#1): has '@' inside a sequence line, "
                       "at position 5", 65),
    "cr-only": (b">a\rACGT\r>b\rACGT\r", "has line breaks of carriage returns alone (CR, "
                "classic Mac OS line endings); convert them to LF", 65),
    "latin-1-id": (b">a\nACGT\n>caf\xe9 x\nACGT\n", "record 'caf\ufffd' (#2): its ID is not "
                   "UTF-8 text (byte 0xe9); rename the record", 65),
    # FASTQ (told from the content: these files are named .fa too)
    "fastq-quality-length": (b"@r1\nACGT\n+\nIIII\n@r2 x\nACGT\n+\nIII\n",
                             "record 'r2' (#2): has 4 bases but 3 quality scores", 65),
    "fastq-truncated": (b"@r1\nACGT\n+\nIIII\n@r2 x\nACGT\n", "record 'r2' (#2): the file "
                        "ends inside this record (it has 2 of its 4 lines); "
                        "the file is truncated", 65),
    "fastq-truncated-header": (b"@r1\nACGT\n+\nIIII\n@r2", "record 'r2' (#2): the file ends "
                               "inside this record (it has 1 of its 4 lines)", 65),
    "fastq-no-plus-line": (b"@r1\nACGT\nIIII\n@r2\nACGT\n+\nIIII\n", "record 'r1' (#1): its "
                           "third line is 'IIII', not the '+' line", 65),
    "fastq-wrapped": (b"@r1\nACGT\nACGT\n+\nIIII\nIIII\n", "record 'r1' (#1): its third line "
                      "is 'ACGT', not the '+' line; a FASTQ record is exactly 4 lines", 65),
    "fastq-blank-line": (b"@r1\nACGT\n+\nIIII\n\n@r2\nACGT\n+\nIIII\n", "record #2: should "
                         "start with a FASTQ header ('@'), found ''", 65),
    "fastq-no-id": (b"@r1\nACGT\n+\nIIII\n@\nACGT\n+\nIIII\n", "record #2: header line has "
                    "no record ID; give every record an ID after '@'", 65),
    "fastq-empty-read": (b"@a\nACGT\n+\nIIII\n@b\n\n+\n\n", "record 'b' (#2): has an empty "
                         "sequence", 65),
    "fastq-protein": (b"@p1\nMKVLEEIQ\n+\nIIIIIIII\n", "record 'p1' (#1): has 'L' at position 4, "
                      "which is not a nucleotide", 65),
    "fastq-gt-in-sequence": (b"@a\nACGT\n+\nIIII\n@b\nAC>GT\n+\nIIIII\n",
                             "record 'b' (#2): has '>' inside a sequence line, at position 3",
                             65),
    "fastq-latin-1-id": (b"@r\xe9\nACGT\n+\nIIII\n", "record 'r\ufffd' (#1): its ID is not "
                         "UTF-8 text (byte 0xe9)", 65),
    "fastq-duplicate": (b"@a\nACGT\n+\nIIII\n@b\nAAAA\n+\nIIII\n@a x\nCCCC\n+\nIIII\n",
                        "record 'a' (#3): duplicate record ID (first seen at record #1)", 65),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error_and_no_output(tmp_path, case):
    data, message, code = BAD_INPUTS[case]
    path = tmp_path / f"{case}.fa"
    if data is not None:
        path.write_bytes(data)
    for extra in ([], ["--shard-size", "2"]):
        out = tmp_path / f"out{len(extra)}"
        proc = run_cli("prepare", path, "--chunk-size", "300", "--outdir", out, *extra)
        assert proc.returncode == code, proc.stderr
        error_lines = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(error_lines) == 1 and "Traceback" not in proc.stderr
        assert error_lines[0].startswith(f"virnucpro: error: {path}")
        assert message in error_lines[0]
        assert not out.exists() or not any(out.iterdir())


def test_chunk_size_must_be_300_or_500(tmp_path, reference):
    proc = run_cli("prepare", reference / "prepare" / "test_with_orfs.fa", "--chunk-size", "400",
                   "--outdir", tmp_path / "o")
    assert proc.returncode == 2 and "invalid choice: 400" in proc.stderr
    assert not (tmp_path / "o").exists()
    from virnucpro.errors import UsageError
    with pytest.raises(UsageError, match="chunk size 400 is not supported"):
        write_flat(reference / "prepare" / "test_with_orfs.fa", 400, tmp_path / "o")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
