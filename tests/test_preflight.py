"""Pre-flight (virnucpro.preflight), the config check (virnucpro.config) and a dry run's
estimate of the jobs it cannot list yet, without Snakemake; test_workflow_preflight.py runs
them through real Snakemake processes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import fastq_text, flip_a_stored_bit, unaligned_bam
from virnucpro.config import check_config, check_config_files
from virnucpro.demo_models import write_demo_models
from virnucpro.errors import InputError, Problems, UsageError
from virnucpro.models.published import ADDRESSES
from virnucpro.preflight import PAIR_COUNT_BYTES, check, unprepared
from virnucpro.prepare import estimate, head_counts, write_shards
from workflow_helpers import ROOT, orf_reads

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return write_demo_models(tmp_path_factory.mktemp("models"))


def models_of(demo: dict[str, Path], **changed: Path) -> dict[str, str]:
    return {kind: str(changed.get(kind, demo[kind])) for kind in ("esm", "dnabert", "classifier")}


def problems(*args, **kwargs) -> list[str]:
    with pytest.raises(Problems) as raised:
        check(*args, **kwargs)
    assert raised.value.exit_code == 66
    return raised.value.lines()


def test_sound_reads_and_models_pass(tmp_path, demo):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    assert check({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo), 500, {}) == []


def test_every_problem_is_listed_at_once(tmp_path, demo):
    (tmp_path / "r1.fq").write_text("@r\nACGT\n+\nIIII\n")
    esm = tmp_path / "esm2_t6_8M_UR50D.pt"
    esm.write_bytes(demo["esm"].read_bytes()[:1000])  # a download cut short
    dnabert = tmp_path / "DNABERT-S"
    shutil.copytree(demo["dnabert"], dnabert)
    (dnabert / "tokenizer.json").unlink()
    classifier = tmp_path / "500_model.pth"
    classifier.write_text("<html>Not Found</html>")  # what a failed download may leave
    bam = unaligned_bam(tmp_path / "r.bam", tmp_path / "r1.fq")
    (tmp_path / "cut.bam").write_bytes(bam.read_bytes()[:-28])  # without its end-of-file block
    samples = {"a": [str(tmp_path / "r1.fq"), str(tmp_path / "r2.fq")], "b": [str(tmp_path)],
               "c": [str(tmp_path / "cut.bam")], "d": [str(bam), str(tmp_path / "r1.fq")]}
    assert problems(samples, {"train-virus-0": [str(tmp_path / "v.fa")]},
                    models_of(demo, esm=esm, dnabert=dnabert, classifier=classifier), 500, {}) == [
        f"{tmp_path}/r2.fq: reads file of sample 'a' does not exist; check its path in your "
        "config or sample sheet (a relative path is relative to the working directory)",
        f"{tmp_path}: reads file of sample 'b' is a directory; give the path of a FASTA, "
        "FASTQ, BAM or CRAM file",
        f"{tmp_path}/cut.bam: is truncated (BAM files end with an end-of-file block, this one "
        "does not); the file is corrupt or truncated; re-create it or download it again",
        f"{bam}: a BAM file holds both mates of paired reads, so it is given alone, without an "
        f"R2 file ({tmp_path}/r1.fq); give the BAM file as the sample's only reads file",
        f"{tmp_path}/v.fa: reads file of sample 'train-virus-0' does not exist; check its path "
        "in your config or sample sheet (a relative path is relative to the working directory)",
        f"{esm}: cannot read the file (File is not a zip file); it is truncated or not a "
        "PyTorch file: download it again",
        f"{dnabert}: no tokenizer.json; point to a complete DNABERT-2/DNABERT-S model directory",
        f"{classifier}: not a PyTorch zip archive (File is not a zip file); only files written "
        "by torch.save (torch >= 1.6) or .safetensors files are read"]


def test_the_reads_no_job_reads_again_may_be_gone(tmp_path, demo):
    assert check({"s": [str(tmp_path / "deleted.fa")]}, {}, models_of(demo), 500, {},
                 read=["s"]) == []


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path, demo):
    os.mkfifo(tmp_path / "reads.fq")
    assert problems({"s": [str(tmp_path / "reads.fq")]}, {}, models_of(demo), 500, {}) == [
        f"{tmp_path}/reads.fq: reads file of sample 's' is a named pipe (FIFO); give the path "
        "of a FASTA, FASTQ, BAM or CRAM file on disk (write a stream to a file first)"]


PDF = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Length 64 /Filter /FlateDecode >>\nstream\n"
       + bytes(range(256)) * 4 + b"\nendstream\nendobj\n%%EOF\n")


def test_reads_that_are_not_reads_or_do_not_pair_are_named_before_any_job(tmp_path, demo):
    """Each a line of its own, all at once: what prepare would stop at, found before it."""
    (tmp_path / "report.fastq.gz").write_bytes(PDF)  # a PDF saved under a reads name
    (tmp_path / "empty.fq").write_bytes(b"")
    (tmp_path / "empty.fq.gz").write_bytes(gzip.compress(b""))
    records = [(f"r{i}", "ACGT" * 30) for i in range(3000)]  # 1.2 MB each: counted in full
    (tmp_path / "r1.fq").write_text(fastq_text(records))
    (tmp_path / "r2.fq").write_text(fastq_text(records[:-1]))  # R2 lost its last record
    (tmp_path / "s1.fq").write_text(fastq_text(records[:5]))
    (tmp_path / "s2.fq").write_text(fastq_text(records[:6]))  # small: its start is all of it
    (tmp_path / "ok.fa").write_text(">r\nACGT\n")
    samples = {"pdf": [str(tmp_path / "report.fastq.gz")], "empty": [str(tmp_path / "empty.fq")],
               "gz": [str(tmp_path / "empty.fq.gz")], "ok": [str(tmp_path / "ok.fa")],
               "cut": [str(tmp_path / "r1.fq"), str(tmp_path / "r2.fq")],
               "small": [str(tmp_path / "s1.fq"), str(tmp_path / "s2.fq")]}
    with pytest.raises(Problems) as raised:
        check(samples, {}, models_of(demo), 500, {})
    hint = ("the two files must hold the same reads in the same order: give both files of one "
            "run, or re-pair them (e.g. with 'seqkit pair')")
    assert raised.value.lines() == [
        f"{tmp_path}/report.fastq.gz: not a FASTA or FASTQ file: is binary, not FASTA or FASTQ "
        "text; give nucleotide reads in FASTA or FASTQ format (plain or gzip), or as BAM or "
        "CRAM",
        f"{tmp_path}/empty.fq: file is empty; give a FASTA or FASTQ file with at least one "
        "record",
        f"{tmp_path}/empty.fq.gz: is empty: a gzip file of no text; give a FASTA or FASTQ file "
        "with at least one record",
        f"{tmp_path}/r1.fq: has 3,000 records, its mate file {tmp_path}/r2.fq has 2,999; {hint}",
        f"{tmp_path}/s1.fq: has 5 records, its mate file {tmp_path}/s2.fq has 6; {hint}"]
    assert raised.value.exit_code == 65
    # A file repaired in place is read again, not taken from what was read before.
    (tmp_path / "report.fastq.gz").write_bytes(gzip.compress(b">r\nACGT\n"))
    (tmp_path / "r2.fq").write_text(fastq_text(records))
    with pytest.raises(Problems) as raised:
        check(samples, {}, models_of(demo), 500, {})
    assert [line.split(":")[0] for line in raised.value.lines()] == [
        f"{tmp_path}/empty.fq", f"{tmp_path}/empty.fq.gz", f"{tmp_path}/s1.fq"]


def test_paired_files_too_large_to_count_are_left_to_prepare_which_says_it_in_one_line(
        tmp_path, demo):
    records = [(f"r{i}", "ACGT" * 500) for i in range(PAIR_COUNT_BYTES // 4000 + 100)]
    (tmp_path / "r1.fa").write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    (tmp_path / "r2.fa").write_text("".join(f">{name}\n{seq}\n" for name, seq in records[:-1]))
    pair = [str(tmp_path / "r1.fa"), str(tmp_path / "r2.fa")]
    assert sum(map(os.path.getsize, pair)) > PAIR_COUNT_BYTES
    assert check({"big": pair}, {}, models_of(demo), 500, {}) == []
    with pytest.raises(InputError) as raised:
        write_shards(pair, 500, 100_000, tmp_path / "prepared")
    assert raised.value.lines() == [
        f"{tmp_path}/r1.fa: record '{records[-1][0]}' (#{len(records)}): has no mate: "
        f"{tmp_path}/r2.fa ends after {len(records) - 1} records; the two files must hold the "
        "same reads in the same order: give both files of one run, or re-pair them (e.g. with "
        "'seqkit pair')"]
    assert not (tmp_path / "prepared").exists()


def test_cuda_where_there_is_no_gpu_names_the_config_key(tmp_path, demo, monkeypatch):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no device, whatever this machine has
    with pytest.raises(Problems) as raised:
        check({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo), 500, {}, device="cuda")
    assert raised.value.lines() == [
        "config: embed.device: 'cuda' but this machine has no GPU (no /dev/nvidiaN device, or "
        "CUDA_VISIBLE_DEVICES hides them); set embed.device: auto (or cpu) to run on the CPU, "
        "or run where a GPU is"] and raised.value.exit_code == 64
    # jobs that run elsewhere (a cluster) are not judged by this machine
    assert check({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo), 500, {}) == []


def test_a_reads_file_that_cannot_be_opened(tmp_path, demo, monkeypatch):
    """(Permissions cannot refuse root, who runs the tests: the refusal is simulated.)"""
    import builtins

    reads = tmp_path / "r.fa"
    reads.write_text(">r\nACGT\n")
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(reads):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    assert problems({"s": [str(reads)]}, {}, models_of(demo), 500, {}) == [
        f"{reads}: reads file of sample 's' cannot be read (Permission denied); make it "
        "readable to the user who runs the workflow"]


def test_models_a_rule_makes_may_be_absent_and_are_noted(tmp_path, demo):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    absent = {kind: tmp_path / name for kind, name in
              (("esm", "esm2_t36_3B_UR50D.pt"), ("dnabert", "DNABERT-S"),
               ("classifier", "out/train/model.safetensors"))}
    made = {str(absent["esm"]): "download_esm", f"{tmp_path}/./DNABERT-S": "download_dnabert",
            str(absent["classifier"]): "train"}
    notes = check({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo, **absent), 500, made)
    assert notes == [f"{absent['esm']}: not here yet; rule download_esm makes it before the "
                     "first job that needs it",
                     f"{absent['dnabert']}: not here yet; rule download_dnabert makes it before "
                     "the first job that needs it",
                     f"{absent['classifier']}: not here yet; rule train makes it before the "
                     "first job that needs it"]
    # No rule makes it: the classifier is missing.
    assert problems({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo, **absent), 300,
                    {k: v for k, v in made.items() if v != "train"}) == [
        f"{absent['classifier']}: classifier not found; download the published 300_model.pth "
        f"from {ADDRESSES['VirNucPro']}300_model.pth there, or set models.classifier in your "
        "config"]


def test_a_training_run_needs_no_classifier(tmp_path, demo):
    (tmp_path / "v.fa").write_text(">r\nACGT\n")
    assert check({}, {"train-virus-0": [str(tmp_path / "v.fa")]},
                 models_of(demo, classifier=tmp_path / "none.pth"), 500, {}) == []


def published_copy(demo, where: Path, name: str) -> Path:
    where.mkdir(exist_ok=True)
    return Path(shutil.copy(demo["classifier"], where / name))


def trained_copy(demo, where: Path, chunk_size: int | None) -> Path:
    """A classifier as training writes it: safetensors with a sidecar giving its chunk size."""
    from virnucpro.models.classifier import load_classifier, save_classifier

    about = {} if chunk_size is None else {"chunk_size": chunk_size}
    path = where / "model.safetensors"
    save_classifier(load_classifier(demo["classifier"]), path, about)
    return path


@pytest.mark.parametrize("make, source", [
    (lambda demo, where: published_copy(demo, where, "300_model.pth"), "as its name says"),
    (lambda demo, where: trained_copy(demo, where, 300),
     "model.safetensors.json says chunk_size 300")])
def test_a_classifier_for_another_chunk_size_is_refused(tmp_path, demo, make, source):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    classifier = make(demo, tmp_path / "m")
    samples = {"s": [str(tmp_path / "r.fa")]}
    assert problems(samples, {}, models_of(demo, classifier=classifier), 500, {}) == [
        f"{classifier}: the classifier is for 300-bp chunks ({source}), the config's "
        "chunk_size is 500; set chunk_size: 300, or use a classifier for 500-bp chunks (the "
        "published 500_model.pth)"]
    assert check(samples, {}, models_of(demo, classifier=classifier), 300, {}) == []


def test_a_classifier_of_unknown_chunk_size_is_taken(tmp_path, demo):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    for classifier in (trained_copy(demo, tmp_path, None), demo["classifier"]):
        for chunk in (300, 500):
            assert check({"s": [str(tmp_path / "r.fa")]}, {},
                         models_of(demo, classifier=classifier), chunk, {}) == []


def test_damaged_safetensors_and_sidecar(tmp_path, demo):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    samples = {"s": [str(tmp_path / "r.fa")]}
    classifier = trained_copy(demo, tmp_path, 500)
    sidecar = classifier.with_name("model.safetensors.json")
    sidecar.write_text("{not json")
    (line,) = problems(samples, {}, models_of(demo, classifier=classifier), 500, {})
    assert line.startswith(f"{sidecar}: unreadable classifier description (") and \
        line.endswith("); delete it or convert the model again")
    sidecar.unlink()
    whole = classifier.read_bytes()
    classifier.write_bytes(whole[:-100])
    header = 8 + struct.unpack("<Q", whole[:8])[0]
    assert problems(samples, {}, models_of(demo, classifier=classifier), 500, {}) == [
        f"{classifier}: cannot read the classifier (it has {len(whole) - 100} bytes, its header "
        f"places tensors up to byte {len(whole)}); the file is damaged or not a .safetensors "
        "file"]
    classifier.write_bytes(whole[:header - 10])
    (line,) = problems(samples, {}, models_of(demo, classifier=classifier), 500, {})
    assert line == (f"{classifier}: cannot read the classifier (no safetensors header in its "
                    f"{header - 10} bytes); the file is damaged or not a .safetensors file")


def test_dnabert_weights_cut_short_and_a_legacy_torch_file(tmp_path, demo):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    dnabert = Path(shutil.copytree(demo["dnabert"], tmp_path / "DNABERT-S"))
    weights = dnabert / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    (line,) = problems({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo, dnabert=dnabert),
                       500, {})
    assert line.startswith(f"{weights}: cannot read the weights (it has 5000 bytes") and \
        line.endswith("the file is truncated or not a safetensors file: download it again")
    # torch.save's pre-1.6 format is read by the loader, so it passes.
    weights.unlink()
    torch.save({"w": torch.ones(2)}, dnabert / "pytorch_model.bin",
               _use_new_zipfile_serialization=False)
    assert check({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo, dnabert=dnabert), 500,
                 {}) == []


def test_an_esm_model_file_must_be_named_as_fair_esm_names_them(tmp_path, demo):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    esm = Path(shutil.copy(demo["esm"], tmp_path / "protein_model.pt"))
    assert problems({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo, esm=esm), 500, {}) == [
        f"{esm}: not an ESM-2 model file: the file name must start with 'esm2' (e.g. "
        "esm2_t36_3B_UR50D.pt), as fair-esm tells the architecture by name"]


def test_a_flipped_bit_is_found_before_any_job(tmp_path, demo, monkeypatch):
    """The checksums of a torch zip archive are verified (torch never does); a sound file's
    verdict is remembered per version of the file, a changed file is read again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    esm, classifier = tmp_path / "esm2_t2_demo.pt", tmp_path / "500_model.pth"
    shutil.copy(demo["esm"], esm)
    shutil.copy(demo["classifier"], classifier)
    samples, models = {"s": [str(tmp_path / "r.fa")]}, models_of(demo, esm=esm,
                                                                  classifier=classifier)
    assert check(samples, {}, models, 500, {}) == []
    remembered = json.loads((tmp_path / "cache" / "virnucpro" / "verified-models.json")
                            .read_text())
    assert sorted(remembered) == sorted(str(p.resolve()) for p in (esm, classifier))
    for path in (esm, classifier):
        flip_a_stored_bit(path)
    lines = problems(samples, {}, models, 500, {})
    assert [line.split(" (the CRC-32")[0] for line in lines] == [
        f"{esm}: the file is damaged", f"{classifier}: the file is damaged"]
    assert all(line.endswith("; its bytes changed since it was written (a bad copy, download "
                             "or disk): download it again") for line in lines)


