"""The new outputs and the report end to end through Snakemake: a single and a paired sample
(the bundled demo reads) with the demo models; and the same demo run by a user's workflow that
uses this one as a module (README "Deploying as a module")."""

import gzip
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from workflow_helpers import (DEMO_MODELS, ROOT, assert_same_outputs, job_counts, snakemake,
                              write_config)

pytestmark = pytest.mark.slow
PAIRED = [ROOT / "resources" / "demo_pe_R1.fq", ROOT / "resources" / "demo_pe_R2.fq"]
SINGLE = ROOT / "resources" / "demo.fa"
# The demo as these tests run it, but for where its reads are.
SETTINGS = dict(outdir="out", shard_size=1000, models=DEMO_MODELS, embed={"device": "cpu"})
# Per sample, every result that does not carry the date of its run (the pages and
# provenance.json do); the virus reads files are compared decompressed.
SAMPLE_RESULTS = ("prediction_results.txt", "prediction_results_highestscore.csv", "summary.tsv",
                  "pairs.tsv", "top_reads.tsv", "counts.json", "virus_reads.fa.gz",
                  "virus_R1.fq.gz", "virus_R2.fq.gz",
                  "plots/calls.svg", "plots/scores.svg", "plots/length_vs_score.svg")


def results(out: Path) -> dict[str, bytes]:
    """A run's results (SAMPLE_RESULTS of each sample, samples_summary.tsv), by path in `out`."""
    found = {"samples_summary.tsv": (out / "samples_summary.tsv").read_bytes()}
    for sample in ("single", "pe"):
        for name in SAMPLE_RESULTS:
            path = out / sample / name
            if path.exists():
                data = path.read_bytes()
                found[f"{sample}/{name}"] = gzip.decompress(data) if name.endswith(".gz") else data
    return found


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo run from this repository's Snakefile, and its results as they were before a
    test changed any (the report test reruns it with another threshold)."""
    work = tmp_path_factory.mktemp("demo")
    config = write_config(work / "c.yaml", **SETTINGS,
                          samples={"single": str(SINGLE), "pe": [str(p) for p in PAIRED]})
    proc = snakemake(work, "--configfile", config)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return work, config, results(work / "out")


def fasta_records(path: Path) -> list[tuple[str, str]]:
    """(header line without '>', sequence with its lines joined), as in the file."""
    records = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            records.append((line[1:], ""))
        elif line.strip():
            records[-1] = (records[-1][0], records[-1][1] + line.strip())
    return records


def fastq_records(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    return [(lines[i][1:], lines[i + 1]) for i in range(0, len(lines), 4)]


def table(path: Path) -> list[dict[str, str]]:
    header, *rows = [line.split("\t") for line in path.read_text().splitlines()]
    return [dict(zip(header, row)) for row in rows]


def call_counts(rows: list[dict[str, str]]) -> dict[str, str]:
    calls = [row["call"] for row in rows]
    virus, non = calls.count("virus"), calls.count("non-virus")
    return {"virus": str(virus), "non_virus": str(non),
            "no_coding_frame": str(calls.count("no_coding_frame")),
            "percent_virus": f"{100 * virus / (virus + non):.2f}"}


def virus_pairs_are_the_input_records(out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """virus_R1.fq.gz and virus_R2.fq.gz of the paired sample 'pe' hold the records of R1
    and R2 (byte for byte) of the pairs that pairs.tsv calls virus; returns the pair calls
    and the mates' calls (summary.tsv)."""
    pair_calls = [row["call"] for row in table(out / "pe" / "pairs.tsv")]
    mates = table(out / "pe" / "summary.tsv")
    for mate, path in enumerate(PAIRED, 1):
        lines = path.read_bytes().splitlines(keepends=True)
        records = [b"".join(lines[i:i + 4]) for i in range(0, len(lines), 4)]
        assert len(records) == len(pair_calls)
        assert gzip.decompress((out / "pe" / f"virus_R{mate}.fq.gz").read_bytes()) == \
            b"".join(r for r, c in zip(records, pair_calls) if c == "virus")
    return pair_calls, [(a["call"], b["call"]) for a, b in zip(mates[::2], mates[1::2])]


