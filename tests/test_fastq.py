"""FASTQ input and paired-end reads: the same results as the same reads in FASTA."""

import gzip
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import fastq_text, read_fasta, run_cli
from virnucpro.errors import InputError, UsageError
from virnucpro.fasta import ReadsReader
from virnucpro.prepare import FLAT_FILES, write_flat, write_shards
from virnucpro.reads import ReadSource

Record = tuple[str, str]  # (header without '>' / '@', sequence)


def fasta_text(records: list[Record]) -> str:
    return "".join(f">{header}\n{seq}\n" for header, seq in records)


def random_records(n: int, seed: int, prefix: str = "read", description: str = " sample {i}",
                   lengths=(1, 900)) -> list[Record]:
    rng = random.Random(seed)
    return [(f"{prefix}{i}{description.format(i=i)}",
             "".join(rng.choices("ACGT" * 8 + "acgtNRYU", k=rng.randint(*lengths))))
            for i in range(n)]


def flat_outputs(reads, tmp: Path, name: str) -> tuple[bytes, ...]:
    write_flat(reads, 300, tmp / name)
    return tuple((tmp / name / f).read_bytes() for f in FLAT_FILES)


def shard_outputs(reads, tmp: Path, name: str) -> dict[str, bytes]:
    """Every file write_shards makes, by name; stats.json without the file names and timing."""
    write_shards(reads, 300, 13, tmp / name)
    out = {p.relative_to(tmp / name).as_posix(): p.read_bytes()
           for p in sorted((tmp / name).rglob("*")) if p.is_file() and p.name != "stats.json"}
    stats = json.loads((tmp / name / "stats.json").read_text())
    out["stats"] = {k: v for k, v in stats.items() if k not in ("input", "input2", "seconds")}
    return out


RECORDS = random_records(400, seed=3)

FASTQ_VARIANTS = {
    "plain": lambda: fastq_text(RECORDS).encode(),
    "gzip": lambda: gzip.compress(fastq_text(RECORDS).encode()),
    "CRLF": lambda: fastq_text(RECORDS).replace("\n", "\r\n").encode(),
    "CRLF gzip": lambda: gzip.compress(fastq_text(RECORDS).replace("\n", "\r\n").encode()),
    "'+' line repeats the title": lambda: fastq_text(RECORDS, plus=True).encode(),
    "no final line break": lambda: fastq_text(RECORDS).rstrip("\n").encode(),
    "blank lines before and after": lambda: ("\n\n" + fastq_text(RECORDS) + "\n\n\n\n\n").encode(),
}


@pytest.mark.parametrize("variant", FASTQ_VARIANTS)
def test_fastq_gives_the_fasta_results_byte_for_byte(tmp_path, variant):
    fasta, fastq = tmp_path / "reads.fa", tmp_path / "reads.whatever"
    fasta.write_text(fasta_text(RECORDS))
    fastq.write_bytes(FASTQ_VARIANTS[variant]())
    assert flat_outputs(fastq, tmp_path, "fq") == flat_outputs(fasta, tmp_path, "fa")
    from_fastq = shard_outputs(fastq, tmp_path, "fq-shards")
    from_fasta = shard_outputs(fasta, tmp_path, "fa-shards")
    assert from_fasta["stats"]["format"] == "fasta"
    assert from_fastq == {**from_fasta, "stats": {**from_fasta["stats"], "format": "fastq"}}
    assert len(read_fasta(tmp_path / "fa" / "protein.faa")) > 100  # frames were compared


def test_fastq_of_the_golden_inputs_gives_the_golden_outputs(reference, tmp_path):
    ref = reference / "prepare"
    fastq = tmp_path / "test_with_orfs.fq"
    fastq.write_text(fastq_text([(i, s) for i, s in read_fasta(ref / "test_with_orfs.fa")]))
    run_cli("prepare", fastq, "--chunk-size", "500", "--outdir", tmp_path / "out", check=True)
    assert (tmp_path / "out" / "nucleotide.fa").read_bytes() == \
        (ref / "test_with_orfs_identified_nucleotide.fa").read_bytes()
    assert (tmp_path / "out" / "protein.faa").read_bytes() == \
        (ref / "test_with_orfs_identified_protein.faa").read_bytes()