def test_a_zip_that_is_not_a_torch_file(tmp_path, demo):
    (tmp_path / "r.fa").write_text(">r\nACGT\n")
    classifier = tmp_path / "classifier.pth"
    with zipfile.ZipFile(classifier, "w") as archive:
        archive.writestr("notes.txt", "hello")
    assert problems({"s": [str(tmp_path / "r.fa")]}, {}, models_of(demo, classifier=classifier),
                    500, {}) == [
        f"{classifier}: not a PyTorch zip archive (no single data.pkl in the zip archive); only "
        "files written by torch.save (torch >= 1.6) or .safetensors files are read"]


# --------------------------------------------------------------------------- the config


@pytest.mark.parametrize("change, lines", [
    ({"chunk_szie": 300}, ["config: unknown key 'chunk_szie'; did you mean chunk_size?"]),
    ({"chunk_size": 400}, ["config: chunk_size: 400 is not one of 300, 500"]),
    ({"embed": {"dtpye": "bfloat16"}}, ["config: unknown key 'embed.dtpye'; did you mean "
                                        "embed.dtype?"]),
    ({"embed": {"dtype": "fp16"}}, ["config: embed.dtype: 'fp16' is not one of auto, float32, "
                                    "bfloat16, float16"]),
    ({"embed": {"device": "gpu"}}, ["config: embed.device: 'gpu' is not valid; give auto, cpu, "
                                    "cuda or cuda:N"]),
    ({"shard_size": "many", "colour": "blue"}, [
        "config: unknown key 'colour'; the keys are samples, outdir, chunk_size, shard_size, "
        "u_as_t, dedup, virus_threshold, keep_features, features_dtype, models, embed, "
        "checkpoint, train (see config/README.md)",
        "config: shard_size: 'many' is not of type 'integer'"]),
    ({"train": {"virus": ["v.fa", 3]}}, ["config: train.virus[1]: 3 is not of type 'string'"]),
    ({"samples": {"s": ["only_r1.fq"]}}, ["config: samples.s: ['only_r1.fq'] is not valid; give "
                                          "the path of the sample's reads file, or [R1, R2] for "
                                          "paired reads"]),
])
def test_config_problems_are_one_line_each(change, lines):
    with pytest.raises(Problems) as raised:
        check_config({"samples": {"s": "r.fa"}, **change}, SCHEMA)
    assert raised.value.lines() == lines and raised.value.exit_code == 64


