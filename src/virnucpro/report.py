"""The report pages: one self-contained HTML page per sample and an overview across samples
(plots inline as SVG, no external files), each with the run's provenance and, when demo models
were used, a banner saying the results mean nothing. Each plot is also written as an SVG file
and the top-scoring reads as a TSV, for the Snakemake report.

Inputs: a sample's counts.json (virnucpro.calls.SampleTally) and the run's provenance.json
(virnucpro.provenance).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from virnucpro.atomic import atomic_open
from virnucpro.calls import CALLS, NO_CODING_FRAME, NON_VIRUS, VIRUS, describe_rule, percent_virus
from virnucpro.classify import SUMMARY_COLUMNS, merge_runs
from virnucpro.plots import (LABELS, calls_plot, length_score_plot, samples_calls_plot,
                             samples_scores_plot, score_histogram_plot)
from virnucpro.prepare import saved_share
from virnucpro.provenance import MODEL_ROLES
from virnucpro.results import SAMPLES_SUMMARY_COLUMNS, samples_summary_rows

TOP_READS_COLUMNS = ("rank", *SUMMARY_COLUMNS)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c2833;
  max-width:1120px;margin:0 auto;padding:0 24px 48px;line-height:1.45}
h1{font-size:1.7em;margin:.6em 0 .1em} h2{font-size:1.25em;margin-top:1.8em;
  border-bottom:2px solid #d5d8dc;padding-bottom:.2em}
.sub{color:#566573;margin:0 0 1em}
.banner{background:#fdebd0;border:2px solid #e67e22;border-radius:6px;padding:12px 16px;
  margin:16px 0;font-size:1.05em}
.banner strong{color:#a04000}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;
  margin:1em 0}
.tile{border:1px solid #d5d8dc;border-radius:6px;padding:10px 14px;background:#fbfcfc}
.tile .value{font-size:1.6em;font-weight:600} .tile .label{color:#566573;font-size:.9em}
.tile.virus .value{color:#c0392b}
table{border-collapse:collapse;margin:.6em 0;font-size:.93em}
th,td{padding:4px 10px;border-bottom:1px solid #e5e8e8;text-align:left;vertical-align:top}
th{background:#f4f6f6} td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fbfcfc}
code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em}
.hash{white-space:nowrap;font-size:.8em}
.tag{display:inline-block;background:#e67e22;color:white;border-radius:3px;padding:0 6px;
  font-size:.8em;margin-left:6px}
figure{margin:1em 0} figure svg{max-width:100%;height:auto}
figcaption{color:#566573;font-size:.9em;max-width:800px}
.note{color:#566573;font-size:.92em;max-width:850px}
dl.terms{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;max-width:900px;
  font-size:.92em} dl.terms dt{font-weight:600} dl.terms dd{margin:0;color:#34495e}
"""

DEMO_BANNER = ("<strong>Demo models: these results mean nothing.</strong> This run used the "
               "small random-weight demo models ({models}), which only exercise the workflow. "
               "Scores and calls are random. For real results set <code>models.esm</code>, "
               "<code>models.dnabert</code> and <code>models.classifier</code> to the published "
               "ESM-2 3B, DNABERT-S and VirNucPro models.")

GLOSSARY = {
    "chunk": "each read is cut into overlapping pieces of the chunk size (300 or 500 bp); a "
             "read shorter than that is one chunk",
    "stop-free frame": "one of a chunk's six reading frames (3 forward, 3 reverse) whose "
                       "translation has no stop codon; only these are scored",
    "P(virus)": "the classifier's probability that a frame is viral; P(others) = 1 - P(virus)",
    "best P(virus)": "the highest P(virus) among a read's stop-free frames",
    "read score": "the mean, over the read's chunks with a stop-free frame, of each chunk's "
                  "best P(virus)",
    "no coding frame": "the read has no stop-free frame (too short, or stop codons in all six "
                       "frames), so it cannot be classified; such reads are left out of "
                       "'% virus of classified reads'",
}


# --------------------------------------------------------------------------- building blocks

def _e(value: Any) -> str:
    return html.escape(str(value))


def _count(value: int) -> str:
    return f"{value:,}"


def _percent(value: float | None) -> str:
    return "NA" if value is None else f"{value:.1f}%"