def records_of(path: Path, block_bytes: int) -> list[tuple[bytes, bytes, bytes, int]]:
    return [(b.record_id(i), b.header(i), b.sequence(i), b.first_number + i)
            for b in ReadsReader(path, block_bytes=block_bytes) for i in range(len(b))]


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_fastq_blocks_split_anywhere_give_the_same_records(tmp_path, line_end):
    records = random_records(150, seed=5, lengths=(0, 300))
    records = [(h, s or "A") for h, s in records]
    path = tmp_path / "in.fq"
    path.write_bytes((fastq_text(records) + "\n\n").replace("\n", line_end).encode())
    expected = [(h.split()[0].encode(), h.encode(), s.encode(), i + 1)
                for i, (h, s) in enumerate(records)]
    for block_bytes in (1, 7, 64, 1000, 1 << 21):
        assert records_of(path, block_bytes) == expected, block_bytes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text("ab_|:/1", min_size=1, max_size=8),
                          st.sampled_from(["", " desc", "\tx y", "  two spaces"]),
                          st.text("ACGTacgtNRYKU", min_size=1, max_size=700)),
                min_size=1, max_size=12, unique_by=lambda r: r[0]),
       st.booleans(), st.integers(1, 3))
def test_property_fastq_equals_fasta(tmp_path_factory, records, crlf, seed):
    tmp = tmp_path_factory.mktemp("fq")
    records = [(rid + description, seq) for rid, description, seq in records]
    text = fastq_text(records, random.Random(seed))
    (tmp / "r.fq").write_text(text.replace("\n", "\r\n") if crlf else text, newline="")
    (tmp / "r.fa").write_text(fasta_text(records))
    assert flat_outputs(tmp / "r.fq", tmp, "fq") == flat_outputs(tmp / "r.fa", tmp, "fa")


def test_invalid_letters_are_reported_as_for_fasta(tmp_path):
    records = RECORDS[:5] + [("bad one", "ACGTACXGT")] + RECORDS[5:9]
    errors = []
    for name, text in (("r.fa", fasta_text(records)), ("r.fq", fastq_text(records))):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError) as caught:
            write_flat(tmp_path / name, 300, tmp_path / f"out-{name}")
        errors.append(str(caught.value).replace(str(tmp_path / name), "FILE"))
    assert errors[0] == errors[1]
    assert errors[0].startswith("FILE: record 'bad' (#6): has 'X' at position 7, which is not")


# --------------------------------------------------------------------------- paired reads

def mates(n: int, seed: int = 11) -> tuple[list[Record], list[Record]]:
    """Pairs of reads: R1 of 100-300 bp, R2 of 20-60 bp, so their blocks never line up."""
    one = random_records(n, seed, prefix="pair", description="", lengths=(100, 300))
    two = random_records(n, seed + 1, prefix="pair", description="", lengths=(20, 60))
    return one, two


def interleaved(one: list[Record], two: list[Record]) -> str:
    """The FASTA a paired sample must give the results of: mates ID/1, ID/2, pair by pair."""
    return "".join(f">{a.split()[0]}/1\n{s}\n>{a.split()[0]}/2\n{t}\n"
                   for (a, s), (_, t) in zip(one, two))


NAMING = {
    # R1 header, R2 header (from the pair's ID)
    "same IDs (Illumina 1:N:0 / 2:N:0 descriptions)": ("{id} 1:N:0:ACGT", "{id} 2:N:0:ACGT"),
    "IDs ending in /1 and /2": ("{id}/1", "{id}/2 some description"),
    "only R1 has /1": ("{id}/1", "{id}"),
}


def named(records: list[Record], pattern: str) -> list[Record]:
    return [(pattern.format(id=header), seq) for header, seq in records]


@pytest.mark.parametrize("naming", NAMING)
def test_paired_files_give_the_results_of_the_interleaved_mates(tmp_path, naming):
    one, two = mates(300)
    r1, r2 = tmp_path / "R1.fq", tmp_path / "R2.fq.gz"
    r1.write_text(fastq_text(named(one, NAMING[naming][0])))
    r2.write_bytes(gzip.compress(fastq_text(named(two, NAMING[naming][1])).encode()))
    (tmp_path / "mates.fa").write_text(interleaved(one, two))
    assert flat_outputs([r1, r2], tmp_path, "paired") == \
        flat_outputs(tmp_path / "mates.fa", tmp_path, "fa")
    paired = shard_outputs([r1, r2], tmp_path, "paired-shards")
    single = shard_outputs(tmp_path / "mates.fa", tmp_path, "fa-shards")
    assert paired["stats"] == {**single["stats"], "paired": True, "format": "fastq",
                               "format2": "fastq"}
    assert {k: v for k, v in paired.items() if k != "stats"} == \
        {k: v for k, v in single.items() if k != "stats"}
    reads = [row.split("\t") for row in paired["reads.tsv"].decode().splitlines()[1:]]
    assert [r[:2] for r in reads[:4]] == [["0", "pair0/1"], ["1", "pair0/2"],
                                         ["2", "pair1/1"], ["3", "pair1/2"]]
    stats = json.loads((tmp_path / "paired-shards" / "stats.json").read_text())
    assert (stats["input"], stats["input2"], stats["paired"]) == (str(r1), str(r2), True)