@pytest.mark.parametrize("change, line", [
    ({"samples": {"a\n": "r.fa"}}, "config: samples: 'a\\n' is not valid; give a sample name"),
    ({"outdir": "o{u}t"}, "config: outdir: 'o{u}t' has braces; '{' and '}' are wildcards in "
     "Snakemake paths; rename it (or the directory) without braces"),
    ({"samples": {"s": ["r{1}.fq", "r2.fq"]}}, "config: samples.s: 'r{1}.fq' has braces"),
    ({"train": {"validation": {"virus": ["{v}.fa"]}}}, "config: train.validation.virus: "
     "'{v}.fa' has braces"),
])
def test_names_and_paths_snakemake_would_misread(change, line):
    with pytest.raises(Problems) as raised:
        check_config({"samples": {"s": "r.fa"}, **change}, SCHEMA)
    assert len(raised.value.lines()) == 1 and raised.value.lines()[0].startswith(line)


def test_a_key_given_twice_in_a_config_file(tmp_path):
    """YAML keeps the last of two equal keys: a sample listed twice would silently vanish."""
    config = tmp_path / "c.yaml"
    config.write_text("samples:\n  a: a.fa\n  b: b.fa\n  a: c.fa\nembed: {device: cpu}\n")
    with pytest.raises(Problems) as raised:
        check_config_files([config])
    assert raised.value.lines() == [f"config: {config}: line 4: key 'samples.a' is given twice "
                                    "(first on line 2); give each key once"]
    config.write_text("samples:\n  a: a.fa\n  b: b.fa\n")
    check_config_files([config])


