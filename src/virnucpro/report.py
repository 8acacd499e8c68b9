"""A self-contained HTML page per sample for the Snakemake report: counts, the
distribution of per-read best virus scores, and the settings of the run."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from virnucpro.atomic import atomic_open

_BAR_WIDTH, _HEIGHT = 24, 160


def _histogram_svg(counts: list[int]) -> str:
    top = max(counts) or 1
    bars = []
    for i, n in enumerate(counts):
        h = round(_HEIGHT * n / top)
        bars.append(f'<rect x="{i * _BAR_WIDTH}" y="{_HEIGHT - h}" width="{_BAR_WIDTH - 2}" '
                    f'height="{h}" fill="#4a78b5"><title>{i / len(counts):.2f}-'
                    f'{(i + 1) / len(counts):.2f}: {n}</title></rect>')
    width = _BAR_WIDTH * len(counts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_HEIGHT + 20}">'
            + "".join(bars) + f'<text x="0" y="{_HEIGHT + 15}" font-size="11">0</text>'
            f'<text x="{width - 10}" y="{_HEIGHT + 15}" font-size="11">1</text></svg>')


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows.items())
    return f"<table>{cells}</table>"


def write_sample_report(sample: str, counts_json: str | os.PathLike, settings: dict[str, Any],
                        out: str | os.PathLike) -> None:
    counts = json.loads(Path(counts_json).read_text())
    histogram = counts.pop("best_virus_score_histogram")
    page = (f"<html><head><meta charset='utf-8'><title>VirNucPro: {html.escape(sample)}</title>"
            "<style>body{font-family:sans-serif} th{text-align:left;padding-right:1em}</style>"
            f"</head><body><h1>Sample {html.escape(sample)}</h1><h2>Reads</h2>{_table(counts)}"
            "<h2>Best virus score per read (reads with a stop-free frame)</h2>"
            f"{_histogram_svg(histogram)}<h2>Settings</h2>{_table(settings)}</body></html>\n")
    with atomic_open(out, "w") as handle:
        handle.write(page)
