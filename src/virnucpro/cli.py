"""The `virnucpro` command: each workflow stage as a single step."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from virnucpro import __version__
from virnucpro.prepare import CHUNK_SIZES, write_flat, write_shards
from virnucpro.runner import call_reporting_errors, configure_logging


def _prepare(args: argparse.Namespace) -> None:
    if args.shard_size:
        stats = write_shards(args.input, args.chunk_size, args.shard_size, args.outdir)
    else:
        stats = write_flat(args.input, args.chunk_size, args.outdir)
    print(f"{stats.reads:,} reads, {stats.chunks:,} chunks, {stats.frames:,} stop-free frames "
          f"({stats.reads_without_frames:,} reads without one) -> {args.outdir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virnucpro", description=__doc__)
    parser.add_argument("--version", action="version", version=f"virnucpro {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="chunk reads and select stop-free frames",
                       description="Write DIR/chunked.fa, DIR/nucleotide.fa and DIR/protein.faa "
                                   "as the original VirNucPro does (or, with --shard-size, the "
                                   "workflow's shard layout).")
    p.add_argument("input", help="FASTA file (plain or gzip)")
    p.add_argument("--chunk-size", type=int, required=True, choices=CHUNK_SIZES)
    p.add_argument("--outdir", required=True)
    p.add_argument("--shard-size", type=int, default=0,
                   help="write the workflow layout (shards of this many frames) instead")
    p.set_defaults(func=_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    func: Callable[[argparse.Namespace], None] = args.func
    return call_reporting_errors(func, args)


if __name__ == "__main__":
    sys.exit(main())
