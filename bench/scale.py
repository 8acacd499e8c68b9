"""Production scale: memory and disk that must not grow with the data, measured.

Six measurements, each in fresh subprocesses whose peak anonymous memory (RssAnon: heap,
not file pages such as memory-mapped models or feature files, which the kernel reclaims) is
sampled from /proc every few milliseconds by this process:

  embed  `virnucpro embed` (demo models, CPU) on shards of two sizes: the peak of the larger
         must be within 50 MB of the smaller's; and what that implies for one job with the
         published models at the default shard size.
  disk   a default workflow run (demo models): bytes under the outdir, logs and benchmarks
         excepted, per frame (target <= 1 KB), and what keep_features would add.
  load   a checkpoint of the ESM-2 3B architecture in the published fp16 format (5.7 GB,
         random weights, written here), loaded on the CPU in float32 and in bfloat16 by
         `load_esm2`: peak anonymous memory over the model's size in that dtype (target
         <= 1.15x), and load times; `--baseline` also loads it as the code before did (the
         whole file read into memory, the module converted afterwards) for comparison.
  train  `virnucpro train` on synthetic feature files of demo width, two sizes: the peak of
         the larger must be within 100 MB of the smaller's.
  aggregate  the steps from the scores to the pages (aggregate, virus_reads, the sample's
         page), as the workflow runs them, on synthetic samples of 1 and 4 million 150-bp
         reads with two frames each (reads, reads.tsv and scores written directly): each
         step's peak at 4 M must be within 50 MB of its peak at 1 M, and CPU time per read
         the same; a 20-million-read projection per step (memory, disk, time) is printed.
  report a workflow run (demo models, CPU) on 20,000 and on 60,000 random 150-bp reads: the
         Snakemake report (`--report report.html`) and the pages must grow by at most 2
         bytes per added read.

    .venv/bin/python bench/scale.py [embed disk load train aggregate report]
                                    [--small 100000 --large 400000] [--baseline]
                                    [--aggregate-small 1000000 --aggregate-large 4000000]
                                    [--report-small 20000 --report-large 60000] [--workdir DIR]

Results: printed, and saved to bench/results/scale.json (sections measured in this run
replace those of an earlier run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from embed import random_reads  # noqa: E402
from kill_resume import write_shard  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
PYTHON = sys.executable
ESM_3B = {"layers": 36, "embed_dim": 2560, "heads": 40}
PUBLISHED_WIDTH = 768 + 2560  # DNABERT-S + ESM-2 3B feature columns
DEMO_WIDTH = 32 + 32
DEFAULT_SHARD = 1_000_000
MB = 1 << 20


def rss_anon(pid: int) -> int | None:
    """RssAnon of a process in bytes, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_anon(cmd: list[str], env: dict[str, str] | None = None, period_s: float = 0.002
              ) -> tuple[int, float, subprocess.CompletedProcess]:
    """Run `cmd`; its peak RssAnon (bytes, sampled) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            value = rss_anon(proc.pid)
            if value:
                peak[0] = max(peak[0], value)
            time.sleep(period_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    seconds = time.perf_counter() - start
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{err[-3000:]}")
    return peak[0], seconds, done


def demo_models(workdir: Path) -> dict[str, Path]:
    from virnucpro.demo_models import write_demo_models

    return write_demo_models(workdir / "models")


# --------------------------------------------------------------------------- embed


def bench_embed(workdir: Path, small: int, large: int) -> dict:
    models = demo_models(workdir)
    figures = {}
    for frames in (small, large):
        directory = workdir / f"shard-{frames}"
        directory.mkdir(exist_ok=True)
        nucleotide, protein = write_shard(directory, frames, seed=frames)
        out = directory / "shard.pt"
        cmd = [PYTHON, "-m", "virnucpro.cli", "-q", "embed", "--nucleotide", str(nucleotide),
               "--protein", str(protein), "--esm-model", str(models["esm"]), "--dnabert-model",
               str(models["dnabert"]), "--device", "cpu", "--out", str(out)]
        peak, seconds, _ = peak_anon(cmd, env={"PYTHONPATH": str(ROOT / "src")})
        figures[frames] = {"peak_anon_mb": round(peak / MB, 1), "seconds": round(seconds, 1),
                           "frames_per_s": round(frames / seconds),
                           "feature_file_mb": round(out.stat().st_size / MB, 1)}
        print(f"embed {frames:>9,} frames: peak RssAnon {peak / MB:8.1f} MB, {seconds:6.1f} s")
        shutil.rmtree(directory)
    growth = figures[large]["peak_anon_mb"] - figures[small]["peak_anon_mb"]
    per_frame = growth * MB / (large - small)
    # What grows with the shard is the frame IDs of the feature file being written (a list of
    # strings, the same at any width); what scales with the width is a bounded number of
    # windows: projected from the demo width to the published one.
    base = figures[small]["peak_anon_mb"]
    rows_mb = (10_000 + 2 * 4096) * 2 * (PUBLISHED_WIDTH - DEMO_WIDTH) * 4 / MB
    projected = base + per_frame * (DEFAULT_SHARD - small) / MB + rows_mb
    result = {"frames": figures, "growth_mb": round(growth, 1), "target_growth_mb": 50,
              "met": growth <= 50, "growth_bytes_per_frame": round(per_frame, 1),
              "projected_published_keep_features_job_mb": round(projected),
              "projection": "peak at the small shard + measured growth per frame x the rest "
                            "of a 1,000,000-frame shard + the rows held at once (checkpoint "
                            "interval 10,000 and two 4,096-frame windows, each twice while "
                            "being cut) at 3,328 float32 columns instead of 64; models on the "
                            "GPU, so not in host memory"}
    print(f"embed growth {small:,} -> {large:,} frames: {growth:+.1f} MB (target <= 50): "
          f"{'met' if growth <= 50 else 'MISSED'}; projected published-model job at "
          f"{DEFAULT_SHARD:,} frames with kept features: {projected:,.0f} MB")
    return result


# --------------------------------------------------------------------------- disk


def run_workflow(work: Path, reads: Path, keep: bool, *options: str) -> Path:
    """The workflow on `reads` (sample s, demo models, CPU) in `work`; `options` are added to
    Snakemake's command line (`--report FILE` makes the report of the run)."""
    import yaml

    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "samples": {"s": str(reads)}, "outdir": "out", "chunk_size": 300, "shard_size": 10_000,
        "keep_features": keep, "embed": {"device": "cpu"},
        "models": {"esm": "resources/demo-models/esm2_demo_t2_d32.pt",
                   "dnabert": "resources/demo-models/dnabert2_demo",
                   "classifier": "resources/demo-models/classifier.pth"}}))
    cmd = [PYTHON, "-m", "snakemake", "--snakefile", str(ROOT / "workflow" / "Snakefile"),
           "--directory", str(work), "--cores", "2", "--configfile", str(config), "-q", *options]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"workflow failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return work / "out"


