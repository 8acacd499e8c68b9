"""A run's samples: the config's `samples` map or a TSV sample sheet, as name -> reads files.

`samples` in the config is either
- a map: name -> reads file, or name -> [R1, R2] for paired reads, or
- the path of a sample sheet: tab-separated, the first line naming the columns `sample`,
  `reads1` and optionally `reads2` (R2 of paired reads; empty for single reads); blank
  lines and lines starting with '#' are skipped. Each line is checked against the sheet's
  JSON schema (workflow/schemas/samples.schema.yaml), which the workflow passes in.

Paths are used as given: a relative path (of the sheet, or in it) is relative to the
working directory, like every path in the config (Snakemake's --directory).

A sample is paired when it has two files, or one BAM or CRAM file of paired reads
(`is_paired`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import yaml

from virnucpro import layout
from virnucpro.config import BRACES_HINT, has_braces
from virnucpro.errors import MissingInputError, UsageError, VirNucProError
from virnucpro.reads import reads_reader


def load_samples(samples: dict[str, str | list[str]] | str,
                 sheet_schema: str | os.PathLike) -> dict[str, list[str]]:
    """Each sample's reads files (one, or R1 and R2), from the config's `samples`."""
    if isinstance(samples, str):
        return read_sample_sheet(samples, sheet_schema)
    return {name: [reads] if isinstance(reads, str) else list(reads)
            for name, reads in samples.items()}


def is_paired(reads: list[str], prepare_dir: str | os.PathLike) -> bool:
    """Whether a sample's reads are paired (its results include pairs.tsv): two files (R1,
    R2), or one BAM or CRAM whose reads are flagged paired, told from its first read when the
    workflow plans the run. A file that cannot tell (gone once the sample is prepared, or
    unreadable: pre-flight or prepare names its problem) is taken as prepare recorded it in
    the sample's stats.json, or as single when it was not prepared."""
    if len(reads) == 2:
        return True
    try:
        return reads_reader(reads[0]).paired
    except (VirNucProError, OSError):
        pass
    try:
        return bool(json.loads((Path(prepare_dir) / layout.STATS).read_text())["paired"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_sample_sheet(sheet: str | os.PathLike, schema_path: str | os.PathLike
                      ) -> dict[str, list[str]]:
    """The samples of a TSV sheet; anything wrong is one line naming the sheet, the line
    and column, and what to give instead (UsageError)."""
    if not Path(sheet).is_file():
        raise MissingInputError(sheet, "sample sheet not found", "check 'samples' in your "
                                "config (a relative path is relative to the working directory)")
    schema = yaml.safe_load(Path(schema_path).read_text())
    lines = [(number, line.rstrip("\r\n").split("\t"))
             # utf-8-sig: a byte order mark (spreadsheets write one) is not part of 'sample'
             for number, line in enumerate(Path(sheet).read_text(encoding="utf-8-sig")
                                           .splitlines(), 1)
             if line.strip() and not line.startswith("#")]
    if not lines:
        raise UsageError(f"{sheet}: is empty; {_columns_hint(schema)}")
    (_, header), rows = lines[0], lines[1:]
    header = [name.strip() for name in header]
    _check_columns(sheet, header, schema)
    if not rows:
        raise UsageError(f"{sheet}: lists no samples; add a line per sample below the header")
    validator = jsonschema.Draft202012Validator(schema)
    samples: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for number, cells in rows:
        if len(cells) > len(header):
            raise UsageError(f"{sheet}: line {number}: has {len(cells)} tab-separated fields, "
                             f"the header {len(header)}; separate the columns with single tabs")
        row = dict(zip(header, (cell.strip() for cell in cells + [""] * len(header))))
        _check_row(sheet, number, row, validator, schema)
        for column in ("reads1", "reads2"):
            if has_braces(row.get(column) or ""):
                raise UsageError(f"{sheet}: line {number}, column {column}: {row[column]!r} "
                                 f"has braces; {BRACES_HINT}")
        name = row["sample"]
        if name in samples:
            raise UsageError(f"{sheet}: line {number}: sample '{name}' is listed twice (first "
                             f"on line {first_line[name]}); give each sample one line (paired "
                             "reads: R1 in reads1, R2 in reads2)")
        samples[name] = [row["reads1"]] + ([row["reads2"]] if row.get("reads2") else [])
        first_line[name] = number
    return samples


def _columns_hint(schema: dict) -> str:
    """What the first line must name, from the schema."""
    optional = [c for c in schema["properties"] if c not in schema["required"]]
    return (f"its first line must name the columns {', '.join(schema['required'])}"
            + (f" and optionally {', '.join(optional)}" if optional else "")
            + ", separated by tabs")


def _check_columns(sheet: str | os.PathLike, header: list[str], schema: dict) -> None:
    for column in schema["required"]:
        if column not in header:
            raise UsageError(f"{sheet}: has no column '{column}'; {_columns_hint(schema)}")
    for column in header:
        if column not in schema["properties"]:
            raise UsageError(f"{sheet}: unknown column '{column}'; {_columns_hint(schema)}")
        if header.count(column) > 1:
            raise UsageError(f"{sheet}: column '{column}' appears twice; "
                             f"{_columns_hint(schema)}")


def _check_row(sheet: str | os.PathLike, number: int, row: dict[str, str],
               validator: jsonschema.Validator, schema: dict) -> None:
    """The first cell that breaks the schema, by column order, as one line."""
    columns = list(schema["properties"])
    bad = sorted({error.path[0] for error in validator.iter_errors(row)}, key=columns.index)
    if not bad:
        return
    column, value = bad[0], row[bad[0]]
    problem = "is empty" if not value else f"{value!r} is not valid"
    raise UsageError(f"{sheet}: line {number}, column {column}: {problem}; give "
                     f"{' '.join(schema['properties'][column]['description'].split())}")
