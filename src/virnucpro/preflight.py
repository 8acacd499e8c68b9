"""Pre-flight: what a run needs and no job makes, checked before any job starts.

Snakemake finds a missing input only when it plans the job that reads it, and a sample's
embedding and scoring jobs appear only after its prepare checkpoint has run: a missing or
damaged classifier passed `snakemake -n` and failed the real run after every sample was
prepared. So while Snakemake parses the workflow (dry runs too) the workflow calls `check`:
the reads files of every sample not yet prepared must exist, be readable (a BAM or CRAM
opened, and given without an R2 file) and start as prepare reads them (the whole records of
their first MB, read once: a dry run's estimate scales the same counts), paired files must
hold as many records each (counted in full up to PAIR_COUNT_BYTES; larger pairs are checked by
prepare as it reads them, which stops at the end with one line), and every model must be
there and be the kind of file it should be (checked by its structure,
`virnucpro.models.formats`; its weights are read only by the job that loads it), with a
classifier for the configured chunk size. A model that lies in a directory `virnucpro models
fetch` wrote is first checked against that directory's manifest: its files of the size and
SHA-256 fetched (virnucpro.models.published). All problems are reported together, one line
each, and nothing starts (exit status 66).

A model that a rule of the workflow makes (ESM-2 and DNABERT-S by the download rules, the
demo models by rule demo_models, a classifier that rule train writes) is no problem when it
is absent: the user is told, in one line, which rule makes it.

`unprepared` words what a dry run cannot list yet: the jobs of a sample whose prepare has
not run, with an estimate of how many there will be.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import stat
import zipfile
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

from virnucpro.errors import (InputError, MissingInputError, ModelError, Problems, UsageError,
                              VirNucProError, one_line)
from virnucpro.atomic import atomic_open
from virnucpro.bam import BamReader, alignment_format
from virnucpro.gpu import visible_devices
from virnucpro.models.formats import (CONFIG_NAME, PYTORCH_BIN_NAME, damaged_torch_file,
                                      dnabert_problems, dnabert_weights, esm_name_problem,
                                      missing_dnabert_file, not_a_torch_archive,
                                      safetensors_problem, sidecar_path, torch_file_problem,
                                      torch_zip_crc_problem, torch_zip_problem,
                                      unreadable_classifier, unreadable_sidecar,
                                      unreadable_torch_file)
from virnucpro.models.published import (DNABERT_S_PAGE, ESM_FILE, classifier_address,
                                        digest_problem, esm_address, manifest_entries,
                                        size_problem)
from virnucpro.fasta import READS_FORMATS
from virnucpro.prepare import HeadCounts, estimate, head_counts
from virnucpro.reads import PAIRING_HINT, alignment_with_mate_file, reads_reader

# The models of a run (config `models`), by what each is called.
MODEL_NAMES = {"esm": "ESM-2 model file", "dnabert": "DNABERT-S directory",
               "classifier": "classifier"}
# The published classifiers' names say their chunk size (also once converted to safetensors).
PUBLISHED_NAME = re.compile(r"(300|500)_model\.(pth|safetensors)")
HEAD_BYTES = 1 << 20  # what pre-flight reads of each reads file (and a dry run's estimate)
# Paired files up to this size together (on disk) are counted in full before any job: the
# package's reader counts 25-35 ms a MB of gzip FASTQ, 2-7 ms a MB of plain FASTQ or FASTA,
# so a pair at the limit costs pre-flight 0.8 s gzip, 0.1 s plain (bench/preflight.py).
# Larger pairs are checked by prepare, which reads them anyway.
PAIR_COUNT_BYTES = 16 << 20


def check(samples: dict[str, list[str]], training: dict[str, list[str]],
          models: dict[str, str], chunk_size: int, made: dict[str, str],
          read: Collection[str] = (), device: str | None = None, u_as_t: bool = False,
          dedup: bool = False) -> list[str]:
    """Raise Problems unless the run can start: the reads of the samples and training files
    that jobs will still read (not those `read`: prepared, and for a sample its virus reads
    written; such reads may be gone), the models they need (the classifier only when there
    are samples to classify), and `embed.device` where the jobs run here (`device`; None
    when they run elsewhere, on a cluster). `made` maps each file a rule makes to that rule;
    `u_as_t` and `dedup` are prepare's settings (training files are not deduplicated).
    Returns notes for the user: the models absent but made by a rule."""
    problems: list[VirNucProError] = []
    if device is not None and (problem := device_problem(device)):
        problems.append(problem)
    for sample, files in {**samples, **training}.items():
        if sample not in read:
            problems += sample_problems(sample, files, chunk_size, u_as_t=u_as_t,
                                        drop_ambiguous=sample in training,
                                        dedup=dedup and sample not in training)
    needed = [kind for kind in MODEL_NAMES if samples or (training and kind != "classifier")]
    made = {os.path.normpath(path): rule for path, rule in made.items()}
    notes = []
    for kind in needed:
        path = Path(models[kind])
        rule = made.get(os.path.normpath(path))
        if path.exists():
            problems += fetched_copy_problems(path) or MODEL_CHECKS[kind](path, chunk_size)
        elif rule:
            notes.append(f"{path}: not here yet; rule {rule} makes it before the first job "
                         "that needs it")
        else:
            problems.append(not_found(kind, path, chunk_size))
    if problems:
        raise Problems(problems)
    return notes


def sample_problems(sample: str, files: list[str], chunk_size: int,
                    **settings: bool) -> list[VirNucProError]:
    """What is wrong with a sample's reads files, one problem a file, then for paired files
    that are sound, their record counts (`pair_problem`). `settings` are prepare's."""
    problems: list[VirNucProError] = []
    heads = []
    for path in files:
        try:
            problem = reads_problem(sample, path)
            heads.append(None if problem else first_records(path, chunk_size, **settings))
        except VirNucProError as found:
            problem = found
        if problem:
            problems.append(problem)
    if not problems and (problem := alignment_with_mate_file(files)):
        problems.append(problem)
    elif len(files) == 2 and not problems and (problem := pair_problem(files, heads)):
        problems.append(problem)
    return problems