def tree_bytes(outdir: Path) -> dict[str, int]:
    """Bytes per top-level kind under the outdir (logs and benchmarks left out)."""
    sizes: dict[str, int] = {}
    for path in outdir.rglob("*"):
        parts = path.relative_to(outdir).parts
        if path.is_file() and parts[0] not in ("logs", "benchmarks"):
            kind = parts[1] if len(parts) > 2 else "results"
            sizes[kind] = sizes.get(kind, 0) + path.stat().st_size
    return sizes


def bench_disk(workdir: Path, reads: int) -> dict:
    fasta = workdir / "reads.fa"
    random_reads(fasta, reads, description=" simulated")
    figures = {}
    for keep in (False, True):
        work = workdir / f"run-keep-{keep}"
        work.mkdir(exist_ok=True)
        outdir = run_workflow(work, fasta, keep)
        frames = json.loads((outdir / "s" / "prepare" / "stats.json").read_text())["frames"]
        sizes = tree_bytes(outdir)
        total = sum(sizes.values())
        figures["keep_features" if keep else "default"] = {
            "frames": frames, "bytes": total, "bytes_per_frame": round(total / frames, 1),
            "by_kind": sizes}
        print(f"disk ({'keep_features' if keep else 'default'}): {total / MB:.1f} MB for "
              f"{frames:,} frames = {total / frames:,.0f} B/frame  {sizes}")
    default = figures["default"]
    features_per_frame = figures["keep_features"]["by_kind"].get("features", 0) / \
        figures["keep_features"]["frames"]
    published_keep = default["bytes_per_frame"] + PUBLISHED_WIDTH * 4 + \
        (features_per_frame - DEMO_WIDTH * 4)
    result = {**figures, "target_bytes_per_frame": 1024,
              "met": default["bytes_per_frame"] <= 1024,
              "published_default_bytes_per_frame": default["bytes_per_frame"],
              "published_keep_features_bytes_per_frame": round(published_keep),
              "projection": "the default keeps no features, so its disk does not depend on the "
                            "models' width; kept features add 3,328 float32 a frame (half in "
                            "float16) plus the file's per-frame ID overhead measured here"}
    print(f"disk per frame, default: {default['bytes_per_frame']:,.0f} B (target <= 1,024): "
          f"{'met' if result['met'] else 'MISSED'}; with published models: the same; with "
          f"keep_features: {published_keep:,.0f} B")
    return result


