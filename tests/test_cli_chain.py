"""README's chain of single steps runs exactly as written (with the demo models)."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_chain() -> list[str]:
    """The commands of the README block after the `cli-chain` marker, continuations joined."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- cli-chain -->\n```bash\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_chain_runs_as_written(tmp_path):
    """In a directory laid out like the repository (its venv, its demo reads), every line
    succeeds, and the last files it names are there."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "demo.fa").symlink_to(ROOT / "resources" / "demo.fa")
    commands = readme_chain()
    assert [c.split()[1] for c in commands] == ["make-demo-models", "prepare", "embed",
                                                "classify", "validate-features",
                                                "convert-model"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for command in commands:
        proc = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    reads = (tmp_path / "res" / "summary.tsv").read_text().splitlines()
    demo = [line[1:].split()[0] for line in (ROOT / "resources" / "demo.fa").read_text()
            .splitlines() if line.startswith(">")]
    assert [row.split("\t")[0] for row in reads[1:]] == demo
    assert (tmp_path / "features" / "shard_000000.done").exists()
    assert (tmp_path / "models" / "classifier.safetensors").exists()


def test_classify_names_the_shards_it_was_not_given(tmp_path):
    """One shard's features of three: named before anything is written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def run(*args):
        return subprocess.run([str(ROOT / ".venv" / "bin" / "virnucpro"), *args],
                              cwd=tmp_path, capture_output=True, text=True, env=env)

    assert run("make-demo-models", "models").returncode == 0
    assert run("prepare", str(ROOT / "resources" / "demo.fa"), "--chunk-size", "500",
               "--outdir", "out", "--shard-size", "10").returncode == 0
    assert run("embed", "--nucleotide", "out/shards/shard_000000.fna", "--protein",
               "out/shards/shard_000000.faa", "--esm-model", "models/esm2_demo_t2_d32.pt",
               "--dnabert-model", "models/dnabert2_demo", "--out", "f/shard_000000.pt",
               "--device", "cpu").returncode == 0
    shards = len(list((tmp_path / "out" / "shards").glob("*.done")))
    proc = run("classify", "--features", "f/shard_000000.pt", "--prepared", "out",
               "--model", "models/classifier.pth", "--outdir", "res")
    assert proc.returncode == 65
    assert proc.stderr.strip() == (
        f"virnucpro: error: out: no feature file given for {shards - 1} of its {shards} shards "
        f"(shard_000001, shard_000002, shard_000003, ...); embed every shard and pass all the "
        "feature files")
    assert not (tmp_path / "res").exists()