def first_records(path: str, chunk_size: int, **settings: bool) -> HeadCounts | None:
    """`prepare.head_counts` of the file's first HEAD_BYTES (InputError if they are not
    reads), read once while the workflow is planned: pre-flight checks the file with them and
    a dry run's estimate scales the same counts. Remembered per version of the file."""
    try:
        found = os.stat(path)
        version = (found.st_ino, found.st_size, found.st_mtime_ns)
    except OSError:
        version = None  # head_counts says what is wrong, in one line
    return _first_records(path, version, chunk_size, tuple(sorted(settings.items())))


@functools.cache
def _first_records(path: str, version: tuple[int, int, int] | None, chunk_size: int,
                   settings: tuple[tuple[str, bool], ...]) -> HeadCounts | None:
    return head_counts(path, chunk_size, HEAD_BYTES, **dict(settings))


def pair_problem(files: list[str], heads: list[HeadCounts | None]) -> InputError | None:
    """Paired files whose record counts differ: an R2 cut short, or the files of two runs.
    Counted by the package's reader (what prepare will read), from their first records when
    those are the whole files, else in full up to PAIR_COUNT_BYTES together; larger pairs
    are left to prepare, which stops at the end of the shorter file with one line."""
    if all(head is not None and head.whole for head in heads):
        counts = [head.reads for head in heads]
    elif sum(map(os.path.getsize, files)) <= PAIR_COUNT_BYTES:
        counts = [sum(map(len, reads_reader(path))) for path in files]
    else:
        return None
    if counts[0] == counts[1]:
        return None
    return InputError(files[0], f"has {counts[0]:,} records, its mate file {files[1]} has "
                      f"{counts[1]:,}", PAIRING_HINT)


def reads_problem(sample: str, path: str) -> InputError | None:
    """Why a sample's reads file cannot be read, or None (its content: `first_records`). A BAM
    or CRAM is opened (its header, end-of-file block and first read, which tells whether its
    reads are paired, as the workflow needs to plan the run), so one truncated or unreadable
    is named before any job."""
    what = f"reads file of sample '{sample}'"
    if not os.path.exists(path):
        return MissingInputError(path, f"{what} does not exist", "check its path in your config "
                                 "or sample sheet (a relative path is relative to the working "
                                 "directory)")
    if os.path.isdir(path):
        return MissingInputError(path, f"{what} is a directory",
                                 f"give the path of a {READS_FORMATS} file")
    kind = os.stat(path).st_mode
    if not stat.S_ISREG(kind):
        # Opening a named pipe would wait for a writer, forever (dry runs too); and a pipe
        # or device cannot be read twice, as a dry run's estimate and prepare both read it.
        name = "a named pipe (FIFO)" if stat.S_ISFIFO(kind) else "not a regular file"
        return MissingInputError(path, f"{what} is {name}",
                                 f"give the path of a {READS_FORMATS} file on disk (write "
                                 "a stream to a file first)")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return MissingInputError(path, f"{what} cannot be read ({exc.strerror})",
                                 "make it readable to the user who runs the workflow")
    if alignment := alignment_format(path):
        try:
            BamReader(path, alignment)
        except InputError as problem:
            return problem
    return None