# --------------------------------------------------------------------------- load


LOAD = """
import json, sys, time
import torch
sys.path.insert(0, sys.argv[4])
from virnucpro.models.esm2 import load_esm2
from virnucpro.heap import keep_flat
keep_flat()  # as in every virnucpro step
dtype = getattr(torch, sys.argv[2])
start = time.perf_counter()
if sys.argv[3] == "lean":
    encoder = load_esm2(sys.argv[1], "cpu", dtype)
else:  # the code before: the whole file in memory, the module converted afterwards
    from virnucpro.models.esm2 import Esm2Encoder, read_model_file, _FAIRSEQ_PREFIX
    import argparse
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(sys.argv[1], map_location="cpu", weights_only=True, mmap=False)
    state = {_FAIRSEQ_PREFIX.sub("", k): v for k, v in data["model"].items()}
    encoder = Esm2Encoder.from_esm_state_dict(state, 40, "cpu", torch.float16).to(dtype)
seconds = time.perf_counter() - start
size = sum(p.numel() * p.element_size() for p in encoder.parameters())
print(json.dumps({"seconds": seconds, "model_bytes": size}))
"""


def write_3b_checkpoint(path: Path, shape: dict = ESM_3B) -> int:
    """An ESM-2 model file of `shape` (default: the 3B architecture) in fair-esm's published
    format: fp16 weights under fairseq names, random values, written without an fp32 copy in
    memory. Returns the file size."""
    import argparse as ap

    import torch
    from esm.model.esm2 import ESM2

    layers, width, heads = shape["layers"], shape["embed_dim"], shape["heads"]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ESM2(layers, width, heads).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    head_dim = width // heads
    state = {}
    for key, size in shapes.items():
        if key.startswith("contact_head."):
            continue
        name = ("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.") + key
        state[name] = (1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
                       if key.endswith("inv_freq") else
                       (torch.randn(size, generator=generator) * 0.02).half())
    cfg = ap.Namespace(arch="esm2", encoder_layers=layers, encoder_embed_dim=width,
                       encoder_ffn_embed_dim=4 * width, encoder_attention_heads=heads,
                       token_dropout=True)
    torch.save({"model": state, "cfg": {"model": cfg}}, path)
    del state
    return path.stat().st_size


def bench_load(workdir: Path, baseline: bool) -> dict:
    checkpoint = workdir / "esm2_t36_3B_UR50D.pt"
    start = time.perf_counter()
    size = write_3b_checkpoint(checkpoint)
    print(f"load: wrote {checkpoint.name}, {size / 1e9:.2f} GB, in "
          f"{time.perf_counter() - start:.0f} s")
    result = {"checkpoint_bytes": size, "target_ratio": 1.15}
    ways = ["lean", "baseline"] if baseline else ["lean"]
    for way in ways:
        for dtype in ("float32", "bfloat16"):
            subprocess.run(["sync"], check=False)
            peak, _, proc = peak_anon([PYTHON, "-c", LOAD, str(checkpoint), dtype, way,
                                       str(ROOT / "src")])
            facts = json.loads(proc.stdout.strip().splitlines()[-1])
            ratio = peak / facts["model_bytes"]
            result[f"{way}_{dtype}"] = {
                "seconds": round(facts["seconds"], 1),
                "model_gib": round(facts["model_bytes"] / (1 << 30), 2),
                "peak_anon_gib": round(peak / (1 << 30), 2), "ratio": round(ratio, 3)}
            print(f"load ({way}, {dtype}): {facts['seconds']:.1f} s, peak RssAnon "
                  f"{peak / (1 << 30):.2f} GiB for a {facts['model_bytes'] / (1 << 30):.2f} GiB "
                  f"model = {ratio:.2f}x (target <= 1.15)")
    result["met"] = all(result[f"lean_{d}"]["ratio"] <= 1.15 for d in ("float32", "bfloat16"))
    checkpoint.unlink()
    return result


