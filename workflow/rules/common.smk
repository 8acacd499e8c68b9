# Shared helpers: the checked config, paths and sample lookup, pre-flight.
import functools
import os
import sys
import re
from pathlib import Path

from snakemake.utils import validate

# Paths of the workflow's own files are relative to this file (workflow.source_path), never
# to workflow.basedir: used as a module (README "Deploying as a module"), the main Snakefile
# is the user's, and a module from GitHub has no files on disk until Snakemake fetches them.
#
# The virnucpro package comes from the environment that runs Snakemake, and so its jobs
# (pip install, README "Deploying as a module"; envs/virnucpro.yaml for --sdm conda). Only
# a clone whose package is not installed runs its own src/, saying so: a deployed module
# has no src/ beside it, and its package must be the workflow's version.
try:
    import virnucpro
except ModuleNotFoundError:
    SRC = os.path.normpath(f"{workflow.current_basedir}/../../src")
    if not os.path.isfile(f"{SRC}/virnucpro/__init__.py"):
        print(
            "virnucpro: error: the virnucpro package is not installed in the environment "
            "that runs Snakemake; install it there (pip install CLONE, or pip install "
            "'virnucpro @ git+URL@TAG': README \"Deploying as a module\"), then rerun",
            file=sys.stderr,
        )
        raise SystemExit(64)  # virnucpro.errors.EXIT_USAGE, not importable here
    sys.path.insert(0, SRC)
    from virnucpro.runner import report_note, share_package

    share_package(SRC)  # the jobs' scripts import it from there too
    report_note(
        f"the virnucpro package is not installed in this environment: running {SRC} "
        "(pip install it to run the package from your environment)"
    )
from virnucpro import layout
from virnucpro.config import check_config, check_config_files, check_package_version
from virnucpro.runner import report_note, result_or_exit
from virnucpro.layout import FASTA, FASTQ
from virnucpro.results import virus_reads_format
from virnucpro.samples import is_paired, load_samples

result_or_exit(check_package_version, workflow.source_path("../../pyproject.toml"))
# Both schemas are fetched before either is read: the config's refers to the samples' beside it.
CONFIG_SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
SAMPLES_SCHEMA = workflow.source_path("../schemas/samples.schema.yaml")
# The config: each problem on one line, naming its key (virnucpro.config; Snakemake's own
# message would bury it in the schema), then the schema's defaults filled in.
result_or_exit(check_config_files, workflow.configfiles)
result_or_exit(check_config, config, CONFIG_SCHEMA)
validate(config, "../schemas/config.schema.yaml", set_default=True)

OUTDIR = config["outdir"].rstrip("/")
# Every path below OUTDIR comes from virnucpro.layout, as the stages and the CLI use them.
PREPARE_DIR = f"{OUTDIR}/{{sample}}/{layout.PREPARE}"
SHARD = f"{OUTDIR}/{layout.SHARD_PATTERN}"
SHARD_FILES = {kind: f"{SHARD}{suffix}" for kind, suffix in layout.SHARD_SUFFIXES.items()}
SHARD_DONE = f"{SHARD}{layout.DONE}"
FEATURE_FILE = f"{OUTDIR}/{layout.FEATURES_PATTERN}"
FEATURE_DONE = str(layout.sentinel(FEATURE_FILE))
SCORES_FILE = f"{OUTDIR}/{layout.SCORES_PATTERN}"
FAILED_REGISTRY = str(layout.registry(OUTDIR))
# Sample name -> its reads files (one, or R1 and R2), from the config's map or sample sheet.
SAMPLE_READS = result_or_exit(load_samples, config["samples"], SAMPLES_SCHEMA)
SAMPLES = sorted(SAMPLE_READS)
# Paired samples (R1 and R2, or a BAM or CRAM of paired reads) get a pairs.tsv besides the
# per-read results.
PAIRED_SAMPLES = [
    s for s in SAMPLES if is_paired(SAMPLE_READS[s], layout.prepare_dir(f"{OUTDIR}/{s}"))
]
SINGLE_SAMPLES = [s for s in SAMPLES if s not in PAIRED_SAMPLES]
# The format of each sample's virus reads (FASTQ when all its reads files are), told from the
# reads' first bytes as the run is planned, or from prepare's stats.json once they are gone:
# it names the sample's virus reads files (virnucpro.results.virus_reads_format).
VIRUS_READS_FORMAT = {
    s: virus_reads_format(SAMPLE_READS[s], layout.prepare_dir(f"{OUTDIR}/{s}")) for s in SAMPLES
}
ENV = "../../envs/virnucpro.yaml"


