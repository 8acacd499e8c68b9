import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
sys.path.insert(0, str(ROOT / "bench"))


# The longest file first: `make test` runs files in two processes, each taking the next file
# when it is free, and the failure matrix (about half the suite's time) started late would
# run alone at the end.
LONGEST_FIRST = "test_failure_matrix.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name != LONGEST_FIRST)  # stable: the rest in order


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE} (it must sit beside the repository)")
    return REFERENCE


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real `virnucpro` command in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "virnucpro.cli", *map(str, args)],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"virnucpro {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


class Interrupted(Exception):
    """A crash in the middle of a shard (raised by an engine `die_after` made)."""


def die_after(engine, windows: int):
    """`engine`, made to raise Interrupted once it has given `windows` windows (counted over
    all its calls), as a process dying in the middle of a shard would."""
    embed_windows = engine.embed_windows
    left = windows

    def dying(*args, **kwargs):
        nonlocal left
        for item in embed_windows(*args, **kwargs):
            if left == 0:
                raise Interrupted
            left -= 1
            yield item

    engine.embed_windows = dying
    return engine


def read_fasta(path: Path) -> list[tuple[str, str]]:
    from Bio import SeqIO
    return [(r.id, str(r.seq)) for r in SeqIO.parse(str(path), "fasta")]


def fastq_text(records: list[tuple[str, str]], rng: random.Random | None = None,
               plus: bool = False) -> str:
    """4-line FASTQ; random qualities (any of '!'..'~', so '@' and '+' start quality lines
    too); `plus`: the '+' line repeats the title."""
    rng = rng or random.Random(0)
    return "".join(
        f"@{header}\n{seq}\n+{header if plus else ''}\n"
        f"{''.join(chr(rng.randint(33, 126)) for _ in seq)}\n" for header, seq in records)


def flip_a_stored_bit(path: Path) -> None:
    """Flip one bit inside the largest entry of a zip archive (a torch file's biggest
    tensor), as a bad copy or disk would: the archive stays readable, its CRC-32 does not."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    # local header: 30 bytes + name + extra field, then the stored bytes
    name_length = int.from_bytes(data[entry.header_offset + 26:entry.header_offset + 28], "little")
    extra_length = int.from_bytes(data[entry.header_offset + 28:entry.header_offset + 30],
                                  "little")
    start = entry.header_offset + 30 + name_length + extra_length
    data[start + entry.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))


def with_nan_weight(source: Path, target: Path) -> Path:
    """A copy of a torch model file with one weight NaN, saved afresh (checksums sound):
    damage that only the numbers a model computes can show."""
    import argparse

    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):  # fair-esm's file format
        state = torch.load(source, weights_only=True, map_location="cpu")
    tensors = state["model"] if "model" in state else state
    name = max((k for k, v in tensors.items() if hasattr(v, "dtype") and v.dtype.is_floating_point
                and v.dim() == 2), key=lambda k: tensors[k].numel())
    tensors[name].view(-1)[0] = float("nan")
    torch.save(state, target)
    return target


def unaligned_bam(out: Path, *fastqs: Path) -> Path:
    """The reads of one FASTQ file, or the pairs of two (R1, R2), as the unaligned BAM
    `samtools import` (pysam's) writes (a CRAM when `out` ends in .cram): a record per read
    named by its ID, flags 4 or, for pairs, 77 and 141 (READ1 then READ2), bases and qualities
    as in the FASTQ."""
    import pysam

    inputs = ["-0", str(fastqs[0])] if len(fastqs) == 1 else \
        ["-1", str(fastqs[0]), "-2", str(fastqs[1])]
    pysam.samtools.fqimport(*inputs, "-O", "cram" if out.suffix == ".cram" else "bam",
                            "-o", str(out), catch_stdout=False)
    return out