def device_problem(device: str) -> UsageError | None:
    """`embed.device: cuda` where the jobs run (this machine: only for a local run) and no
    GPU is there, found before any job rather than by the first embedding job after every
    sample was prepared. Looks for devices as the GPU leases do (virnucpro.gpu), without
    starting CUDA."""
    if not device.startswith("cuda") or visible_devices():
        return None
    return UsageError(f"config: embed.device: {device!r} but this machine has no GPU (no "
                      "/dev/nvidiaN device, or CUDA_VISIBLE_DEVICES hides them); set "
                      "embed.device: auto (or cpu) to run on the CPU, or run where a GPU is")


def not_found(kind: str, path: Path, chunk_size: int) -> ModelError:
    """A model that is not there and that no rule makes: where it is published."""
    if kind == "classifier":
        fetch = (f"download the published {chunk_size}_model.pth from "
                 f"{classifier_address(chunk_size)} there")
    elif kind == "esm":
        name = path.stem if path.stem.startswith("esm2") else Path(ESM_FILE).stem
        fetch = f"download {esm_address(name)} there"
    else:
        fetch = f"download DNABERT-S ({DNABERT_S_PAGE}) there"
    return ModelError(f"{path}: {MODEL_NAMES[kind]} not found; {fetch}, or set models.{kind} in "
                      "your config")


def crc_problems(path: Path) -> list[ModelError]:
    """A torch zip archive whose bytes do not match its checksums (`torch_zip_crc_problem`);
    the jobs verify the file again each time they load it."""
    if not zipfile.is_zipfile(path):
        return []

    def damage() -> ModelError | None:
        reason = torch_zip_crc_problem(path)
        return damaged_torch_file(path, reason) if reason else None

    return remembered_sound(path, "zip CRC-32", damage)


def remembered_sound(path: Path, test: str, check: Callable[[], ModelError | None]
                     ) -> list[ModelError]:
    """The problem `check` finds reading the whole file, unless this version of the file
    (path, size, inode, modification and change times) passed the same `test` before.

    A sound verdict is remembered per file and test in the user's cache, so a 5.7 GB model
    is read whole once, not at every dry run; a file changed in any way is read again."""
    stat_ = path.stat()
    where = str(path.resolve())
    version = f"{where}|{stat_.st_size}|{stat_.st_ino}|{stat_.st_mtime_ns}|{stat_.st_ctime_ns}"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "virnucpro" / \
        "verified-models.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    passed = known.get(where) if isinstance(known.get(where), dict) else {}
    if passed.get(test) == version:
        return []
    problem = check()
    if problem:
        return [problem]
    with contextlib.suppress(OSError, TypeError):  # a cache that cannot be written: no matter
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cache, "w") as handle:
            json.dump({**known, where: {**passed, test: version}}, handle)
    return []


def fetched_copy_problems(path: Path) -> list[ModelError]:
    """A model in a directory `virnucpro models fetch` wrote, checked against its manifest:
    each of its files there and of the size recorded (always), and of the SHA-256 recorded
    (read whole once per version of the file, `remembered_sound`), so a bad copy is found
    before any job, by name, rather than as a damaged weight."""
    try:
        directory, entries = manifest_entries(path)
    except ModelError as unreadable:
        return [unreadable]
    problems = []
    for name, entry in entries.items():
        problem = size_problem(directory, name, entry)
        if problem:
            problems.append(problem)
        else:
            problems += remembered_sound(directory / name, f"sha256 {entry['sha256']}",
                                         partial(digest_problem, directory, name, entry))
    return problems