def test_paired_files_stream_in_lockstep(tmp_path):
    """Blocks of the two files hold different numbers of records: they are aligned block by
    block, never by reading one file whole."""
    one, two = mates(400)
    r1, r2 = tmp_path / "R1.fq", tmp_path / "R2.fa"
    r1.write_text(fastq_text(one))
    r2.write_text(fasta_text(two))
    source = ReadSource([r1, r2], block_bytes=2000)
    blocks = list(source.blocks())
    largest = max(len(b) for reader in source.readers for b in reader)
    assert len(blocks) > 40 and max(len(b) for b in blocks) <= 2 * largest
    names = [b.record_id(i).decode() for b in blocks for i in range(len(b))]
    assert names == [f"pair{k}/{m}" for k in range(400) for m in (1, 2)]
    sequences = [b.sequence(i).decode() for b in blocks for i in range(len(b))]
    assert sequences == [s for pair in zip(one, two) for _, s in pair]


def write_pair(tmp_path: Path, one: list[Record], two: list[Record]) -> list[Path]:
    paths = [tmp_path / "R1.fq", tmp_path / "R2.fq"]
    for path, records in zip(paths, (one, two)):
        path.write_text(fastq_text(records))
    return paths


PAIRED_ERRORS = {
    # case: (R1 records, R2 records, the file named, what the line says)
    "R2 has fewer records": (
        [("a", "ACGT"), ("b", "ACGT"), ("c", "ACGT")], [("a", "ACGT"), ("b", "ACGT")], "R1.fq",
        "record 'c' (#3): has no mate: {R2} ends after 2 records; the two files must hold the "
        "same reads in the same order"),
    "R1 has fewer records": (
        [("a", "ACGT")], [("a", "ACGT"), ("b", "ACGT")], "R2.fq",
        "record 'b' (#2): has no mate: {R1} ends after 1 records"),
    "IDs differ": (
        [("a/1", "ACGT"), ("b/1", "ACGT")], [("a/2", "ACGT"), ("c/2", "ACGT")], "R2.fq",
        "record 'c/2' (#2): is not the mate of record 'b/1' (#2) of {R1}: their IDs differ "
        "beyond the /1 /2 suffix"),
    "suffixes swapped": (
        [("a/2", "ACGT")], [("a/1", "ACGT")], "R2.fq",
        "record 'a/1' (#1): is not the mate of record 'a/2' (#1) of {R1}"),
    "duplicate mate name": (
        [("a", "ACGT"), ("a/1", "ACGT")], [("a", "ACGT"), ("a/2", "ACGT")], "R1.fq",
        "record 'a/1' (#2): duplicate record ID (first seen at record #1)"),
}


@pytest.mark.parametrize("case", PAIRED_ERRORS)
def test_paired_files_that_do_not_pair_are_one_line_errors(tmp_path, case):
    one, two, named_file, message = PAIRED_ERRORS[case]
    r1, r2 = write_pair(tmp_path, one, two)
    expected = f"virnucpro: error: {tmp_path / named_file}: " + message.format(R1=r1, R2=r2)
    for extra in ([], ["--shard-size", "2"]):
        out = tmp_path / f"out{len(extra)}"
        proc = run_cli("prepare", r1, r2, "--chunk-size", "300", "--outdir", out, *extra)
        assert proc.returncode == 65, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and lines[0].startswith(expected), lines
        assert not out.exists() or not any(out.iterdir())


def test_the_same_file_as_both_mates_is_refused(tmp_path):
    r1, _ = write_pair(tmp_path, [("a", "ACGT")], [("a", "ACGT")])
    with pytest.raises(UsageError, match="given as both R1 and R2"):
        write_flat([r1, tmp_path / "." / "R1.fq"], 300, tmp_path / "out")


def test_cli_prepares_paired_files(tmp_path):
    one, two = mates(50)
    r1, r2 = write_pair(tmp_path, named(one, "{id} 1:N:0"), named(two, "{id} 2:N:0"))
    (tmp_path / "mates.fa").write_text(interleaved(one, two))
    proc = run_cli("prepare", r1, r2, "--chunk-size", "300", "--outdir", tmp_path / "cli",
                   check=True)
    assert proc.stdout.startswith("100 reads,")
    write_flat(tmp_path / "mates.fa", 300, tmp_path / "fa")
    for name in FLAT_FILES:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "fa" / name).read_bytes()
