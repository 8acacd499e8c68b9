"""Run the real workflow with Snakemake in a scratch directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = ROOT / "workflow" / "Snakefile"


def write_config(path: Path, **config) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`snakemake --snakefile workflow/Snakefile --directory workdir ARGS` as a real process
    (stdout and stderr together in .stdout)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory",
           str(workdir), "--cores", "2", *map(str, args)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry-run, as {rule: count}."""
    import re

    if "Job stats:" not in output:
        return {}
    table = output[output.index("Job stats:"):]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


DEMO_MODELS = {"esm": "resources/demo-models/esm2_demo_t2_d32.pt",
               "dnabert": "resources/demo-models/dnabert2_demo",
               "classifier": "resources/demo-models/classifier.pth"}
