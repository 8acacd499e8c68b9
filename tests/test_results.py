"""The decision rule (default and virus_threshold), pair calls, the virus reads files,
samples_summary.tsv, demo-model detection and the report pages, on known inputs."""

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest

from conftest import fastq_text
from test_classify import write_reads, write_scores
from virnucpro.calls import LENGTH_SAMPLE, TOP_READS, Evidence, ScoreDistributions, chunk_is_virus
from virnucpro.classify import aggregate
from virnucpro.errors import InputError, UsageError
from virnucpro.layout import FASTA, FASTQ
from virnucpro.prepare import write_shards
from virnucpro.provenance import write_provenance
from virnucpro.report import write_overview, write_sample_report
from virnucpro.results import (SAMPLES_SUMMARY_COLUMNS, virus_reads_format,
                               write_samples_summary, write_virus_reads)


def rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- the rule

@pytest.mark.parametrize("others, virus, threshold, expected", [
    (0.6, 0.4, None, False), (0.4, 0.6, None, True),
    (0.5, 0.5, None, True),  # the original's >=: a tie is virus
    (0.9, 0.55, 0.5, True),  # a threshold ignores P(others)
    (0.1, 0.69, 0.7, False), (0.3, 0.7, 0.7, True),  # >= t
])
def test_chunk_rule_default_and_with_a_threshold(others, virus, threshold, expected):
    assert chunk_is_virus(others, virus, threshold) is expected