def _share(part: int, whole: int) -> str:
    return _percent(100 * part / whole if whole else None)


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]],
           numeric: Sequence[int] = (), escape: bool = True) -> str:
    """An HTML table (no header row when `header` is None); columns at the `numeric`
    positions are right-aligned. Cells are escaped unless `escape` is false (cells that hold
    markup made here)."""
    def cell(tag: str, i: int, text: str) -> str:
        klass = ' class="num"' if i in numeric else ""
        return f"<{tag}{klass}>{_e(text) if escape or tag == 'th' else text}</{tag}>"
    head = "" if header is None else \
        "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr></thead>"
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _tiles(tiles: Sequence[tuple[str, str, str]]) -> str:
    """Key figures: (value, label, extra CSS class)."""
    return '<div class="tiles">' + "".join(
        f'<div class="tile {klass}"><div class="value">{_e(value)}</div>'
        f'<div class="label">{_e(label)}</div></div>' for value, label, klass in tiles) + "</div>"


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _banner(provenance: Mapping[str, Any]) -> str:
    if not provenance["demo_models"]:
        return ""
    demo = [m["path"] for m in provenance["models"].values() if m["demo"]]
    return f'<div class="banner">{DEMO_BANNER.format(models=_e(", ".join(demo)))}</div>'


def _date(provenance: Mapping[str, Any]) -> str:
    """provenance.json's ISO date (UTC) as people write it: 2025-06-01 14:03 UTC."""
    return provenance["date"][:16].replace("T", " ") + " UTC"


