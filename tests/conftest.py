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