# --------------------------------------------------------------------------- train


def labelled_dir(directory: Path, frames: int, seed: int, shard_frames: int = 50_000) -> None:
    """A sample directory as the workflow leaves it (prepare stats, shard indexes and
    sentinels, feature files), with random features of the demo width."""
    import torch

    from virnucpro.atomic import write_sentinel
    from virnucpro.features import save_features

    shards, features = directory / "prepare" / "shards", directory / "features"
    shards.mkdir(parents=True)
    features.mkdir()
    starts = range(0, frames, shard_frames)
    (directory / "prepare" / "stats.json").write_text(json.dumps({"input": f"{directory}.fa",
                                                                 "shards": len(starts)}))
    generator = torch.Generator().manual_seed(seed)
    for number, start in enumerate(starts):
        name = f"shard_{number:06d}"
        ids = [f"r{i}_chunk_1F1" for i in range(start, min(frames, start + shard_frames))]
        (shards / f"{name}.index.tsv").write_text(
            "frame_id\tread_index\tchunk\tframe\trepresentative\n" +
            "".join(f"{frame_id}\t{start + i}\t1\tF1\t\n" for i, frame_id in enumerate(ids)))
        write_sentinel(shards / f"{name}.done", f"{len(ids)}\n")
        data = torch.randn(len(ids), DEMO_WIDTH, generator=generator) + (0.3 if seed else -0.3)
        save_features(features / f"{name}.pt", ids, data)
        write_sentinel(features / f"{name}.done", f"{len(ids)}\n")