def test_a_config_without_samples_is_told_so():
    with pytest.raises(Problems) as raised:
        check_config({"outdir": "out"}, SCHEMA)
    assert raised.value.lines() == ["config: samples: is missing; add it (see config/README.md)"]


def test_the_shipped_config_is_valid():
    import yaml

    check_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), SCHEMA)


# --------------------------------------------------------------------------- the estimate


def prepared(reads, chunk_size=500, shard_size=1000):
    """What prepare really makes of `reads`: (reads, frames, shards)."""
    out = Path(reads[0] if isinstance(reads, list) else reads).parent / "prepared"
    shutil.rmtree(out, ignore_errors=True)
    stats = write_shards(reads, chunk_size, shard_size, out)
    return stats.reads, stats.frames, stats.shards


@pytest.mark.parametrize("form", ["fasta", "fasta.gz", "fastq.gz"])
def test_the_estimate_of_a_large_file_is_close(tmp_path, form):
    orf_reads(tmp_path / "reads.fa", 30_000, codons=60)  # 5.6 MB of FASTA
    path = tmp_path / "reads.fa"
    if form == "fastq.gz":
        records = [(block.split("\n")[0], block.split("\n")[1])
                   for block in path.read_text().split(">")[1:]]
        path = tmp_path / "reads.fq.gz"
        path.write_bytes(gzip.compress(fastq_text(records).encode()))
    elif form == "fasta.gz":
        path = tmp_path / "reads.fa.gz"
        path.write_bytes(gzip.compress((tmp_path / "reads.fa").read_bytes()))
    reads, frames, shards = prepared(str(path))
    guess = estimate([head_counts(str(path), 500, 1 << 20)], 1000)
    assert not guess.exact
    assert abs(guess.reads - reads) < 0.05 * reads and abs(guess.frames - frames) < 0.05 * frames
    assert abs(guess.shards - shards) <= 2