# Training files (target `train`) are prepared and embedded as samples of their own,
# named train-{virus|nonvirus}-N (validation files: validation-...-N).
TRAINING = {}
for _role, _files in (("train", config["train"]), ("validation", config["train"]["validation"])):
    for _label in ("virus", "nonvirus"):
        for _i, _path in enumerate(_files.get(_label, [])):
            TRAINING[f"{_role}-{_label}-{_i}"] = _path


def sample_pattern(names):
    """A wildcard constraint matching exactly these sample names."""
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    sample=sample_pattern([*SAMPLES, *TRAINING]),


# Samples whose feature files are kept: training files always, the others on request.
KEEP_FEATURES = config["keep_features"]
FEATURE_SAMPLES = [*TRAINING, *(SAMPLES if KEEP_FEATURES else [])]


def prepare_settings(sample):
    """Prepare's settings for a sample or training file (also those of its estimate)."""
    return {
        "u_as_t": config["u_as_t"],
        "drop_ambiguous": sample in TRAINING,
        "dedup": config["dedup"] and sample not in TRAINING,
    }


def reads_of(sample):
    """The reads files of a sample (one, or R1 and R2) or of a training file."""
    return SAMPLE_READS.get(sample) or [TRAINING[sample]]


def sample_reads(wildcards):
    """The input of the sample's prepare job."""
    return reads_of(wildcards.sample)


# Demo models are generated by a rule (demo_models); real models are files you provide,
# or that rules download_esm and download_dnabert fetch.
DEMO_MODELS = "resources/demo-models"


def esm_model_file():
    """The ESM-2 model file: a path as given, or a fair-esm name's file in the hub cache."""
    from virnucpro.models.formats import esm_model_location

    return str(esm_model_location(config["models"]["esm"]))


def prepared_reads(wildcards):
    """reads.tsv of a sample, once its prepare checkpoint has run."""
    return f"{checkpoints.prepare.get(sample=wildcards.sample).output[0]}/{layout.READS_TABLE}"


def shard_names(sample):
    """Shards of a sample, known once its prepare checkpoint has run. Those not yet scored
    are checked (stat only): a prepared file deleted or truncated since is named here."""
    from virnucpro.prepare import damaged_shard

    announce_unprepared(sample)
    prepared = checkpoints.prepare.get(sample=sample).output[0]
    names = layout.prepared_shards(prepared)
    unscored = [n for n in names if not os.path.exists(SCORES_FILE.format(sample=sample, shard=n))]
    problem = damaged_shard(Path(prepared) / layout.SHARDS, unscored)
    if problem:
        raise WorkflowError(f"virnucpro: error: {problem}")
    return names


def training_shards(pattern):
    """A file of every shard of every training file, in config order: `pattern` is one of
    the paths above, with {sample} and {shard}."""
    return [
        pattern.format(sample=sample, shard=shard)
        for sample in TRAINING
        for shard in shard_names(sample)
    ]


def virus_reads_files(sample):
    """A sample's virus reads files: one, or R1's and R2's for paired reads."""
    names = layout.virus_reads_names(sample in PAIRED_SAMPLES, VIRUS_READS_FORMAT[sample])
    return [f"{OUTDIR}/{sample}/{name}" for name in names]


def virus_reads_patterns(paired, file_format):
    """The virus reads files of one layout and format, as output patterns (names differ)."""
    names = layout.virus_reads_names(paired, file_format)
    return [f"{OUTDIR}/{{sample}}/{name}" for name in names]


def virus_reads_samples(paired, file_format):
    """A wildcard constraint matching the samples of one layout whose virus reads are in
    `file_format`."""
    layout_samples = PAIRED_SAMPLES if paired else SINGLE_SAMPLES
    return sample_pattern([s for s in layout_samples if VIRUS_READS_FORMAT[s] == file_format])


def sample_results(sample):
    """The aggregate step's outputs for a sample."""
    made_by = rules.aggregate_pairs if sample in PAIRED_SAMPLES else rules.aggregate
    return expand(made_by.output, sample=sample)


def run_models(wildcards):
    """The model files of the run (provenance hashes them), asked for once every sample is
    prepared, as the embedding jobs ask for them: so a dry run, or a run still to fetch its
    models, is not stopped by a model that is missing yet."""
    for sample in SAMPLES:
        checkpoints.prepare.get(sample=sample)
    return {
        "esm": esm_model_file(),
        "dnabert": config["models"]["dnabert"],
        "classifier": config["models"]["classifier"],
    }