def test_virus_reads_summaries_pairs_pages_report_and_the_threshold(demo_run):
    tmp_path, config, _ = demo_run
    out = tmp_path / "out"
    inputs = {"single": fasta_records(SINGLE),
              "pe": [mate for pair in zip(*map(fastq_records, PAIRED)) for mate in pair]}
    summaries = {sample: table(out / sample / "summary.tsv") for sample in inputs}

    # virus_reads.fa.gz (FASTA): exactly the records called virus, original headers, input
    # order.
    calls = [row["call"] for row in summaries["single"]]
    assert len(calls) == len(inputs["single"]) and "virus" in calls and set(calls) != {"virus"}
    expected = "".join(f">{h}\n{s}\n" for (h, s), c in zip(inputs["single"], calls)
                       if c == "virus")
    assert gzip.decompress((out / "single" / "virus_reads.fa.gz").read_bytes()).decode() == \
        expected
    # Paired FASTQ: virus_R1.fq.gz and virus_R2.fq.gz hold both mates of every pair called
    # virus (here every pair, one with a mate without a frame), each record byte for byte as in
    # its file, in input order.
    pair_calls, mate_calls = virus_pairs_are_the_input_records(out)
    assert set(pair_calls) == {"virus"} and ("virus", "no_coding_frame") in mate_calls
    assert sorted(p.relative_to(out).as_posix() for sample in inputs
                  for p in (out / sample).glob("virus*")) == \
        ["pe/virus_R1.fq.gz", "pe/virus_R2.fq.gz", "single/virus_reads.fa.gz"]

    # samples_summary.tsv agrees with every sample's summary.tsv (and pairs.tsv).
    overview = {row["sample"]: row for row in table(out / "samples_summary.tsv")}
    assert list(overview) == ["pe", "single"]
    for sample, rows in summaries.items():
        assert overview[sample]["reads"] == str(len(rows))
        assert overview[sample]["frames"] == str(sum(int(r["frames"]) for r in rows))
        assert {k: overview[sample][k] for k in call_counts(rows)} == call_counts(rows)
    for mate in (1, 2):
        mates = summaries["pe"][mate - 1::2]
        assert all(r["read_id"].endswith(f"/{mate}") for r in mates)
        assert {k: overview["pe"][f"mate{mate}_{k}"] for k in call_counts(mates)} == \
            call_counts(mates)
    pairs = table(out / "pe" / "pairs.tsv")
    assert [p["pair_id"] for p in pairs] == [h.split()[0] for h, _ in fastq_records(PAIRED[0])]
    assert [(p["mate1_call"], p["mate2_call"]) for p in pairs] == \
        [(a["call"], b["call"]) for a, b in zip(summaries["pe"][::2], summaries["pe"][1::2])]
    assert {k: overview["pe"][f"pairs_{k}"] for k in call_counts(pairs)} == call_counts(pairs)
    assert not (out / "single" / "pairs.tsv").exists() and overview["single"]["pairs"] == "NA"

    # The pages: banner, provenance with every model file's SHA-256, the plots. (Hidden
    # files of the model directory are not the model's: Snakemake's .snakemake_timestamp.)
    dnabert = [p for p in (tmp_path / DEMO_MODELS["dnabert"]).iterdir()
               if not p.name.startswith(".")]
    assert len(dnabert) == 5
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest()
              for p in [tmp_path / DEMO_MODELS["esm"], tmp_path / DEMO_MODELS["classifier"],
                        *dnabert]]
    pages = [out / "overview.html", out / "single" / "report.html", out / "pe" / "report.html"]
    for page in pages:
        text = page.read_text()
        assert "Demo models: these results mean nothing." in text
        assert all(digest in text for digest in hashes), page
        assert "VirNucPro version" in text and "best P(virus) of the read" in text
    for sample in inputs:
        page = (out / sample / "report.html").read_text()
        assert page.count("<svg") == 3
        for name in ("calls", "scores", "length_vs_score"):
            assert (out / sample / "plots" / f"{name}.svg").read_text() in page
        assert "read length (bp)" in page and "threshold 0.5 (original rule)" in page
    assert "mate 2 (R2)" in (out / "pe" / "report.html").read_text()
    # What ran, from the embedding jobs' records: the device and the precision that `auto`
    # resolved to (on a CPU, float32), with the shards each embedded.
    for page, shards in ((out / "single" / "report.html", 1), (out / "pe" / "report.html", 1),
                         (out / "overview.html", 2)):
        text = page.read_text()
        assert "<h3>Embedding jobs</h3>" in text and "not recorded" not in text
        assert f'<tr><td>cpu</td><td>float32</td><td class="num">{shards}</td>' in text, page
        assert "<tr><td>embed.dtype</td><td>auto: float32</td></tr>" in text
        assert "<tr><td>embed.device</td><td>cpu</td></tr>" in text
    assert (out / "overview.html").read_text().count("<svg") == 2

    # snakemake --report: every page, plot and table of fixed size is an entry, and nothing
    # whose size grows with the reads (per-read tables stay beside it, named in the captions).
    report = snakemake(tmp_path, "--configfile", config, "--report", "report.zip")
    assert report.returncode == 0, report.stdout[-3000:]
    archive = zipfile.ZipFile(tmp_path / "report.zip")
    listed = sorted(Path(n).name for n in archive.namelist() if "/raw/" in n)
    per_sample = ["report.html", "top_reads.tsv", "calls.svg", "scores.svg", "length_vs_score.svg"]
    assert listed == sorted(["overview.html", "samples_summary.tsv", "samples_calls.svg",
                             "samples_scores.svg", *per_sample, *per_sample])
    index = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("report.html")
                 and "/raw/" not in n)
    for sample in inputs:
        # The page's caption names where its per-read tables are (a literal of its own).
        assert f">out/{sample}/<" in index
    for sample, files in {"single": ["summary.tsv", "virus_reads.fa.gz"],
                          "pe": ["summary.tsv", "pairs.tsv", "virus_R1.fq.gz",
                                 "virus_R2.fq.gz"]}.items():
        page = (out / sample / "report.html").read_text()
        for name in [*files, "prediction_results.txt", "prediction_results_highestscore.csv"]:
            assert f'<a href="{name}"><code>{name}</code></a>' in page and \
                f"<code>{sample}/{name}</code>" in page  # a link that works beside it, a path
    assert "pairs.tsv" not in (out / "single" / "report.html").read_text()
    # The virus reads are not in the report; the captions of the sample pages name them.
    assert not any("virus_" in name for name in archive.namelist())
    html = archive.read("report/report.html").decode()
    assert "Both mates of every pair called virus, each record as in the input, are in" in html
    assert "The reads called virus, each record as in the input, are in" in html
    for name in ("virus_R1.fq.gz</tt> (R1) and", "virus_R2.fq.gz</tt> (R2), in the",
                 "virus_reads.fa.gz</tt>, in the"):
        assert f'<tt class=\\"docutils literal\\">{name}' in html, name
    assert "System Message" not in html  # every caption is valid reStructuredText

    # Only virus_threshold changes: calls change, the original's tables do not, nothing is
    # embedded again.
    bests = sorted(float(r["best_virus_score"]) for r in summaries["single"]
                   if r["best_virus_score"] != "NA")
    threshold = round(bests[len(bests) // 2], 6)
    before = {s: {n: (out / s / n).read_bytes() for n in ("prediction_results.txt",
                                                          "prediction_results_highestscore.csv")}
              for s in inputs}
    again = snakemake(tmp_path, "--configfile", config, "--config", f"virus_threshold={threshold}")
    assert again.returncode == 0, again.stdout[-3000:]
    jobs = job_counts(again.stdout)
    assert "embed_classify" not in jobs and "prepare" not in jobs
    assert jobs["aggregate"] == 1 and jobs["aggregate_pairs"] == 1 and jobs["provenance"] == 1
    for sample in inputs:
        for name, content in before[sample].items():
            assert (out / sample / name).read_bytes() == content, name
    rows = table(out / "single" / "summary.tsv")
    assert [r["call"] for r in rows] != [r["call"] for r in summaries["single"]]
    assert all(r["call"] == ("virus" if float(r["best_virus_score"]) >= threshold else "non-virus")
               for r in rows if r["chunks"] == "1" and r["frames"] != "0")
    assert [r["best_virus_score"] for r in rows] == \
        [r["best_virus_score"] for r in summaries["single"]]
    called = sum(r["call"] == "virus" for r in rows)
    assert gzip.decompress(
        (out / "single" / "virus_reads.fa.gz").read_bytes()).count(b">") == called
    assert table(out / "samples_summary.tsv")[1]["virus"] == str(called)
    assert jobs["virus_reads"] == 1 and jobs["virus_pairs_fastq"] == 1
    pair_calls, mate_calls = virus_pairs_are_the_input_records(out)
    assert set(pair_calls) == {"virus", "non-virus"}
    # Pairs called virus with a mate called non-virus: both mates are there.
    assert any(c == "virus" and "non-virus" in m for c, m in zip(pair_calls, mate_calls))
    assert f"threshold {threshold:g} (virus_threshold)" in \
        (out / "single" / "report.html").read_text()


# The user's workflow/Snakefile of README "Deploying as a module", for a local clone.
MODULE_SNAKEFILE = '''configfile: "config/config.yaml"


module virnucpro:
    snakefile:
        "{clone}/workflow/Snakefile"
    config:
        config


use rule * from virnucpro


onstart:
    virnucpro.onstart()


onerror:
    virnucpro.onerror()
'''


def test_deployed_as_a_module_it_runs_in_the_users_directory_alone(demo_run, tmp_path):
    # A clone of this checkout (its files as they are, committed), and a user's directory
    # with only config/ and workflow/Snakefile; the package is the one installed here.
    clone = tmp_path / "clone"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run([*git, *command], cwd=clone, check=True)
    user = tmp_path / "user"
    (user / "workflow").mkdir(parents=True)
    (user / "config").mkdir()
    write_config(user / "config" / "config.yaml", **SETTINGS,
                 samples={"single": str(clone / "resources" / "demo.fa"),
                          "pe": [str(clone / "resources" / p.name) for p in PAIRED]})
    (user / "workflow" / "Snakefile").write_text(MODULE_SNAKEFILE.format(clone=clone))

    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--resources",
                           "gpu=1", "--workflow-profile", clone / "workflow/profiles/default"],
                          cwd=user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    # Everything under the user's directory: the results, the same as the run from the
    # repository; the demo models, which rule demo_models made there.
    assert_same_outputs(results(user / "out"), demo_run[2])
    assert (user / "resources" / "demo-models" / "models.json").is_file()
    # The module's onstart handler ran (the user's Snakefile calls it): it holds the output
    # directory's lock, one run per output directory.
    assert (user / "out" / ".virnucpro.lock").is_file()
    # Nothing was written into the clone, not even an ignored file.
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=clone,
                            capture_output=True, text=True, check=True)
    assert status.stdout == ""