def test_a_small_file_is_counted_and_paired_files_add_up(tmp_path):
    orf_reads(tmp_path / "r1.fa", 200, seed=1)
    orf_reads(tmp_path / "r2.fa", 200, seed=2)
    reads, frames, shards = prepared([str(tmp_path / "r1.fa"), str(tmp_path / "r2.fa")],
                                     shard_size=7)
    guess = estimate([head_counts(str(tmp_path / name), 500, 1 << 20)
                      for name in ("r1.fa", "r2.fa")], 7)
    assert (guess.reads, guess.frames, guess.shards, guess.exact) == (reads, frames, shards, True)


def test_a_multi_member_gzip_is_read_past_its_first_member(tmp_path):
    orf_reads(tmp_path / "reads.fa", 20_000)
    text = (tmp_path / "reads.fa").read_bytes()
    cut = text.index(b">", len(text) // 50)  # a first member of 2%, as bgzip's small blocks
    path = tmp_path / "reads.fa.gz"
    path.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]))
    guess = estimate([head_counts(str(path), 500, 1 << 20)], 1000)
    assert abs(guess.reads - 20_000) < 0.05 * 20_000


def test_the_dry_run_line(tmp_path):
    orf_reads(tmp_path / "big.fa", 30_000, codons=60)
    orf_reads(tmp_path / "small.fa", 50)
    assert unprepared("big", [str(tmp_path / "big.fa")], 500, 10_000) == (
        "sample big: prepare has not run yet; its embedding jobs appear after it: ~30,000 "
        "reads, ~39,000 frames, ~4 shards (estimated from the first 1 MB)")
    assert unprepared("small", [str(tmp_path / "small.fa")], 500, 10_000) == (
        "sample small: prepare has not run yet; its embedding jobs appear after it: 50 reads, "
        "75 frames, 1 shard (counted in full)")
    (tmp_path / "genome.fa").write_text(">chr1\n" + "ACGT" * 300_000 + "\n")
    assert unprepared("g", [str(tmp_path / "genome.fa")], 500, 10_000) == (
        "sample g: prepare has not run yet; its embedding jobs appear after it (no estimate: "
        "a first record is longer than 1 MB)")
    (tmp_path / "binary.fa").write_bytes(bytes(range(256)))
    assert unprepared("b", [str(tmp_path / "binary.fa")], 500, 10_000) == (
        f"sample b: prepare has not run yet; its embedding jobs appear after it (no estimate: "
        f"{tmp_path}/binary.fa: not a FASTA or FASTQ file: is binary, not FASTA or FASTQ text; "
        "give nucleotide reads in FASTA or FASTQ format (plain or gzip), or as BAM or CRAM)")