def esm_problems(path: Path, chunk_size: int) -> list[ModelError]:
    """An ESM-2 model file must be named as fair-esm names them and be a sound torch file."""
    wrong_name = esm_name_problem(path)
    if wrong_name:
        return [wrong_name]
    reason = torch_file_problem(path)
    return [unreadable_torch_file(path, reason, "download it again")] if reason else \
        crc_problems(path)


def dnabert_dir_problems(path: Path, chunk_size: int) -> list[ModelError]:
    """A DNABERT-S model is a directory with its config, weights and tokenizer."""
    if not path.is_dir():
        return [missing_dnabert_file(path, CONFIG_NAME)]
    problems = dnabert_problems(path)
    weights = dnabert_weights(path)
    if not problems and weights is not None and weights.name == PYTORCH_BIN_NAME:
        problems = crc_problems(weights)
    return problems


def classifier_problems(path: Path, chunk_size: int) -> list[ModelError]:
    """A classifier is a torch zip archive or a safetensors file, for `chunk_size` where its
    sidecar or name says which chunk size it is for."""
    if path.suffix == ".safetensors":
        reason = safetensors_problem(path)
        if reason:
            return [unreadable_classifier(path, reason)]
    else:
        reason = torch_zip_problem(path)
        if reason:
            return [not_a_torch_archive(path, reason)]
        if damage := crc_problems(path):
            return damage
    try:
        declared = declared_chunk_size(path)
    except ModelError as problem:
        return [problem]
    if declared and declared[0] != chunk_size:
        size, source = declared
        return [ModelError(f"{path}: the classifier is for {size}-bp chunks ({source}), the "
                           f"config's chunk_size is {chunk_size}; set chunk_size: {size}, or "
                           f"use a classifier for {chunk_size}-bp chunks (the published "
                           f"{chunk_size}_model.pth)")]
    return []


MODEL_CHECKS = {"esm": esm_problems, "dnabert": dnabert_dir_problems,
                "classifier": classifier_problems}


def declared_chunk_size(path: Path) -> tuple[int, str] | None:
    """The chunk size a classifier was trained for and what says so: its JSON sidecar's
    `chunk_size` (training writes it there), else a published file name; None if unknown."""
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            recorded = json.loads(sidecar.read_text()).get("chunk_size")
        except (OSError, ValueError, AttributeError) as exc:
            raise unreadable_sidecar(sidecar, one_line(exc)) from None
        if recorded is not None:
            return recorded, f"{sidecar.name} says chunk_size {recorded}"
    published = PUBLISHED_NAME.fullmatch(path.name)
    if published:
        return int(published[1]), "as its name says"
    return None


def unprepared(sample: str, reads: list[str], chunk_size: int, shard_size: int,
               **settings: bool) -> str:
    """What a dry run says of a sample whose prepare has not run: its embedding jobs are
    not planned yet (they come from a Snakemake checkpoint), and about how many there will
    be, from the first MB of its reads (`prepare.estimate` of the counts pre-flight read,
    `first_records`; `settings` are prepare's). With `dedup`, the distinct frames (those to
    embed, which make the shards) are those of each file's first MB: repeats further apart
    are not seen there, so the work is not underestimated."""
    line = f"sample {sample}: prepare has not run yet; its embedding jobs appear after it"
    try:
        counts = estimate([first_records(path, chunk_size, **settings) for path in reads],
                          shard_size)
    except VirNucProError as problem:  # its prepare job will say so
        return f"{line} (no estimate: {problem.one_line()})"
    if counts is None:
        return f"{line} (no estimate: a first record is longer than {HEAD_BYTES >> 20} MB)"
    about = "" if counts.exact else "~"
    shards = f"{counts.shards:,} shard{'' if counts.shards == 1 else 's'}"
    source = "counted in full" if counts.exact else \
        f"estimated from the first {HEAD_BYTES >> 20} MB"
    distinct = f" ({about}{_rounded(counts.distinct_frames, counts.exact):,} distinct)" \
        if settings.get("dedup") else ""
    return (f"{line}: {about}{_rounded(counts.reads, counts.exact):,} reads, "
            f"{about}{_rounded(counts.frames, counts.exact):,} frames{distinct}, "
            f"{about}{shards} ({source})")


def _rounded(value: float, exact: bool) -> int:
    """A count as precise as it is known: an estimate to two significant digits."""
    count = round(value)
    if exact or count < 100:
        return count
    return round(count, 2 - len(str(count)))