def _page(title: str, subtitle: str, provenance: Mapping[str, Any], body: str) -> str:
    """A whole page: the demo banner (when demo models were used) on top of every page."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f"{_banner(provenance)}<h1>{_e(title)}</h1><p class=\"sub\">{_e(subtitle)}</p>"
            f"{body}</body></html>\n")


def _rules(threshold: float | None) -> str:
    """How calls are made, in words (virnucpro.calls)."""
    return ('<h2>How reads are called</h2><ul class="note">'
            f"<li>Chunks: {_e(describe_rule(threshold))}.</li>"
            "<li>Reads: <b>virus</b> when at least half of its chunks with a stop-free frame are "
            "virus chunks, otherwise <b>non-virus</b>; <b>no coding frame</b> when it has no "
            "stop-free frame. A read of one chunk is called as its chunk.</li>"
            "<li>Pairs (paired reads): the same over both mates' chunks together; <b>no coding "
            "frame</b> when neither mate has a stop-free frame. With one chunk per mate, a "
            "pair is virus when either mate is.</li></ul><h3>Terms</h3>"
            '<dl class="terms">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>"
                                           for k, v in GLOSSARY.items()) + "</dl>")


def _provenance(provenance: Mapping[str, Any], inputs: Mapping[str, Sequence[str]],
                runs: Sequence[Mapping[str, Any]], counts: Sequence[Mapping[str, Any]]) -> str:
    """Version, date, inputs, every model file with its SHA-256, what computed the embeddings
    (`runs`: classify.embedding_runs) and how many of the frames of `counts` (one sample's
    counts.json, or every sample's) that was, and the settings, `auto` with what it resolved
    to."""
    run = _table(None, [("VirNucPro version", provenance["virnucpro_version"]),
                        ("Date of the run", _date(provenance))]
                 + [(f"Reads of {name}" if len(inputs) > 1 else "Reads", " + ".join(files))
                    for name, files in inputs.items()])
    resolved = {"embed.device": [_device(r) for r in runs if r["device"]],
                "embed.dtype": [r["precision"] for r in runs if r["precision"]]}
    settings = [(key, "null (original rule)" if value is None else
                 json.dumps(value) if isinstance(value, bool) else
                 f"auto: {', '.join(dict.fromkeys(resolved[key]))}"
                 if value == "auto" and resolved.get(key) else str(value))
                for key, value in provenance["settings"].items()]
    return ("<h2>Provenance</h2>" + run + "<h3>Models</h3>" + _models_table(provenance)
            + "<h3>Embedding jobs</h3>" + _runs_table(runs) + _distinct_note(counts)
            + "<h3>Settings</h3>" + _table(("setting", "value"), settings))


def _distinct_note(counts: Sequence[Mapping[str, Any]]) -> str:
    """How many of the frames were embedded: each distinct chunk once (`dedup`)."""
    frames = sum(c["frames"] for c in counts)
    # counts.json of an older virnucpro, which embedded every frame, has no distinct_frames.
    distinct = sum(c.get("distinct_frames", c["frames"]) for c in counts)
    saved = f"{100 * saved_share(frames, distinct):.1f}%"
    return (f'<p class="note">Distinct frames: {_count(distinct)} of the {_count(frames)} '
            f"stop-free frames were embedded; the other {_count(frames - distinct)} ({saved}) "
            "are frames of chunks whose sequence came before in the sample, and take the scores "
            "of the first chunk of that sequence (setting <code>dedup</code>), so the results "
            "are what they would be had every frame been embedded.</p>")


def _device(run: Mapping[str, Any]) -> str:
    """A device as the pages name it: cpu, or cuda (the GPU's model)."""
    return f"{run['device']} ({run['gpu']})" if run["gpu"] else run["device"]


def _runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One row per device, GPU model and precision that embedded shards (from the embedding
    jobs' records)."""
    if not runs:
        return '<p class="note">Not recorded (results of an older virnucpro).</p>'
    rows = [(_device(r) if r["device"] else "not recorded (an older virnucpro)",
             r["precision"] or "not recorded", _count(r["shards"]), _count(r["frames"]),
             _count(r["rescored_in_float32"])) for r in runs]
    return _table(("device", "precision", "shards", "frames", "rescored in float32"), rows,
                  numeric=(2, 3, 4)) + \
        '<p class="note">Frames rescored in float32: with float16, the frames near a ' \
        "decision boundary are embedded again in float32, so their calls are float32's.</p>"


def _models_table(provenance: Mapping[str, Any]) -> str:
    """One row per model file with its SHA-256; a model directory (DNABERT-S) spans the rows
    of its files, which are named within it."""
    rows = []
    for role, model in provenance["models"].items():
        tag = '<span class="tag">demo: random weights</span>' if model["demo"] else ""
        files = model["files"]
        directory = len(files) > 1 or Path(model["path"]).name not in files
        where = f'<br><code>{_e(model["path"])}/</code>' if directory else ""
        for i, (name, digest) in enumerate(files.items()):
            first = (f'<td rowspan="{len(files)}">{_e(MODEL_ROLES.get(role, role))}{tag}'
                     f"{where}</td>" if i == 0 else "")
            rows.append(f'<tr>{first}<td><code>{_e(name if directory else model["path"])}'
                        f'</code></td><td class="hash">{_e(digest)}</td></tr>')
    return ("<table><thead><tr><th>model</th><th>file</th><th>SHA-256</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _write_plots(plots: Mapping[str, str | os.PathLike], svgs: Mapping[str, str]) -> None:
    for name, svg in svgs.items():
        with atomic_open(plots[name], "w") as handle:
            handle.write(svg)


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- the sample page

def _groups(counts: Mapping[str, Any]) -> dict[str, Mapping[str, int]]:
    """The sample's groups of calls: all reads, and for paired reads each mate and the pairs."""
    if not counts["paired"]:
        return {"reads": counts}
    return {"all reads (both mates)": counts, "mate 1 (R1)": counts["mates"][0],
            "mate 2 (R2)": counts["mates"][1], "pairs": counts["pairs"]}


def _calls_table(groups: Mapping[str, Mapping[str, Any]]) -> str:
    """Rows: calls; columns: groups; cells: count (share of the group)."""
    def total(counts):
        return counts.get("reads", counts.get("pairs"))
    rows = [[LABELS[call], *(f"{_count(c[call])} ({_share(c[call], total(c))})"
                             for c in groups.values())] for call in CALLS]
    rows.append(["% virus of classified", *(_percent(percent_virus(c)) for c in groups.values())])
    rows.append(["total", *(_count(total(c)) for c in groups.values())])
    return _table(("call", *groups), rows, numeric=range(1, len(groups) + 1))


def _top_reads_table(top: Sequence[Mapping[str, str]]) -> str:
    header = ("rank", "read", "length (bp)", "chunks", "stop-free frames", "best P(virus)",
              "read score", "virus chunks", "call")
    rows = [(str(rank), r["read_id"], _count(int(r["length"])), r["chunks"], r["frames"],
             f"{float(r['best_virus_score']):.4f}", f"{float(r['read_score']):.4f}",
             r["virus_chunks"], LABELS[r["call"]]) for rank, r in enumerate(top, 1)]
    return _table(header, rows, numeric=(0, 2, 3, 4, 5, 6, 7))


def _line_caveat(threshold: float | None) -> str:
    """Why a read's colour can differ from its side of the drawn threshold."""
    caveat = ("A read of several chunks is called by the majority of its chunks, so its "
              "colour can differ from its side of the line.")
    if threshold is None:
        caveat = ("The original rule compares a chunk's best P(virus) with its best P(others), "
                  "so 0.5 is only the lowest score a virus chunk can have: a read above it is "
                  "non-virus when another of its frames has a higher P(others). " + caveat)
    return caveat


def _result_files(sample: str, counts: Mapping[str, Any], virus_reads: Sequence[str]) -> str:
    """Where the sample's tables with a row per read (pair, chunk, frame) are. They are not on
    this page or in the Snakemake report, whose size would then grow with the reads: they lie
    beside this page, so the links work where the page lies, and each is named by its path
    in the output directory, which holds wherever the page is read (in the Snakemake report,
    say)."""
    unit = "mate" if counts["paired"] else "read"
    files = [("summary.tsv", f"one row per {unit} ({_count(counts['reads'])}): its scores and "
              "call")]
    if counts["paired"]:
        files.append(("pairs.tsv", f"one row per pair ({_count(counts['pairs']['pairs'])}): "
                      "both mates' calls and the pair's"))
    if counts["paired"]:
        files += [(name, f"mate {mate} of the {_count(counts['pairs'][VIRUS])} pairs called "
                   "virus, records as in the input") for mate, name in enumerate(virus_reads, 1)]
    else:
        files += [(virus_reads[0], f"the {_count(counts[VIRUS])} reads called virus, records as "
                   "in the input")]
    files += [("prediction_results.txt", f"the original's per-frame table "
               f"({_count(counts['frames'])} stop-free frames)"),
              ("prediction_results_highestscore.csv", "the original's per-chunk table")]
    rows = [(f'<a href="{_e(name)}"><code>{_e(name)}</code></a>',
             f"<code>{_e(sample)}/{_e(name)}</code>", _e(holds)) for name, holds in files]
    return ("<h2>Result files</h2>"
            + _table(("file", "in the output directory", "holds"), rows, escape=False)
            + '<p class="note">These tables grow with the reads, so they are kept out of this '
              "page and of the Snakemake report: they lie beside this page, in the sample's "
              "directory of the output directory.</p>")


def write_sample_report(sample: str, counts_json: str | os.PathLike,
                        provenance_json: str | os.PathLike, reads: Sequence[str],
                        out: str | os.PathLike, plots: Mapping[str, str | os.PathLike],
                        top_reads: str | os.PathLike, virus_reads: Sequence[str]) -> None:
    """The sample's page `out`, its plots (`plots`: calls, scores, length -> SVG paths) and
    its top-scoring reads (`top_reads`, TSV: TOP_READS_COLUMNS); the page names the files
    beside it, among them `virus_reads` (the names of the sample's virus reads files)."""
    counts, provenance = _read_json(counts_json), _read_json(provenance_json)
    threshold = counts["virus_threshold"]
    groups = _groups(counts)
    lengths = counts["length_and_score"]
    plotted = dict(list(groups.items())[1:]) if counts["paired"] else groups  # mates, pairs
    svgs = {"calls": calls_plot(plotted),
            "scores": score_histogram_plot(counts["best_virus_score_histogram"], threshold),
            "length": length_score_plot(lengths["sample"], lengths["scored_reads"], threshold)}
    _write_plots(plots, svgs)
    top = counts["top_reads"]
    with atomic_open(top_reads, "w") as handle:
        handle.write("\t".join(TOP_READS_COLUMNS) + "\n")
        handle.writelines("\t".join([str(rank), *(r[c] for c in SUMMARY_COLUMNS)]) + "\n"
                          for rank, r in enumerate(top, 1))
    unit = (f"{_count(counts['pairs']['pairs'])} read pairs ({_count(counts['reads'])} reads)"
            if counts["paired"] else f"{_count(counts['reads'])} reads")
    tiles = [(_count(counts["reads"]), "reads" + (" (mates)" if counts["paired"] else ""), ""),
             (_percent(percent_virus(counts)), "virus, of classified reads", "virus"),
             (_count(counts[VIRUS]), "reads called virus", "virus"),
             (_count(counts[NON_VIRUS]), "reads called non-virus", ""),
             (_count(counts[NO_CODING_FRAME]),
              f"no coding frame ({_share(counts[NO_CODING_FRAME], counts['reads'])} of reads)", "")]
    if counts["paired"]:
        tiles.insert(1, (_percent(percent_virus(counts["pairs"])), "virus, of classified pairs",
                         "virus"))
    body = (_tiles(tiles) + "<h2>Calls</h2>" + _calls_table(groups)
            + _figure(svgs["calls"], "Number of reads per call, and for paired reads of each "
                      "mate and of the pairs; the percentage is of the group's reads (or pairs).")
            + "<h2>Scores</h2>"
            + _figure(svgs["scores"], "Best P(virus) of every read with a stop-free frame, in "
                      "bins of 0.02, coloured by the read's call; the dashed line is the "
                      f"decision threshold. {_line_caveat(threshold)}")
            + _figure(svgs["length"], "Each dot is a read with a stop-free frame; reads without "
                      "one are not shown.")
            + f"<h2>Top {len(top)} reads by best P(virus)</h2>"
            + (_top_reads_table(top) if top else "<p>No read has a stop-free frame.</p>")
            + _result_files(sample, counts, virus_reads) + _rules(threshold)
            + _provenance(provenance, {sample: list(reads)}, counts.get("embedding", []),
                          [counts]))
    page = _page(f"VirNucPro: sample {sample}",
                 f"{unit}. Run of {_date(provenance)}, VirNucPro "
                 f"{provenance['virnucpro_version']}.", provenance, body)
    with atomic_open(out, "w") as handle:
        handle.write(page)


# --------------------------------------------------------------------------- the overview

def write_overview(counts_files: Mapping[str, str | os.PathLike],
                   reads: Mapping[str, Sequence[str]], provenance_json: str | os.PathLike,
                   out: str | os.PathLike, plots: Mapping[str, str | os.PathLike]) -> None:
    """The run's overview page `out` (in the outdir, beside the sample directories: it links
    to their pages) and its plots (`plots`: calls, scores -> SVG paths)."""
    counts = {sample: _read_json(path) for sample, path in counts_files.items()}
    provenance = _read_json(provenance_json)
    threshold = provenance["settings"].get("virus_threshold")
    svgs = {"calls": samples_calls_plot(counts),
            "scores": samples_scores_plot({s: c["best_virus_score_histogram"]
                                           for s, c in counts.items()}, threshold)}
    _write_plots(plots, svgs)
    column = {name: i for i, name in enumerate(SAMPLES_SUMMARY_COLUMNS)}
    shown = ("reads", "virus", "non_virus", "no_coding_frame", "percent_virus", "pairs",
             "pairs_virus", "pairs_percent_virus")
    rows = []
    for row in samples_summary_rows(counts):
        link = f'<a href="{_e(row[0])}/report.html">{_e(row[0])}</a>'
        cells = [row[column[c]] for c in shown]
        rows.append([link, row[1], *(c if c == "NA" else (f"{float(c):.1f}%" if "percent" in n
                                                           else _count(int(c)))
                                     for n, c in zip(shown, cells))])
    header = ("sample", "layout", "reads", "virus", "non-virus", "no coding frame",
              "% virus of classified", "pairs", "pairs virus", "% pairs virus of classified")
    total = sum(c["reads"] for c in counts.values())
    virus = sum(c[VIRUS] for c in counts.values())
    classified = sum(c[VIRUS] + c[NON_VIRUS] for c in counts.values())
    tiles = [(_count(len(counts)), "samples", ""), (_count(total), "reads", ""),
             (_share(virus, classified), "virus, of all classified reads", "virus")]
    body = (_tiles(tiles) + "<h2>Samples</h2>"
            + _table(header, rows, numeric=range(2, len(header)), escape=False)
            + '<p class="note">Reads of paired samples are counted per mate. Every count, '
              "also per mate: <code>samples_summary.tsv</code>. A sample's name links to its page "
              "(in the Snakemake report: Samples, then the sample, then report page).</p>"
            + _figure(svgs["calls"], "Share of each sample's reads per call.")
            + _figure(svgs["scores"], "Distribution of the best P(virus) of each sample's reads "
                      "with a stop-free frame (percent of those reads per bin of 0.02); the "
                      "dashed line is the decision threshold.")
            + _rules(threshold)
            + _provenance(provenance, reads,
                          merge_runs(run for c in counts.values()
                                     for run in c.get("embedding", [])), list(counts.values())))
    page = _page("VirNucPro: overview", f"{len(counts)} samples. Run of {_date(provenance)}, "
                 f"VirNucPro {provenance['virnucpro_version']}.", provenance, body)
    with atomic_open(out, "w") as handle:
        handle.write(page)