def test_the_package_must_be_the_workflows_version(tmp_path):
    import virnucpro
    from virnucpro.config import check_package_version

    check_package_version(ROOT / "pyproject.toml")  # this checkout's package is its own
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "virnucpro"\nversion = "9.9"\n')
    with pytest.raises(UsageError) as raised:
        check_package_version(tmp_path / "pyproject.toml")
    assert raised.value.lines() == [
        f"the virnucpro package here is version {virnucpro.__version__} "
        f"({Path(virnucpro.__file__).parent}), the workflow is version 9.9; install the "
        "workflow's version where Snakemake runs (pip install CLONE, or 'virnucpro @ "
        "git+URL@TAG'), then rerun"] and raised.value.exit_code == 64


def test_the_rules_environment_installs_the_workflows_package_and_no_snakemake():
    """envs/virnucpro.yaml: the package by the workflow's version, which brings the pinned
    dependencies; a second Snakemake in the jobs' environment would run their scripts."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "virnucpro.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert pip == [f"virnucpro=={project['version']}"]
    assert not any(dep.startswith("snakemake") for dep in project["dependencies"])
    workflow = project["optional-dependencies"]["workflow"]
    assert any(dep.startswith("snakemake==") for dep in workflow)


def test_the_schema_defaults_are_the_packages_defaults():
    """The workflow's defaults (the schema, which fills the config) and the CLI's (the
    package's constants) are the same numbers: one default per setting."""
    from virnucpro.defaults import CHECKPOINT_FRAMES, CHECKPOINT_SECONDS, DEDUP, WINDOW_FRAMES

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    checkpoint = schema["checkpoint"]["properties"]
    assert (checkpoint["frames"]["default"], checkpoint["seconds"]["default"],
            checkpoint["window_frames"]["default"]) == (CHECKPOINT_FRAMES, CHECKPOINT_SECONDS,
                                                        WINDOW_FRAMES)
    assert schema["dedup"]["default"] is DEDUP
