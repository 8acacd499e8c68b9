"""The report's plots, drawn with matplotlib (headless: the Agg backend) as SVG text: the same
text is written as a plot file (a Snakemake report entry) and put inline in the HTML pages.

SVG keeps its text as text (`svg.fonttype: none`: small, searchable, sharp at any zoom) and is
written without date or random IDs, so the same data give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from virnucpro.calls import NO_CODING_FRAME, NON_VIRUS, VIRUS  # noqa: E402

COLOURS = {VIRUS: "#c0392b", NON_VIRUS: "#2e86c1", NO_CODING_FRAME: "#aab7b8"}
LABELS = {VIRUS: "virus", NON_VIRUS: "non-virus", NO_CODING_FRAME: "no coding frame"}
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "virnucpro", "font.size": 11,
         "font.family": ["DejaVu Sans", "sans-serif"], "axes.spines.top": False,
         "axes.spines.right": False, "axes.titlesize": 12, "axes.titleweight": "bold",
         "legend.frameon": False}
SCORE_AXIS = "best P(virus) of the read (max over its stop-free frames)"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def svg_text(figure: Figure) -> str:
    """The figure as an <svg> element (no XML prolog: valid as a file and inline in HTML)."""
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _draw(width: float, height: float, draw) -> str:
    """Build a figure in the report's style (rcParams apply when artists are made), draw on
    its axes with `draw(axes)`, return its SVG."""
    with matplotlib.rc_context(STYLE):
        figure = _figure(width, height)
        draw(figure.add_subplot())
        return svg_text(figure)


def threshold_line(threshold: float | None) -> tuple[float, str]:
    """Where the decision threshold is drawn on a P(virus) axis, and its legend label. The
    original's rule has no fixed threshold, but a chunk it calls virus has best P(virus) of
    at least 0.5 (best P(virus) >= best P(others) >= 1 - best P(virus)), so 0.5 is drawn."""
    if threshold is None:
        return 0.5, "threshold 0.5 (original rule)"
    return threshold, f"threshold {threshold:g} (virus_threshold)"


def _legend_below(ax, columns: int = 3) -> None:
    """The axes' legend under the figure, outside the axes (constrained layout makes room)."""
    ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                     ncols=columns, fontsize=9, markerscale=2)


def _count_axis(axis) -> None:
    """Counts are whole numbers: no 2.5 reads on an axis."""
    axis.set_major_locator(MaxNLocator(integer=True))


def calls_plot(groups: Mapping[str, Mapping[str, int]]) -> str:
    """Bars of the calls' counts per group of reads (all reads; or mate 1, mate 2 and the
    pairs), each labelled with its count and its share of the group."""
    def draw(ax):
        width = 0.8 / len(LABELS)
        for c, (call, label) in enumerate(LABELS.items()):
            xs = [g + (c - 1) * width for g in range(len(groups))]
            values = [counts[call] for counts in groups.values()]
            totals = [sum(counts[k] for k in LABELS) or 1 for counts in groups.values()]
            bars = ax.bar(xs, values, width * 0.92, color=COLOURS[call], label=label)
            ax.bar_label(bars, [f"{v:,}\n{100 * v / t:.1f}%" for v, t in zip(values, totals)],
                         fontsize=9, padding=2)
        ax.set_xticks(range(len(groups)), list(groups))
        ax.set_ylabel("number of reads or pairs" if len(groups) > 1 else "number of reads")
        _count_axis(ax.yaxis)
        ax.margins(y=0.2)
        _legend_below(ax)
        ax.set_title("Calls")
    return _draw(3.2 + 1.6 * len(groups), 4.2, draw)


def score_histogram_plot(histogram: Mapping[str, Sequence[int]], threshold: float | None) -> str:
    """Stacked histogram of the reads' best virus scores, coloured by call, with the threshold."""
    def draw(ax):
        bins = len(histogram[VIRUS])
        lefts = [i / bins for i in range(bins)]
        ax.bar(lefts, histogram[NON_VIRUS], 1 / bins, align="edge", color=COLOURS[NON_VIRUS],
               label="called non-virus", edgecolor="white", linewidth=0.3)
        ax.bar(lefts, histogram[VIRUS], 1 / bins, bottom=histogram[NON_VIRUS], align="edge",
               color=COLOURS[VIRUS], label="called virus", edgecolor="white", linewidth=0.3)
        at, label = threshold_line(threshold)
        ax.axvline(at, color="black", linestyle="--", linewidth=1.2, label=label)
        ax.set_xlim(0, 1)
        ax.set_xlabel(SCORE_AXIS)
        ax.set_ylabel("number of reads")
        _count_axis(ax.yaxis)
        _legend_below(ax)
        ax.set_title("Score distribution (reads with a stop-free frame)")
    return _draw(7.2, 4.2, draw)


