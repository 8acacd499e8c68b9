"""The `virnucpro` command: each workflow stage as a single step."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from virnucpro import __version__
from virnucpro.defaults import CHECKPOINT_FRAMES, CHECKPOINT_SECONDS, DEDUP
from virnucpro.errors import UsageError
from virnucpro.prepare import CHUNK_SIZES, write_flat, write_shards
from virnucpro.runner import call_reporting_errors, configure_logging


def _prepare(args: argparse.Namespace) -> None:
    reads = [args.input] + ([args.mates] if args.mates else [])
    distinct = ""
    if args.shard_size:
        stats = write_shards(reads, args.chunk_size, args.shard_size, args.outdir, args.u_as_t,
                             dedup=args.dedup)
        distinct = f", {stats.distinct_frames:,} distinct to embed" if args.dedup else ""
    else:
        stats = write_flat(reads, args.chunk_size, args.outdir, args.u_as_t)
    print(f"{stats.reads:,} reads, {stats.chunks:,} chunks, {stats.frames:,} stop-free frames "
          f"({stats.reads_without_frames:,} reads without one){distinct} -> {args.outdir}")


def _embed(args: argparse.Namespace) -> None:
    # Imported here: torch and the models take seconds to import, which `prepare` need not pay.
    import torch

    from virnucpro.embed import EmbeddingEngine
    from virnucpro.shards import ShardFrames
    from virnucpro.resume import CheckpointSettings, FeatureRows, embed_shard_resumable

    frames = ShardFrames(args.nucleotide, args.protein)
    scanned = frames.scan()  # the shard is checked before the models load
    engine = EmbeddingEngine.from_config(args.esm_model, args.dnabert_model, device=args.device,
                                         dtype=args.dtype, esm_tokens=args.esm_tokens,
                                         dnabert_tokens=args.dnabert_tokens,
                                         compile=args.compile)
    settings = CheckpointSettings(args.checkpoint_frames, args.checkpoint_seconds,
                                  force_resume=args.force_resume)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = FeatureRows(out, getattr(torch, args.features_dtype))
    frames_now = embed_shard_resumable(frames, result, engine, settings, scanned=scanned)
    print(f"{frames_now:,} frames embedded x {engine.embed_dim} features -> {args.out}")


def _make_demo_models(args: argparse.Namespace) -> None:
    from virnucpro.demo_models import write_demo_models

    paths = write_demo_models(args.directory)
    print(f"--esm-model {paths['esm']} --dnabert-model {paths['dnabert']}")


def _classify(args: argparse.Namespace) -> None:
    from virnucpro.classify import classify_run

    counts = classify_run(args.features, args.prepared, args.model, args.outdir,
                          args.virus_threshold)
    print(f"{counts['reads']:,} reads: {counts['virus']:,} virus, "
          f"{counts['non-virus']:,} non-virus, {counts['no_coding_frame']:,} without a "
          f"stop-free frame -> {args.outdir}")


def _status(args: argparse.Namespace) -> None:
    from virnucpro.status import run_progress

    progress = run_progress(args.outdir)
    if not progress:
        raise UsageError(f"{args.outdir}: no samples found (is this the workflow's outdir?)")
    for sample in progress:
        print(sample.line())


def _validate_features(args: argparse.Namespace) -> None:
    from virnucpro.features import FeatureFileError, validate_tree

    results = validate_tree(args.directory)
    for path, status, reason in results:
        print(f"{status}\t{path}" + (f"\t{reason}" if reason else ""))
    kinds = {status for _, status, _ in results} - {"valid"}
    if kinds:
        bad = sum(status != "valid" for _, status, _ in results)
        raise FeatureFileError(args.directory, "incompatible" if "incompatible" in kinds else
                              "corrupted", f"{bad} of {len(results)} files are not valid")
    print(f"all {len(results)} files valid")


def _convert_model(args: argparse.Namespace) -> None:
    from virnucpro.models.classifier import convert_model, sidecar_path

    described = convert_model(args.input, args.output)
    print(f"{described['architecture']} {described['input_dim']} -> {described['hidden_dim']} -> "
          f"{described['num_class']} -> {args.output} (+ {sidecar_path(args.output)})")


def _add_convert_model_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-model", help="convert a classifier .pth to .safetensors",
                       description="Load a VirNucPro classifier safely (the published whole-"
                                   "module 300_model.pth / 500_model.pth, a state dict .pth or "
                                   ".safetensors; a file that would run code is refused) and "
                                   "write OUT (.safetensors, the original parameter names) and "
                                   "OUT.json (architecture, sizes, sha256 of IN).")
    p.add_argument("input", metavar="IN", help="classifier file to convert")
    p.add_argument("output", metavar="OUT", help="the .safetensors file to write")
    p.set_defaults(func=_convert_model)


def _train(args: argparse.Namespace) -> None:
    from virnucpro.train import NON_VIRUS, VIRUS, TrainingSettings, labelled_sample, train_run

    def labelled(spec: str, label: int):
        directory, _, weight = spec.rpartition("=") if "=" in spec else (spec, "", "1")
        try:
            return labelled_sample(directory, label, float(weight))
        except ValueError:
            raise UsageError(f"{spec}: the weight after '=' must be a number") from None

    files = [labelled(d, VIRUS) for d in args.virus] + \
        [labelled(d, NON_VIRUS) for d in args.nonvirus]
    given = {key: getattr(args, key) for key in ("validation_fraction", "seed", "epochs",
                                                 "patience", "learning_rate")}
    settings = TrainingSettings(**{k: v for k, v in given.items() if v is not None})
    out = Path(args.outdir)
    metrics = train_run(files, settings, args.chunk_size, out / "model.safetensors",
                        out / "metrics.json", out / "roc.svg", out / "scores.svg")
    print(f"validation: accuracy {metrics['accuracy']:.4f}, ROC AUC {metrics['roc_auc']:.4f} "
          f"-> {out / 'model.safetensors'}")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the classifier from embedded sample directories",
                       description="Train the MLP on sample directories the workflow prepared "
                                   "and embedded ({outdir}/NAME/ with prepare/ and features/), "
                                   "as the workflow's train target does; writes model.safetensors "
                                   "(+ .json sidecar), metrics.json, roc.svg and scores.svg.")
    p.add_argument("--virus", nargs="+", required=True, metavar="DIR[=WEIGHT]")
    p.add_argument("--nonvirus", nargs="+", required=True, metavar="DIR[=WEIGHT]")
    p.add_argument("--chunk-size", type=int, required=True, choices=CHUNK_SIZES)
    p.add_argument("--outdir", required=True)
    p.add_argument("--validation-fraction", type=float, help="default 0.1")
    p.add_argument("--seed", type=int, help="default 42")
    p.add_argument("--epochs", type=_positive, help="default 200")
    p.add_argument("--patience", type=_positive, help="default 5")
    p.add_argument("--learning-rate", type=float, help="default 0.0002")
    p.set_defaults(func=_train)


def _fetch_models(args: argparse.Namespace) -> None:
    from virnucpro.models.download import fetch_published
    from virnucpro.models.published import DNABERT_DIR, ESM_FILE, MANIFEST_NAME

    sizes = (300, 500) if args.chunk_size == "both" else (int(args.chunk_size),)
    fetched = fetch_published(args.directory, sizes)
    directory = Path(args.directory)
    print(f"{len(fetched)} files -> {directory} (sizes and SHA-256 in "
          f"{directory / MANIFEST_NAME}); in your config:")
    print(f"models:\n  esm: {directory / ESM_FILE}\n  dnabert: {directory / DNABERT_DIR}\n  "
          f"classifier: {directory / f'{sizes[-1]}_model.pth'}")


def _verify_models(args: argparse.Namespace) -> None:
    from virnucpro.models.published import MANIFEST_NAME, verify

    checked = verify(args.directory)
    print(f"{checked} files as {Path(args.directory) / MANIFEST_NAME} records them (size and "
          "SHA-256)")


def _add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="fetch the published models; verify a copy of them",
                       description="The published models (ESM-2 3B, DNABERT-S, the VirNucPro "
                                   "classifiers) fetched from their addresses into one directory "
                                   "with a manifest of their SHA-256 sums, and a copy of that "
                                   "directory verified offline (README: \"Getting the published "
                                   "models\").")
    models = p.add_subparsers(dest="models_command", required=True)
    fetch = models.add_parser("fetch", help="download the published models into DIR",
                              description="Download ESM-2 3B, DNABERT-S and the classifiers "
                                          "into DIR (streamed; an interrupted download resumes "
                                          "when run again) and write DIR/manifest.json: each "
                                          "file's size, SHA-256 and address.")
    fetch.add_argument("directory", metavar="DIR")
    fetch.add_argument("--chunk-size", choices=("300", "500", "both"), default="both",
                       help="the classifiers to fetch (default both)")
    fetch.set_defaults(func=_fetch_models)
    check = models.add_parser("verify", help="check DIR against its manifest, offline",
                              description="Check every file DIR/manifest.json lists: there, of "
                                          "its size and SHA-256. One line per problem; exit "
                                          "status 66 if there is any.")
    check.add_argument("directory", metavar="DIR")
    check.set_defaults(func=_verify_models)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1, not {text}")
    return value


def _add_embed_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed a shard's frames with DNABERT-S and ESM-2",
                       description="Write the shard's feature file: one row per frame, "
                                   "DNABERT-S mean embedding then ESM-2 mean embedding. "
                                   "OUT's .done sentinel (out.pt -> out.done, as the workflow "
                                   "names it) is written last; progress is checkpointed in "
                                   "OUT.partial/ so an interrupted run resumes. Memory does not "
                                   "grow with the shard.")
    p.add_argument("--nucleotide", required=True, help="the shard's nucleotide FASTA (.fna)")
    p.add_argument("--protein", required=True, help="the shard's protein FASTA (.faa)")
    p.add_argument("--esm-model", required=True, help="ESM-2 model file: a .pt path, or a "
                   "model name in $TORCH_HOME/hub/checkpoints (e.g. esm2_t36_3B_UR50D)")
    p.add_argument("--dnabert-model", required=True, help="DNABERT-S model directory")
    p.add_argument("--out", required=True, help="feature file to write (.pt)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: float16 on CUDA (weights and activations in float16, sums in "
                        "float32), float32 on the CPU (README \"Precision\")")
    p.add_argument("--compile", default="auto", choices=("auto", "true", "false"),
                   help="compile the models' layers (torch.compile); auto: on CUDA only")
    p.add_argument("--features-dtype", default="float32", choices=("float32", "float16"),
                   help="dtype of the written features (float16 halves the file)")
    p.add_argument("--esm-tokens", type=_positive, default=None,
                   help="ESM-2 padded tokens per batch (default: set per device type)")
    p.add_argument("--dnabert-tokens", type=_positive, default=None,
                   help="DNABERT-S padded tokens per batch (default: set per device type)")
    p.add_argument("--checkpoint-frames", type=_positive, default=CHECKPOINT_FRAMES,
                   help="save progress every N frames (in OUT.partial/; a rerun resumes)")
    p.add_argument("--checkpoint-seconds", type=float, default=CHECKPOINT_SECONDS,
                   help="... or every S seconds, whichever comes first")
    p.add_argument("--force-resume", action="store_true",
                   help="resume from partial results made with different models or settings")
    p.set_defaults(func=_embed)

    p = sub.add_parser("make-demo-models", help="write small random-init models for demos",
                       description="Write a random-init ESM-2 model file and DNABERT-S model "
                                   "directory (same file formats as the real ones) into DIR.")
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(func=_make_demo_models)

    p = sub.add_parser("classify", help="score feature files and write the result tables",
                       description="Score shard feature files with the VirNucPro classifier and "
                                   "write prediction_results.txt, "
                                   "prediction_results_highestscore.csv, "
                                   "summary.tsv (one row per read), pairs.tsv (paired reads) "
                                   "and counts.json into OUTDIR.")
    p.add_argument("--features", nargs="+", required=True, help="shard feature files (shard_N.pt)")
    p.add_argument("--prepared", required=True,
                   help="the prepare directory of the sample (reads.tsv, shards/*.index.tsv)")
    p.add_argument("--model", required=True, help="classifier: published .pth or .safetensors")
    p.add_argument("--outdir", required=True)
    p.add_argument("--virus-threshold", type=_probability, default=None, metavar="T",
                   help="a chunk is virus when its max P(virus) >= T (default: the original's "
                        "rule, max P(virus) >= max P(others)); the original's two tables do "
                        "not change")
    p.set_defaults(func=_classify)

    p = sub.add_parser("status", help="progress of a workflow run, per sample",
                       description="Shards complete and frames saved in partial shards, per "
                                   "sample, from the .done sentinels alone.")
    p.add_argument("outdir", nargs="?", default="results", help="the workflow's outdir")
    p.set_defaults(func=_status)

    # validate-checkpoints: the name this command had first, kept for existing scripts.
    p = sub.add_parser("validate-features", aliases=["validate-checkpoints"],
                       help="check every feature file under DIR",
                       description="Load and validate every .pt file under DIR (feature files, "
                                   "and the saved checkpoints of unfinished shards, which are in "
                                   "the same format); print valid, corrupted or incompatible per "
                                   "file. Exit status: 0 all valid, 75 some corrupted, 78 some "
                                   "incompatible.")
    p.add_argument("directory", metavar="DIR")
    p.set_defaults(func=_validate_features)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virnucpro", description=__doc__)
    parser.add_argument("--version", action="version", version=f"virnucpro {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="chunk reads and select stop-free frames",
                       description="Write DIR/chunked.fa, DIR/nucleotide.fa and DIR/protein.faa "
                                   "as the original VirNucPro does (or, with --shard-size, the "
                                   "workflow's shard layout). Paired reads: give R1 and R2, or "
                                   "one BAM or CRAM of paired reads; each mate is a read (ID/1, "
                                   "ID/2), the mates interleaved.")
    p.add_argument("input", metavar="READS",
                   help="FASTA or FASTQ file, plain or gzip, or a BAM or CRAM file (which holds "
                        "both mates of paired reads); paired FASTA/FASTQ: the R1 file")
    p.add_argument("mates", metavar="MATES", nargs="?",
                   help="paired reads: the R2 file (record i pairs with record i of READS)")
    p.add_argument("--chunk-size", type=int, required=True, choices=CHUNK_SIZES)
    p.add_argument("--outdir", required=True)
    p.add_argument("--shard-size", type=int, default=0,
                   help="write the workflow layout (shards of this many frames) instead")
    p.add_argument("--u-as-t", action="store_true",
                   help="read U as T (RNA input); by default codons with U are skipped, as the "
                        "original does")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", default=DEDUP,
                   help="with --shard-size: write every frame to the shards; by default a chunk "
                        "whose sequence came before is written to the index only, its frames "
                        "taking the scores of the first chunk of that sequence (the results are "
                        "the same)")
    p.set_defaults(func=_prepare, flat_heap=False)  # see runner.call_reporting_errors
    _add_embed_parsers(sub)
    _add_convert_model_parser(sub)
    _add_train_parser(sub)
    _add_models_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.WARNING if args.quiet
                      else logging.DEBUG if args.verbose else logging.INFO)
    func: Callable[[argparse.Namespace], None] = args.func
    return call_reporting_errors(func, args, flat_heap=getattr(args, "flat_heap", True))


if __name__ == "__main__":
    sys.exit(main())