# The settings shown on the report pages (provenance.json): a change rewrites the pages.
RUN_SETTINGS = {
    "virus_threshold": config["virus_threshold"],
    "chunk_size": config["chunk_size"],
    "shard_size": config["shard_size"],
    "u_as_t": config["u_as_t"],
    "dedup": config["dedup"],
    "keep_features": config["keep_features"],
    "features_dtype": config["features_dtype"],
    "embed.device": config["embed"]["device"],
    "embed.dtype": config["embed"]["dtype"],
    "embed.compile": config["embed"]["compile"],
    **{f"models.{role}": path for role, path in config["models"].items()},
}


def sample_entry(path, caption, content):
    """A per-sample file in the Snakemake report: category Samples, one subcategory per sample."""
    return report(
        path,
        caption=f"../report/{caption}",
        category="Samples",
        subcategory="{sample}",
        labels={"sample": "{sample}", "content": content},
    )


def overview_entry(path, caption, content):
    """A run-level file in the Snakemake report, category Overview."""
    return report(
        path,
        caption=f"../report/{caption}",
        category="Overview",
        labels={"content": content},
    )


def shard_scores(wildcards):
    return [
        SCORES_FILE.format(sample=wildcards.sample, shard=name)
        for name in shard_names(wildcards.sample)
    ]


def is_prepared(sample):
    """Whether the sample's prepare checkpoint has run (its output appears only complete)."""
    return os.path.exists(layout.prepare_dir(f"{OUTDIR}/{sample}"))


@functools.cache
def announce_unprepared(sample):
    """A dry run cannot list the embedding jobs of a sample whose prepare checkpoint has not
    run: say so, once per sample, with an estimate of how many there will be."""
    if workflow.dryrun and not is_prepared(sample):
        from virnucpro.preflight import unprepared

        report_note(
            unprepared(
                sample,
                reads_of(sample),
                config["chunk_size"],
                config["shard_size"],
                **prepare_settings(sample),
            )
        )


def reads_read(sample):
    """Whether no job will read the sample's reads again: prepared, and for a sample to
    classify, its virus reads (the input records called virus) written."""
    outputs = virus_reads_files(sample) if sample in SAMPLES else []
    return is_prepared(sample) and all(map(os.path.exists, outputs))


def preflight():
    """Stop before any job unless the reads of every sample not yet prepared, and every
    model the run needs that no rule makes, are there and sound; say which absent models a
    rule will make (virnucpro.preflight). Once, where the run is planned, not again in each
    cluster job."""
    if not workflow.is_main_process:
        return
    from virnucpro.preflight import check

    made = {
        str(path): rule.name
        for rule in workflow.rules
        if not rule.has_wildcards()
        for path in rule.output
    }
    notes = result_or_exit(
        check,
        SAMPLE_READS,
        {name: [path] for name, path in TRAINING.items()},
        {**config["models"], "esm": esm_model_file()},
        config["chunk_size"],
        made,
        [sample for sample in [*SAMPLES, *TRAINING] if reads_read(sample)],
        config["embed"]["device"] if workflow.local_exec else None,
        config["u_as_t"],
        config["dedup"],
    )
    for note in notes:
        report_note(note)


# When this run's jobs started (onstart), for onerror.
RUN = {"started": None}


onstart:
    # One run per output directory, even from another working directory (virnucpro.runlock);
    # holding it, remove what interrupted runs left there (virnucpro.orphans).
    import time
    from virnucpro.orphans import remove_orphans
    from virnucpro.runlock import claim_outdir
    from virnucpro.runner import call_reporting_errors

    status = call_reporting_errors(claim_outdir, OUTDIR)
    if status:
        raise SystemExit(status)
    RUN["started"] = time.time()
    count, size = remove_orphans(OUTDIR)
    if count:
        report_note(
            f"removed {count} temporary file(s) left in {OUTDIR} by an interrupted run "
            f"({size / 1e6:.1f} MB)"
        )


onerror:
    # The failed steps' lines again, last, where a failed run's output ends: Snakemake reports
    # each failed job with its script's CalledProcessError, around which they are easy to miss.
    from virnucpro.runner import failed_step_lines

    if RUN["started"] is not None:
        for line in failed_step_lines(f"{OUTDIR}/logs", RUN["started"]):
            print(line, file=sys.stderr)