def bench_train(workdir: Path, small: int, large: int) -> dict:
    figures = {}
    for frames in (small, large):
        run = workdir / f"train-{frames}"
        labelled_dir(run / "virus", frames // 2, seed=1)
        labelled_dir(run / "host", frames // 2, seed=0)
        cmd = [PYTHON, "-m", "virnucpro.cli", "-q", "train", "--virus", str(run / "virus"),
               "--nonvirus", str(run / "host"), "--chunk-size", "500", "--outdir",
               str(run / "model"), "--epochs", "2", "--validation-fraction", "0.1"]
        peak, seconds, _ = peak_anon(cmd, env={"PYTHONPATH": str(ROOT / "src")})
        figures[frames] = {"peak_anon_mb": round(peak / MB, 1), "seconds": round(seconds, 1)}
        print(f"train {frames:>9,} frames: peak RssAnon {peak / MB:8.1f} MB, {seconds:6.1f} s")
        shutil.rmtree(run)
    growth = figures[large]["peak_anon_mb"] - figures[small]["peak_anon_mb"]
    print(f"train growth {small:,} -> {large:,} frames: {growth:+.1f} MB (target <= 100): "
          f"{'met' if growth <= 100 else 'MISSED'}")
    return {"frames": figures, "growth_mb": round(growth, 1), "target_growth_mb": 100,
            "met": growth <= 100}


# --------------------------------------------------------------------------- aggregate


STEP = """
import importlib, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from virnucpro.runner import call_reporting_errors
module, name = sys.argv[2].rsplit(".", 1)
step = getattr(importlib.import_module(module), name)
start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
status = call_reporting_errors(step, *json.loads(sys.argv[3]))
done = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not getrusage's ru_maxrss, which Linux carries over from the parent process.
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"status": status, "seconds": time.perf_counter() - start,
                  "cpu_seconds": done.ru_utime + done.ru_stime - cpu.ru_utime - cpu.ru_stime,
                  "max_rss_kb": int(hwm)}))
"""
WRITE_BLOCK = 250_000
READ_LENGTH = 150
LINEAR_TOLERANCE = 1.25  # CPU time per read at the large sample over the small's


def synthetic_sample(directory: Path, reads: int, shard_frames: int = DEFAULT_SHARD,
                     seed: int = 0) -> tuple[Path, Path, list[Path]]:
    """A sample of `reads` random 150-bp reads (read0, read1, ...), each of one chunk with two
    stop-free frames, as prepare and the embedding jobs leave it: the reads (FASTA),
    reads.tsv, and a scores file per shard of `shard_frames` frames (so a chunk's two frames
    can lie in two shards) with random scores (P(others) = 1 - P(virus), 8 decimals).
    Written directly, without running prepare or a model. Returns the three."""
    import numpy as np

    from virnucpro.classify import SCORES_HEADER
    from virnucpro.prepare import READS_HEADER

    rng = np.random.default_rng(seed)
    fasta, reads_tsv = directory / "reads.fa", directory / "reads.tsv"
    with open(fasta, "wb") as out, open(reads_tsv, "wb") as table:
        table.write(READS_HEADER)
        for start in range(0, reads, WRITE_BLOCK):
            numbers = range(start, min(reads, start + WRITE_BLOCK))
            bases = np.frombuffer(b"ACGT", np.uint8)[
                rng.integers(0, 4, (len(numbers), READ_LENGTH))].tobytes()
            out.write(b"".join(b">read%d\n%s\n" % (i, bases[k * READ_LENGTH:(k + 1) * READ_LENGTH])
                               for k, i in enumerate(numbers)))
            table.write("".join(f"{i}\tread{i}\t{READ_LENGTH}\t1\t2\n"
                                for i in numbers).encode())
    scores = []
    for first in range(0, 2 * reads, shard_frames):
        path = directory / f"shard_{len(scores):06d}.tsv"
        with open(path, "w") as out:
            out.write(SCORES_HEADER)
            for start in range(first, min(2 * reads, first + shard_frames), WRITE_BLOCK):
                stop = min(2 * reads, first + shard_frames, start + WRITE_BLOCK)
                virus = rng.integers(1, 10**8, stop - start).tolist()
                out.write("".join(
                    f"read{f // 2}_chunk_1{'R2' if f % 2 else 'F1'}\t{f // 2}\t1\t"
                    f"0.{10**8 - v:08d}\t0.{v:08d}\t\n" for f, v in zip(range(start, stop), virus)))
        scores.append(path)
    return fasta, reads_tsv, scores


def tree_size(directory: Path) -> int:
    """Bytes of every file under `directory`, temporary ones included."""
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def measure_step(function: str, args: list, outdir: Path) -> dict:
    """Run the package's `function` (module.name) on `args` in a child process as a workflow
    step runs it; its peak RssAnon, its peak RSS (VmHWM: file pages too), seconds (wall, and
    CPU: what a busy machine inflates less), and
    the peak bytes under `outdir` (sampled every 0.2 s: results and temporary files)."""
    before, disk, done = tree_size(outdir), [0], threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            disk[0] = max(disk[0], tree_size(outdir) - before)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    peak, _, proc = peak_anon([PYTHON, "-c", STEP, str(ROOT / "src"), function,
                               json.dumps(args, default=str)])  # paths as strings
    done.set()
    watcher.join()
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    if facts["status"]:
        raise SystemExit(f"{function} failed with status {facts['status']}:\n{proc.stderr}")
    return {"peak_anon_mb": round(peak / MB, 1), "max_rss_mb": round(facts["max_rss_kb"] / 1024, 1),
            "seconds": round(facts["seconds"], 2), "cpu_seconds": round(facts["cpu_seconds"], 2),
            "peak_disk_bytes": disk[0]}


def after_scores(sample: Path, fasta: Path, reads_tsv: Path, scores: list[Path]) -> dict:
    """The steps from the scores to the pages, on one sample: aggregate, virus_reads and the
    sample's page (its provenance.json written first, with a stand-in model file)."""
    from virnucpro.provenance import write_provenance

    out = sample / "out"
    (out / "plots").mkdir(parents=True)
    model = sample / "model.pth"
    model.write_bytes(b"stand-in")
    write_provenance({"classifier": model}, {"virus_threshold": None}, sample / "provenance.json")
    steps = {
        "aggregate": ("virnucpro.classify.aggregate", [reads_tsv, scores, out],
                      ["prediction_results.txt", "prediction_results_highestscore.csv",
                       "summary.tsv", "counts.json"]),
        "virus_reads": ("virnucpro.results.write_virus_reads",
                        [[fasta], out / "summary.tsv", out / "virus_reads.fa.gz"],
                        ["virus_reads.fa.gz"]),
        "sample_report": ("virnucpro.report.write_sample_report",
                          ["s", out / "counts.json", sample / "provenance.json", [fasta],
                           out / "report.html", {k: out / "plots" / f"{k}.svg"
                                                 for k in ("calls", "scores", "length")},
                           out / "top_reads.tsv", ["virus_reads.fa.gz"]],
                          ["report.html", "top_reads.tsv", "plots"])}
    figures = {}
    for name, (function, args, results) in steps.items():
        figures[name] = measure_step(function, args, out)
        figures[name]["result_bytes"] = sum(tree_size(out / r) if (out / r).is_dir() else
                                            (out / r).stat().st_size for r in results)
    return figures


def bench_aggregate(workdir: Path, small: int, large: int, project: int) -> dict:
    """Aggregation (and the steps after it) at two sample sizes; a projection to `project`."""
    figures = {}
    for reads in (small, large):
        sample = workdir / f"sample-{reads}"
        sample.mkdir()
        figures[reads] = after_scores(sample, *synthetic_sample(sample, reads))
        for step, f in figures[reads].items():
            print(f"{step:>13} {reads:>10,} reads: peak RssAnon {f['peak_anon_mb']:7.1f} MB "
                  f"(peak RSS {f['max_rss_mb']:.0f} MB), "
                  f"{f['seconds']:6.1f} s ({f['cpu_seconds']:.1f} s CPU), "
                  f"results {f['result_bytes'] / MB:,.1f} MB, "
                  f"peak disk (sampled) {f['peak_disk_bytes'] / MB:,.1f} MB")
        shutil.rmtree(sample)
    result = {"reads": figures, "target_growth_mb": 50,
              "target_cpu_seconds_per_read_ratio": LINEAR_TOLERANCE, "steps": {}}
    rows = []
    for step in figures[small]:
        a, b = figures[small][step], figures[large][step]
        growth = b["peak_anon_mb"] - a["peak_anon_mb"]
        per_read_s = (b["cpu_seconds"] / large) / (a["cpu_seconds"] / small)

        def line(key: str, floor: float | None = None) -> float:
            """`key` at `project` reads, on the line through the two samples' figures (a
            slope below `floor` counts as `floor`: memory that does not grow)."""
            slope = (b[key] - a[key]) / (large - small)
            slope = slope if floor is None else max(slope, floor)
            return b[key] + slope * (project - large)
        projected = {"peak_anon_mb": round(line("peak_anon_mb", 0)),
                     "max_rss_mb": round(line("max_rss_mb", 0)),
                     "result_gb": round(line("result_bytes") / 1e9, 2),
                     "peak_disk_gb": round(line("peak_disk_bytes") / 1e9, 2),
                     "cpu_minutes": round(line("cpu_seconds") / 60, 1)}
        linear = per_read_s <= LINEAR_TOLERANCE
        result["steps"][step] = {"growth_mb": round(growth, 1), "time_linear": linear,
                                 "met": growth <= 50 and linear,
                                 "cpu_seconds_per_read_ratio": round(per_read_s, 3),
                                 "projected": projected}
        rows.append((step, projected))
        print(f"{step} growth {small:,} -> {large:,} reads: {growth:+.1f} MB (target <= 50): "
              f"{'met' if growth <= 50 else 'MISSED'}; CPU seconds per read at {large:,} over "
              f"{small:,}: {per_read_s:.2f}x (target <= {LINEAR_TOLERANCE}: "
              f"{'met' if linear else 'MISSED'})")
    result["met"] = all(step["met"] for step in result["steps"].values())
    result["projected_reads"] = project
    result["projection_basis"] = (
        "each figure on the line through the two samples' (memory: not below the large "
        "sample's); time: CPU time (a one-thread step; wall time on an idle machine); random "
        "150-bp reads of one chunk and two frames; peak disk: results and temporary files at "
        "their largest, sampled")
    print(f"\n{project:,}-read sample, projected:")
    print(f"  {'step':<14}{'peak RssAnon':>14}{'peak RSS':>10}{'results':>11}{'peak disk':>11}"
          f"{'CPU time':>10}")
    for step, p in rows:
        print(f"  {step:<14}{p['peak_anon_mb']:>11,} MB{p['max_rss_mb']:>7,} MB"
              f"{p['result_gb']:>8.2f} GB{p['peak_disk_gb']:>8.2f} GB{p['cpu_minutes']:>6.1f} min")
    print()
    return result


# --------------------------------------------------------------------------- report


def bench_report(workdir: Path, small: int, large: int) -> dict:
    """The Snakemake report (`--report report.html`) and the sample's page of a run on `small`
    and on `large` random 150-bp reads (demo models, CPU): bytes per added read."""
    figures = {}
    for reads in (small, large):
        work = workdir / f"run-{reads}"
        work.mkdir()
        fasta = work / "reads.fa"
        random_reads(fasta, reads, description=" simulated")
        start = time.perf_counter()
        outdir = run_workflow(work, fasta, False)
        seconds = time.perf_counter() - start
        run_workflow(work, fasta, False, "--report", str(work / "report.html"))
        figures[reads] = {"snakemake_report_bytes": (work / "report.html").stat().st_size,
                          "sample_page_bytes": (outdir / "s" / "report.html").stat().st_size,
                          "overview_page_bytes": (outdir / "overview.html").stat().st_size,
                          "summary_tsv_bytes": (outdir / "s" / "summary.tsv").stat().st_size,
                          "workflow_seconds": round(seconds)}
        f = figures[reads]
        print(f"report {reads:>7,} reads: Snakemake report {f['snakemake_report_bytes']:,} B, "
              f"sample page {f['sample_page_bytes']:,} B, overview page "
              f"{f['overview_page_bytes']:,} B (summary.tsv {f['summary_tsv_bytes']:,} B; "
              f"workflow {seconds:.0f} s)")
        shutil.rmtree(work)
    result = {"reads": figures, "target_bytes_per_read": 2}
    for key in ("snakemake_report_bytes", "sample_page_bytes", "overview_page_bytes"):
        per_read = (figures[large][key] - figures[small][key]) / (large - small)
        result[key.replace("_bytes", "_bytes_per_added_read")] = round(per_read, 3)
        print(f"report {key.replace('_bytes', '')}: {per_read:+.3f} B per added read "
              f"(target <= 2): {'met' if per_read <= 2 else 'MISSED'}")
    result["met"] = all(result[k] <= 2 for k in result if k.endswith("per_added_read"))
    return result


def run_sections(parser: argparse.ArgumentParser, results_path: Path, chosen: list[str],
                 workdir: Path | None, benches: dict[str, Callable[[Path], dict]]) -> None:
    """Run the chosen sections (all when none is chosen), each in a directory of its own
    under a scratch directory in `workdir`, and save their figures in `results_path`:
    sections measured in this run replace those of an earlier run, the others are kept."""
    unknown = sorted(set(chosen) - set(benches))
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(benches)}")
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for section in chosen or benches:
            here = Path(tmp) / section
            here.mkdir()
            results[section] = benches[section](here)
            shutil.rmtree(here, ignore_errors=True)
    results_path.parent.mkdir(exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {results_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sections = ["embed", "disk", "load", "train", "aggregate", "report"]
    # (argparse checks an empty nargs="*" against choices as one value: checked below)
    parser.add_argument("sections", nargs="*", help=f"of {', '.join(sections)} (default: all)")
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=400_000)
    parser.add_argument("--train-small", type=int, default=50_000)
    parser.add_argument("--train-large", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=20_000, help="reads of the disk run")
    parser.add_argument("--aggregate-small", type=int, default=1_000_000)
    parser.add_argument("--aggregate-large", type=int, default=4_000_000)
    parser.add_argument("--project", type=int, default=20_000_000,
                        help="reads of the projected sample")
    parser.add_argument("--report-small", type=int, default=20_000)
    parser.add_argument("--report-large", type=int, default=60_000)
    parser.add_argument("--baseline", action="store_true",
                        help="load: also the code before (needs ~17 GB of memory)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    run_sections(parser, RESULTS, args.sections, args.workdir, {
        "embed": lambda here: bench_embed(here, args.small, args.large),
        "disk": lambda here: bench_disk(here, args.reads),
        "load": lambda here: bench_load(here, args.baseline),
        "train": lambda here: bench_train(here, args.train_small, args.train_large),
        "aggregate": lambda here: bench_aggregate(here, args.aggregate_small,
                                                  args.aggregate_large, args.project),
        "report": lambda here: bench_report(here, args.report_small, args.report_large)})


if __name__ == "__main__":
    main()