def length_score_plot(points: Sequence[Sequence], scored: int, threshold: float | None) -> str:
    """Best virus score against read length, coloured by call (a uniform sample of the reads
    when there are many), with the threshold; a log length axis when lengths span 20-fold,
    else one from 0 (reads of one length are a column, not a zoomed-in axis)."""
    def draw(ax):
        for call in (NON_VIRUS, VIRUS):
            mine = [p for p in points if p[2] == call]
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=12, alpha=0.6,
                       color=COLOURS[call], label=f"called {LABELS[call]}", linewidths=0)
        at, label = threshold_line(threshold)
        ax.axhline(at, color="black", linestyle="--", linewidth=1.2, label=label)
        lengths = [p[0] for p in points]
        if lengths and max(lengths) > 20 * min(lengths):
            ax.set_xscale("log")
        elif lengths:
            ax.set_xlim(0, max(lengths) * 1.1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("read length (bp)")
        ax.set_ylabel("best P(virus) of the read")
        _legend_below(ax)
        shown = f"{len(points):,} of {scored:,} reads, sampled at random" \
            if len(points) < scored else f"all {scored:,} reads with a stop-free frame"
        ax.set_title(f"Score against read length ({shown})")
    return _draw(7.2, 4.4, draw)


def samples_calls_plot(samples: Mapping[str, Mapping[str, int]]) -> str:
    """One horizontal bar per sample: its reads' calls in percent of its reads."""
    def draw(ax):
        names = list(samples)[::-1]  # the first sample on top
        left = [0.0] * len(names)
        for call, label in LABELS.items():
            shares = [100 * samples[n][call] / max(samples[n]["reads"], 1) for n in names]
            bars = ax.barh(names, shares, left=left, color=COLOURS[call], label=label,
                           edgecolor="white", linewidth=0.5)
            ax.bar_label(bars, [f"{s:.1f}%" if s >= 8 else "" for s in shares],
                         label_type="center", fontsize=9,
                         color="white" if call != NO_CODING_FRAME else "black")
            left = [a + b for a, b in zip(left, shares)]
        for y, name in enumerate(names):
            ax.text(101, y, f"{samples[name]['reads']:,} reads", va="center", fontsize=9)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of the sample's reads")
        ax.set_ylabel("sample")
        _legend_below(ax)
        ax.set_title("Calls per sample")
    return _draw(7.6, 2.0 + 0.45 * len(samples), draw)


def samples_scores_plot(histograms: Mapping[str, Mapping[str, Sequence[int]]],
                        threshold: float | None) -> str:
    """Each sample's distribution of best virus scores (share of its scored reads per bin)."""
    def draw(ax):
        for name, histogram in histograms.items():
            counts = [a + b for a, b in zip(histogram[VIRUS], histogram[NON_VIRUS])]
            total = sum(counts) or 1
            bins = len(counts)
            ax.stairs([100 * c / total for c in counts], [i / bins for i in range(bins + 1)],
                      label=name, linewidth=1.5)
        at, label = threshold_line(threshold)
        ax.axvline(at, color="black", linestyle="--", linewidth=1.2, label=label)
        ax.set_xlim(0, 1)
        ax.set_xlabel(SCORE_AXIS)
        ax.set_ylabel("% of the sample's scored reads")
        _legend_below(ax, columns=4)
        ax.set_title("Score distribution per sample")
    return _draw(7.2, 4.4, draw)


def roc_plot(fpr: Sequence[float], tpr: Sequence[float], auc: float) -> str:
    """A trained classifier's ROC curve on its validation frames."""
    def draw(ax):
        ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="chance")
        ax.plot(fpr, tpr, color=COLOURS[VIRUS], linewidth=2, label=f"classifier (AUC {auc:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (non-virus frames called virus)")
        ax.set_ylabel("true positive rate (virus frames called virus)")
        ax.legend(loc="lower right")
        ax.set_title(f"Validation ROC (AUC {auc:.3f})")
    return _draw(5.2, 5.2, draw)


def class_scores_plot(virus: Sequence[float], non_virus: Sequence[float], bins: int = 20) -> str:
    """P(virus) of the validation frames by true class, with the 0.5 the metrics call at."""
    def draw(ax):
        edges = [i / bins for i in range(bins + 1)]
        for scores, call in ((non_virus, NON_VIRUS), (virus, VIRUS)):
            ax.hist(scores, bins=edges, color=COLOURS[call], alpha=0.55,
                    label=f"true {LABELS[call]} ({len(scores):,} frames)")
        ax.axvline(0.5, color="black", linestyle="--", linewidth=1.2,
                   label="0.5 (metrics call virus above it)")
        ax.set_xlim(0, 1)
        ax.set_xlabel("P(virus) of the frame")
        ax.set_ylabel("number of validation frames")
        _count_axis(ax.yaxis)
        _legend_below(ax, columns=2)
        ax.set_title("Validation P(virus) by true class")
    return _draw(6.4, 4.4, draw)