def threshold_sample(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Three reads: 'split' has S1 = 0.8 > S2 = 0.7 in its one chunk; 'low' has S2 = 0.55 >
    S1 = 0.45; 'long' has three chunks of S2 0.9, 0.65, 0.3 (S1 0.1, 0.35, 0.7)."""
    reads = write_reads(tmp_path / "reads.tsv", [(0, "split", 150, 1, 2), (1, "low", 150, 1, 1),
                                                 (2, "long", 1200, 3, 3)])
    scores = write_scores(tmp_path / "0.tsv", [
        ("split_chunk_1F1", 0, 1, "0.3", "0.7"), ("split_chunk_1R1", 0, 1, "0.8", "0.2"),
        ("low_chunk_1F2", 1, 1, "0.45", "0.55"),
        ("long_chunk_1F1", 2, 1, "0.1", "0.9"), ("long_chunk_2F1", 2, 2, "0.35", "0.65"),
        ("long_chunk_3F1", 2, 3, "0.7", "0.3")])
    return reads, [scores]


@pytest.mark.parametrize("threshold, calls, virus_chunks", [
    (None, ["non-virus", "virus", "virus"], ["0", "1", "2"]),
    (0.6, ["virus", "non-virus", "virus"], ["1", "0", "2"]),
    (0.75, ["non-virus", "non-virus", "non-virus"], ["0", "0", "1"]),
    (0.5, ["virus", "virus", "virus"], ["1", "1", "2"]),
])
def test_threshold_sets_the_read_calls_and_never_the_original_tables(tmp_path, threshold, calls,
                                                                     virus_chunks):
    reads, scores = threshold_sample(tmp_path)
    (tmp_path / "default").mkdir()
    aggregate(reads, scores, tmp_path / "default")  # the original's rule
    counts = aggregate(reads, scores, tmp_path, threshold)
    summary = rows(tmp_path / "summary.tsv")[1:]
    assert [r[7] for r in summary] == calls and [r[6] for r in summary] == virus_chunks
    assert [r[4] for r in summary] == ["0.7", "0.55", "0.9"]  # the scores do not change
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "default" / name).read_bytes()
    assert counts["virus_threshold"] == threshold
    assert (counts["virus"] == calls.count("virus")
            and counts["non-virus"] == calls.count("non-virus"))


# --------------------------------------------------------------------------- pairs

def paired_sample(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Five pairs: p1 virus + non-virus mates; p2 no frame + non-virus; p3 no frame in either
    mate; p4 mate 1 three chunks (one virus) + mate 2 non-virus; p5 mate 1 two chunks (one
    virus) + mate 2 virus."""
    reads = write_reads(tmp_path / "reads.tsv", [
        (0, "p1/1", 150, 1, 1), (1, "p1/2", 150, 1, 1),
        (2, "p2/1", 150, 1, 0), (3, "p2/2", 150, 1, 1),
        (4, "p3/1", 90, 1, 0), (5, "p3/2", 90, 1, 0),
        (6, "p4/1", 1200, 3, 3), (7, "p4/2", 150, 1, 1),
        (8, "p5/1", 700, 2, 2), (9, "p5/2", 150, 1, 1)])
    shard0 = write_scores(tmp_path / "0.tsv", [
        ("p1/1_chunk_1F1", 0, 1, "0.2", "0.8"), ("p1/2_chunk_1F1", 1, 1, "0.6", "0.4"),
        ("p2/2_chunk_1R2", 3, 1, "0.9", "0.1"),
        ("p4/1_chunk_1F1", 6, 1, "0.4", "0.6"), ("p4/1_chunk_2F1", 6, 2, "0.7", "0.3")])
    shard1 = write_scores(tmp_path / "1.tsv", [
        ("p4/1_chunk_3F1", 6, 3, "0.8", "0.2"), ("p4/2_chunk_1F1", 7, 1, "0.9", "0.1"),
        ("p5/1_chunk_1F1", 8, 1, "0.3", "0.7"), ("p5/1_chunk_2F1", 8, 2, "0.6", "0.4"),
        ("p5/2_chunk_1F1", 9, 1, "0.25", "0.75")])
    return reads, [shard0, shard1]


def test_pair_calls_on_known_cases(tmp_path):
    reads, scores = paired_sample(tmp_path)
    counts = aggregate(reads, scores, tmp_path, paired=True)
    assert rows(tmp_path / "pairs.tsv") == [
        ["pair_id", "mate1_call", "mate2_call", "scored_chunks", "virus_chunks",
         "best_virus_score", "pair_score", "call"],
        ["p1", "virus", "non-virus", "2", "1", "0.8", "0.6", "virus"],  # half: virus
        ["p2", "no_coding_frame", "non-virus", "1", "0", "0.1", "0.1", "non-virus"],
        ["p3", "no_coding_frame", "no_coding_frame", "0", "0", "NA", "NA", "no_coding_frame"],
        ["p4", "non-virus", "non-virus", "4", "1", "0.6", "0.3", "non-virus"],  # 1 of 4
        ["p5", "virus", "virus", "3", "2", "0.75", "0.616667", "virus"],
    ]
    summary = rows(tmp_path / "summary.tsv")[1:]
    assert [r[0] for r in summary] == [f"p{k}/{m}" for k in range(1, 6) for m in (1, 2)]
    assert counts["pairs"] == {"pairs": 5, "frames": 10, "virus": 2, "non-virus": 2,
                               "no_coding_frame": 1}
    assert counts["mates"] == [
        {"reads": 5, "frames": 6, "virus": 2, "non-virus": 1, "no_coding_frame": 2},
        {"reads": 5, "frames": 4, "virus": 1, "non-virus": 3, "no_coding_frame": 1}]
    assert counts["reads"] == 10 and counts["paired"] is True


def test_single_samples_have_no_pairs_file(tmp_path):
    reads, scores = threshold_sample(tmp_path)
    counts = aggregate(reads, scores, tmp_path)
    assert not (tmp_path / "pairs.tsv").exists()
    assert counts["paired"] is False and "mates" not in counts and "pairs" not in counts


def test_reads_that_are_not_mates_are_refused(tmp_path):
    reads = write_reads(tmp_path / "reads.tsv", [(0, "a/1", 150, 1, 0), (1, "b/2", 150, 1, 0)])
    with pytest.raises(InputError, match="reads 'a/1' and 'b/2' are not mates"):
        aggregate(reads, [], tmp_path, paired=True)


# --------------------------------------------------------------------------- distributions

def test_distributions_stay_bounded_and_list_the_top_reads_by_score_then_input_order():
    dist = ScoreDistributions(["read_id"])
    for i in range(5000):
        score = (i % 1000) / 1000
        dist.add(i, 100 + i, Evidence(1, int(score >= 0.5), score, score), [f"r{i}"])
    dist.add(5000, 10, Evidence(), ["none"])  # no frame: not scored
    data = dist.as_dict()
    assert data["length_and_score"]["scored_reads"] == 5000
    assert len(data["length_and_score"]["sample"]) == LENGTH_SAMPLE
    assert sum(map(sum, (data["best_virus_score_histogram"][c]
                         for c in ("virus", "non-virus")))) == 5000
    # 0.999 is reached by reads 999, 1999, ..., 4999: the earlier first; then 0.998 ...
    assert [r["read_id"] for r in data["top_reads"]] == \
        [f"r{k * 1000 + 999}" for k in range(5)] + [f"r{k * 1000 + 998}" for k in range(5)] + \
        [f"r{k * 1000 + 997}" for k in range(5)] + [f"r{k * 1000 + 996}" for k in range(5)]
    assert len(data["top_reads"]) == TOP_READS


# --------------------------------------------------------------------------- virus reads

def summary_with_calls(path: Path, calls: list[tuple[str, str]]) -> Path:
    path.write_text("read_id\tlength\tchunks\tframes\tbest_virus_score\tread_score\tvirus_chunks"
                    "\tcall\n" + "".join(f"{r}\t1\t1\t1\t0.5\t0.5\t1\t{c}\n" for r, c in calls))
    return path


def fastq_records(text: bytes) -> list[bytes]:
    """Each 4-line record of a FASTQ text, as in the text (LF line ends)."""
    lines = text.split(b"\n")
    return [b"\n".join(lines[i:i + 4]) + b"\n" for i in range(0, len(lines) - 1, 4)]


def test_virus_reads_of_a_single_fasta_keep_headers_and_order(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_bytes(b">r1 first read\r\nACGT\r\nAC\r\n>r2\tdesc\r\nGGGG\r\n>  r3  x\r\nTTA\r\n"
                      b">r4\nCC\n")
    summary = summary_with_calls(tmp_path / "summary.tsv", [
        ("r1", "virus"), ("r2", "non-virus"), ("r3", "virus"), ("r4", "no_coding_frame")])
    assert write_virus_reads(fasta, summary, tmp_path / "v.fa.gz") == 2
    assert gzip.decompress((tmp_path / "v.fa.gz").read_bytes()) == \
        b">r1 first read\nACGTAC\n>  r3  x\nTTA\n"


def many_fastq_records(n: int, seed: int, mate: str = "") -> list[tuple[str, str]]:
    """Reads of 1-400 bp with descriptions: enough of them (n = 20,000: 8 MB of FASTQ) that
    the file is read in several blocks."""
    rng = random.Random(seed)
    return [(f"read{i} {mate}sample read {i}", "".join(rng.choices("ACGTN", k=rng.randint(1, 400))))
            for i in range(n)]


@pytest.mark.parametrize("variant", ["plain", "CRLF, '+' repeats the title, gzip"])
def test_virus_reads_of_single_fastq_are_the_records_as_in_the_input(tmp_path, variant):
    records = many_fastq_records(20_000, seed=1)
    text = fastq_text(records, plus=variant != "plain").encode()  # qualities start with @, +
    path = tmp_path / "reads.fq"
    if variant == "plain":
        path.write_bytes(text)
    else:
        path.write_bytes(gzip.compress(text.replace(b"\n", b"\r\n")))
    rng = random.Random(2)
    calls = [rng.choice(["virus", "non-virus", "no_coding_frame"]) for _ in records]
    summary = summary_with_calls(tmp_path / "summary.tsv", [
        (header.split()[0], call) for (header, _), call in zip(records, calls)])
    out = tmp_path / "virus_reads.fq.gz"
    assert write_virus_reads(path, summary, out) == calls.count("virus")
    assert gzip.decompress(out.read_bytes()) == b"".join(
        record for record, call in zip(fastq_records(text), calls) if call == "virus")
    assert out.read_bytes()[4:8] == b"\0\0\0\0"  # no time in the gzip header


def test_virus_pairs_hold_both_mates_of_every_virus_pair(tmp_path):
    """The known pair calls (paired_sample: p1 and p5 virus, p1 with one mate virus only,
    p2-p4 not) through aggregate's real pairs.tsv: both mates of p1 and p5, R1's records in
    the R1 file and R2's in the R2 file, as in the input."""
    reads, scores = paired_sample(tmp_path)
    aggregate(reads, scores, tmp_path, paired=True)
    lengths = [int(row[2]) for row in rows(reads)[1:]]
    rng = random.Random(3)
    texts = [fastq_text([(f"p{k + 1} {mate}:N:0:ACGT", "".join(
                 rng.choices("ACGT", k=lengths[2 * k + mate - 1]))) for k in range(5)],
                 rng).encode() for mate in (1, 2)]
    files = [tmp_path / "R1.fq", tmp_path / "R2.fq"]
    for path, text in zip(files, texts):
        path.write_bytes(text)
    outs = [tmp_path / "virus_R1.fq.gz", tmp_path / "virus_R2.fq.gz"]
    assert write_virus_reads(files, tmp_path / "pairs.tsv", outs) == 4
    for out, text in zip(outs, texts):
        records = fastq_records(text)
        assert gzip.decompress(out.read_bytes()) == records[0] + records[4]


def test_virus_pairs_of_many_reads_pair_record_by_record(tmp_path):
    """R1 and R2 of different lengths, so their blocks never line up; IDs with /1 and /2."""
    one, two = many_fastq_records(20_000, 4), many_fastq_records(20_000, 5)
    one = [(f"{h.split()[0]}/1 x", s) for h, s in one]
    two = [(f"{h.split()[0]}/2", s[:30]) for h, s in two]
    texts = [fastq_text(one).encode(), fastq_text(two).encode()]
    files = [tmp_path / "R1.fq", tmp_path / "R2.fq"]
    for path, text in zip(files, texts):
        path.write_bytes(text)
    rng = random.Random(6)
    calls = [rng.choice(["virus", "non-virus"]) for _ in one]
    (tmp_path / "pairs.tsv").write_text("pair_id\tcall\n" + "".join(
        f"{h.split('/')[0]}\t{c}\n" for (h, _), c in zip(one, calls)))
    outs = [tmp_path / "virus_R1.fq.gz", tmp_path / "virus_R2.fq.gz"]
    assert write_virus_reads(files, tmp_path / "pairs.tsv", outs) == 2 * calls.count("virus")
    for out, text in zip(outs, texts):
        assert gzip.decompress(out.read_bytes()) == b"".join(
            record for record, call in zip(fastq_records(text), calls) if call == "virus")


def test_virus_pairs_of_fasta_or_mixed_files_are_fasta(tmp_path):
    (tmp_path / "R1.fa").write_text(">p1 1:N:0\nACGT\nTT\n>p2 1:N:0\nGGGA\n")
    (tmp_path / "R2.fa").write_text(">p1 2:N:0\nTTTT\n>p2 2:N:0\nCCCA\n")
    (tmp_path / "R2.fq").write_text("@p1 2:N:0\nTTTT\n+\nIIII\n@p2 2:N:0\nCCCA\n+\nIIII\n")
    (tmp_path / "pairs.tsv").write_text("pair_id\tcall\np1\tnon-virus\np2\tvirus\n")
    for r2 in ("R2.fa", "R2.fq"):
        files = [tmp_path / "R1.fa", tmp_path / r2]
        outs = [tmp_path / "virus_R1.fa.gz", tmp_path / "virus_R2.fa.gz"]
        assert virus_reads_format(files, tmp_path / "prepare") == FASTA
        assert write_virus_reads(files, tmp_path / "pairs.tsv", outs) == 2
        assert [gzip.decompress(out.read_bytes()) for out in outs] == \
            [b">p2 1:N:0\nGGGA\n", b">p2 2:N:0\nCCCA\n"]
        with pytest.raises(UsageError, match="are FASTA, so their virus reads file's name must "
                                             "end in .fa.gz"):
            write_virus_reads(files, tmp_path / "pairs.tsv", [outs[0], tmp_path / "R2.fq.gz"])
        assert not (tmp_path / "R2.fq.gz").exists()


def test_calls_of_other_reads_are_refused(tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">r1\nACGT\n>r2\nGGGG\n")
    for calls, message in (([("r1", "virus"), ("x", "virus")], "row 2 is not read 'r2'"),
                           ([("r1", "virus")], "row 2 is not read 'r2'"),
                           ([("r1", "virus"), ("r2", "virus"), ("r3", "virus")],
                            "has more rows than the sample has reads")):
        summary = summary_with_calls(tmp_path / "summary.tsv", calls)
        with pytest.raises(InputError, match=f"summary.tsv: {message}; summary.tsv does not "
                                             "belong to these reads"):
            write_virus_reads(fasta, summary, tmp_path / "v.fa.gz")
        assert not (tmp_path / "v.fa.gz").exists()
    (tmp_path / "R2.fa").write_text(">r1/2\nACGT\n>r2/2\nGGGG\n")
    for text, message in (("pair_id\tcall\nr1\tvirus\nr3\tvirus\n", "row 2 is not pair 'r2'"),
                          ("pair_id\tcall\nr1\tvirus\nr2\tvirus\nr3\tvirus\n",
                           "has more rows than the sample has pairs")):
        (tmp_path / "pairs.tsv").write_text(text)
        outs = [tmp_path / "virus_R1.fa.gz", tmp_path / "virus_R2.fa.gz"]
        with pytest.raises(InputError, match=f"pairs.tsv: {message}; pairs.tsv does not"):
            write_virus_reads([fasta, tmp_path / "R2.fa"], tmp_path / "pairs.tsv", outs)
        assert not any(out.exists() for out in outs)


def test_the_virus_reads_format_from_the_reads_or_from_prepare(tmp_path):
    """From the reads' first bytes (gzip or not, blank lines before); once they are gone,
    from stats.json; FASTA when neither tells."""
    fastq = tmp_path / "r.fq.gz"
    fastq.write_bytes(gzip.compress(b"\n\r\n" * 10_000 + b"@r1\nACGT\n+\nIIII\n"))
    (tmp_path / "r.fa").write_text(">r1\nACGT\n")
    prepared = tmp_path / "prepare"
    assert virus_reads_format([fastq], prepared) == FASTQ
    assert virus_reads_format([fastq, fastq], prepared) == FASTQ
    assert virus_reads_format([tmp_path / "r.fa"], prepared) == FASTA
    shutil.copy(fastq, tmp_path / "r2.fq.gz")
    write_shards([fastq, tmp_path / "r2.fq.gz"], 300, 10, prepared)
    assert json.loads((prepared / "stats.json").read_text())["format2"] == FASTQ
    gone = [tmp_path / "gone_R1.fq", tmp_path / "gone_R2.fq"]
    assert virus_reads_format(gone, prepared) == FASTQ
    assert virus_reads_format(gone, tmp_path / "not-prepared") == FASTA
    (prepared / "stats.json").write_text("{}")  # prepared before the format was recorded
    assert virus_reads_format(gone, prepared) == FASTA


# --------------------------------------------------------------------------- samples_summary.tsv

def test_samples_summary_agrees_with_each_samples_summary_and_pairs(tmp_path):
    single, paired = tmp_path / "single", tmp_path / "paired"
    single.mkdir(), paired.mkdir()
    aggregate(*threshold_sample(single), single)
    aggregate(*paired_sample(paired), paired, paired=True)
    write_samples_summary({"single": single / "counts.json", "paired": paired / "counts.json"},
                          tmp_path / "samples_summary.tsv")
    table = rows(tmp_path / "samples_summary.tsv")
    assert tuple(table[0]) == SAMPLES_SUMMARY_COLUMNS
    got = {row[0]: dict(zip(table[0], row)) for row in table[1:]}
    assert list(got) == ["single", "paired"]

    def expected(summary_rows, unit):
        calls = [r[-1] for r in summary_rows]
        virus, non = calls.count("virus"), calls.count("non-virus")
        return {unit: str(len(calls)), "virus": str(virus), "non_virus": str(non),
                "no_coding_frame": str(calls.count("no_coding_frame")),
                "percent_virus": f"{100 * virus / (virus + non):.2f}"}

    for sample, directory in (("single", single), ("paired", paired)):
        summary = rows(directory / "summary.tsv")[1:]
        assert {k: got[sample][k] for k in expected(summary, "reads")} == expected(summary, "reads")
        assert got[sample]["frames"] == str(sum(int(r[3]) for r in summary))
    summary = rows(paired / "summary.tsv")[1:]
    for mate in (1, 2):
        want = expected(summary[mate - 1::2], "reads")
        assert {k: got["paired"][f"mate{mate}_{k}"] for k in want} == want
    want = expected(rows(paired / "pairs.tsv")[1:], "pairs")
    assert got["paired"]["pairs"] == want.pop("pairs")
    assert {k: got["paired"][f"pairs_{k}"] for k in want} == want
    assert got["single"]["layout"] == "single" and got["paired"]["layout"] == "paired"
    assert all(got["single"][c] == "NA"
               for c in SAMPLES_SUMMARY_COLUMNS if c.startswith(("mate", "pairs")))


# --------------------------------------------------------------------------- demo detection

@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    from virnucpro.demo_models import write_demo_models

    return write_demo_models(tmp_path_factory.mktemp("demo") / "demo-models")


def models_of(paths) -> dict[str, Path]:
    return {role: paths[role] for role in ("esm", "dnabert", "classifier")}


def test_demo_models_are_recognised_by_their_manifests_hashes(tmp_path, demo_models):
    record = write_provenance(models_of(demo_models), {"chunk_size": 500}, tmp_path / "p.json")
    assert record["demo_models"] is True and all(m["demo"] for m in record["models"].values())
    assert json.loads((tmp_path / "p.json").read_text()) == record
    manifest = json.loads(demo_models["manifest"].read_text())["files"]
    assert record["models"]["classifier"]["files"] == {"classifier.pth": manifest["classifier.pth"]}
    assert record["models"]["dnabert"]["files"] == {
        name.split("/", 1)[1]: digest for name, digest in manifest.items()
        if name.startswith("dnabert2_demo/")}

    # A renamed copy away from its manifest is recognised through the demo directory's.
    copy = tmp_path / "elsewhere" / "my_model.pth"
    copy.parent.mkdir()
    shutil.copy(demo_models["classifier"], copy)
    alone = {"classifier": copy}
    assert write_provenance(alone, {}, tmp_path / "p.json")["models"]["classifier"]["demo"] is False
    found = write_provenance(alone, {}, tmp_path / "p.json", [demo_models["manifest"].parent])
    assert found["models"]["classifier"]["demo"] is True


def test_real_models_are_not_demo_models_even_beside_a_manifest(tmp_path, demo_models):
    from virnucpro.models.classifier import MLPClassifier, save_classifier

    save_classifier(MLPClassifier(64), tmp_path / "trained.safetensors", {})
    models = {"classifier": tmp_path / "trained.safetensors"}
    record = write_provenance(models, {}, tmp_path / "p.json", [demo_models["manifest"].parent])
    assert record["demo_models"] is False
    # Another tool's models.json beside a model lists nothing, even with matching hashes.
    (tmp_path / "models.json").write_text(json.dumps({
        "description": "my models", "files": record["models"]["classifier"]["files"]}))
    assert write_provenance(models, {}, tmp_path / "p.json")["demo_models"] is False


# --------------------------------------------------------------------------- the pages

def test_pages_show_banner_provenance_plots_and_top_reads(tmp_path, demo_models):
    single, paired = tmp_path / "single", tmp_path / "paired"
    single.mkdir(), paired.mkdir()
    aggregate(*threshold_sample(single), single, 0.6)
    aggregate(*paired_sample(paired), paired, 0.6, paired=True)
    provenance = write_provenance(models_of(demo_models), {"virus_threshold": 0.6},
                                  tmp_path / "provenance.json")
    hashes = [d for m in provenance["models"].values() for d in m["files"].values()]
    for sample, directory in (("single", single), ("paired", paired)):
        plots = {name: directory / f"{name}.svg" for name in ("calls", "scores", "length")}
        virus_reads = {"single": ["virus_reads.fa.gz"],
                       "paired": ["virus_R1.fq.gz", "virus_R2.fq.gz"]}[sample]
        write_sample_report(sample, directory / "counts.json", tmp_path / "provenance.json",
                            [f"{sample}.fa"], directory / "report.html", plots,
                            directory / "top_reads.tsv", virus_reads)
        page = (directory / "report.html").read_text()
        for mate, name in enumerate(virus_reads, 1):  # named and linked in "Result files"
            holds = ("reads called virus, records as in the input" if sample == "single" else
                     f"mate {mate} of the ")
            assert f'<a href="{name}"><code>{name}</code></a></td><td><code>{sample}/{name}' \
                f"</code></td><td>" in page and holds in page
        assert "Demo models: these results mean nothing." in page
        assert all(digest in page for digest in hashes)
        assert "VirNucPro version</td><td>0.1.0" in page and f"{sample}.fa" in page
        assert page.count("<svg") == 3 and "threshold 0.6 (virus_threshold)" in page
        for label in ("number of reads", "best P(virus) of the read", "read length (bp)"):
            assert label in page
        for path in plots.values():
            svg = path.read_text()
            assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>") and svg in page
    top = rows(paired / "top_reads.tsv")
    assert top[0][:2] == ["rank", "read_id"]
    assert [r[1] for r in top[1:]] == ["p1/1", "p5/2", "p5/1", "p4/1", "p1/2", "p2/2", "p4/2"]
    assert "pairs.tsv" in (paired / "report.html").read_text()

    plots = {name: tmp_path / f"{name}.svg" for name in ("calls", "scores")}
    write_overview({"single": single / "counts.json", "paired": paired / "counts.json"},
                   {"single": ["s.fa"], "paired": ["r1.fq", "r2.fq"]},
                   tmp_path / "provenance.json", tmp_path / "overview.html", plots)
    overview = (tmp_path / "overview.html").read_text()
    assert "Demo models: these results mean nothing." in overview
    assert all(digest in overview for digest in hashes)
    assert '<a href="paired/report.html">paired</a>' in overview
    assert overview.count("<svg") == 2 and "Calls per sample" in overview

    real = {**provenance, "demo_models": False,
            "models": {k: {**m, "demo": False} for k, m in provenance["models"].items()}}
    (tmp_path / "provenance.json").write_text(json.dumps(real))
    write_overview({"single": single / "counts.json"}, {"single": ["s.fa"]},
                   tmp_path / "provenance.json", tmp_path / "overview.html", plots)
    assert "Demo models" not in (tmp_path / "overview.html").read_text()


def test_the_pages_show_what_ran_from_the_embedding_jobs_records(tmp_path, demo_models):
    """`auto` resolved: the device, GPU model and precision each scoring job recorded beside
    its scores (ScoreRows.publish writes these keys), per sample and summed on the overview."""
    gpu, old = tmp_path / "gpu", tmp_path / "old"
    gpu.mkdir(), old.mkdir()
    reads, scores = threshold_sample(gpu)
    (gpu / "0.json").write_text(json.dumps({
        "frames": 6, "settings": {"dtype": "float16", "compile": True},
        "hardware": {"device": "cuda", "gpu": "NVIDIA H200"}, "rescored_in_float32": 2}))
    aggregate(reads, scores, gpu)
    assert json.loads((gpu / "counts.json").read_text())["embedding"] == [
        {"device": "cuda", "gpu": "NVIDIA H200", "precision": "float16", "shards": 1,
         "frames": 6, "rescored_in_float32": 2}]
    aggregate(*threshold_sample(old), old)  # scores of a virnucpro that kept no record
    write_provenance(models_of(demo_models), {"embed.device": "auto", "embed.dtype": "auto"},
                     tmp_path / "provenance.json")
    plots = {name: tmp_path / f"{name}.svg" for name in ("calls", "scores", "length")}
    write_sample_report("gpu", gpu / "counts.json", tmp_path / "provenance.json", ["g.fa"],
                        gpu / "report.html", plots, gpu / "top_reads.tsv", ["virus_reads.fa.gz"])
    page = (gpu / "report.html").read_text()
    row = ('<tr><td>cuda (NVIDIA H200)</td><td>float16</td>'
           '<td class="num">1</td><td class="num">6</td><td class="num">2</td></tr>')
    assert row in page
    assert "<tr><td>embed.device</td><td>auto: cuda (NVIDIA H200)</td></tr>" in page
    assert "<tr><td>embed.dtype</td><td>auto: float16</td></tr>" in page
    write_overview({"gpu": gpu / "counts.json", "old": old / "counts.json"},
                   {"gpu": ["g.fa"], "old": ["o.fa"]}, tmp_path / "provenance.json",
                   tmp_path / "overview.html",
                   {name: tmp_path / f"o{name}.svg" for name in ("calls", "scores")})
    overview = (tmp_path / "overview.html").read_text()
    assert row in overview and "<td>not recorded (an older virnucpro)</td>" in overview
