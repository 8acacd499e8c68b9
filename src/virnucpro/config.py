"""The workflow's configuration, checked against its JSON schema, one line per problem.

The schema (workflow/schemas/config.schema.yaml) is the single source of truth; this module
only words its verdict. Snakemake's own `validate` prints the whole schema and config around
the one sentence that matters, so the workflow checks here first and lets `validate` fill in
the defaults only once the config is clean. A problem names the key by its dotted path
(`embed.dtype`), says what is wrong and, for an unknown key, the closest valid one.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import jsonschema
import yaml
from referencing import Registry, Resource

import virnucpro
from virnucpro.errors import Problems, UsageError


def check_config(config: dict[str, Any], schema_path: str | os.PathLike) -> None:
    """Raise Problems (exit status 64), one UsageError per problem, unless `config` is valid."""
    validator = jsonschema.Draft202012Validator(_read_schema(schema_path),
                                                registry=Registry(retrieve=_read_schema_uri))
    lines = dict.fromkeys([*(line for error in validator.iter_errors(config)
                             for line in _lines(error)),
                           *_brace_lines(config)])  # in order, each once
    if lines:
        raise Problems([UsageError(line) for line in lines])


def check_package_version(pyproject: str | os.PathLike) -> None:
    """Raise UsageError unless the virnucpro package that runs is the version of the workflow
    that uses it (`pyproject`: the workflow's pyproject.toml). The package comes from the
    environment (pip), the workflow from a clone or a module's tag, and the two can drift
    apart: the rules would call functions the package has not got, or has changed."""
    wanted = tomllib.loads(Path(pyproject).read_text())["project"]["version"]
    if virnucpro.__version__ != wanted:
        raise UsageError(f"the virnucpro package here is version {virnucpro.__version__} "
                         f"({Path(virnucpro.__file__).parent}), the workflow is version "
                         f"{wanted}; install the workflow's version where Snakemake runs (pip "
                         "install CLONE, or 'virnucpro @ git+URL@TAG'), then rerun")


def check_config_files(paths: list[str | os.PathLike]) -> None:
    """Raise Problems (exit status 64) for a key given twice in one mapping of a config file:
    YAML keeps the last silently, so a sample listed twice under `samples` would vanish."""
    lines = [line for path in paths for line in _duplicate_keys(Path(path))]
    if lines:
        raise Problems([UsageError(line) for line in lines])


def _duplicate_keys(path: Path) -> Iterator[str]:
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError:
        return  # not YAML: Snakemake's own loader says so
    stack: list[tuple[yaml.Node, list[Any]]] = [(root, [])] if root is not None else []
    while stack:
        node, where = stack.pop()
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, [*where, i]) for i, item in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[str, int] = {}
        for key, value in node.value:
            name, line = key.value, key.start_mark.line + 1
            if name in first:
                yield (f"config: {path}: line {line}: key '{_key([*where, name])}' is given "
                       f"twice (first on line {first[name]}); give each key once")
            first.setdefault(name, line)
            stack.append((value, [*where, name]))


def has_braces(path: str) -> bool:
    """Snakemake reads '{...}' in a path as a wildcard: such a path cannot be an input or
    output of a rule."""
    return "{" in path or "}" in path


BRACES_HINT = ("'{' and '}' are wildcards in Snakemake paths; rename it (or the directory) "
               "without braces")


def _brace_lines(config: dict[str, Any]) -> Iterator[str]:
    """The paths a rule reads or writes that hold braces: outdir, the models, the reads of a
    samples map (a sample sheet's are checked with the sheet) and the training files."""
    models = config.get("models") if isinstance(config.get("models"), dict) else {}
    samples = config.get("samples") if isinstance(config.get("samples"), dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    validation = train.get("validation") if isinstance(train.get("validation"), dict) else {}
    paths = [("outdir", config.get("outdir")),
             *((f"models.{kind}", path) for kind, path in models.items()),
             *((f"samples.{name}", path) for name, reads in samples.items()
               for path in (reads if isinstance(reads, list) else [reads])),
             *((f"{key}.{label}", path)
               for key, files in (("train", train), ("train.validation", validation))
               for label in ("virus", "nonvirus") for path in files.get(label) or [])]
    for key, path in paths:
        if isinstance(path, str) and has_braces(path):
            yield f"config: {key}: {path!r} has braces; {BRACES_HINT}"


def _read_schema(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML schema, identified by its file's URI so that its relative $refs
    (samples.schema.yaml#/...) name the files beside it."""
    return {**yaml.safe_load(Path(path).read_text()), "$id": Path(path).resolve().as_uri()}


def _read_schema_uri(uri: str) -> Resource:
    return Resource.from_contents(_read_schema(url2pathname(urlparse(uri).path)))


def _key(path: list[Any]) -> str:
    """A config key by its path: `embed.dtype`, `train.virus[0]`."""
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else f"{'.' if key else ''}{part}"
    return key


# Keywords whose own message ("does not match '^(auto|cpu...'", "is not valid under any of the
# given schemas") would not help: the schema's description says what to give instead.
_SAYS_WHAT_IS_VALID = ("pattern", "oneOf", "anyOf")


def _lines(error: jsonschema.ValidationError) -> Iterator[str]:
    """One error of the schema's as the user's lines (an object with two unknown keys
    gives two)."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        for name in error.instance:
            if name not in known:
                yield f"config: unknown key '{_key([*path, name])}'; {_closest(name, path, known)}"
    elif error.validator == "required":
        for name in error.validator_value:
            if name not in error.instance:
                yield f"config: {_key([*path, name])}: is missing; add it (see config/README.md)"
    elif error.validator == "enum":
        choices = ", ".join(str(v).lower() if isinstance(v, bool) else str(v)
                            for v in error.validator_value)
        yield f"config: {_key(path)}: {error.instance!r} is not one of {choices}"
    elif error.validator in _SAYS_WHAT_IS_VALID:
        give = f"; give {' '.join(error.schema['description'].split())}" \
            if "description" in error.schema else ""
        yield f"config: {_key(path)}: {error.instance!r} is not valid{give}"
    else:
        where = f"{_key(path)}: " if path else ""
        yield f"config: {where}{' '.join(error.message.split())}"


def _closest(name: str, path: list[Any], known: list[str]) -> str:
    """'did you mean KEY?' for the valid key nearest to a mistyped one, else the valid keys."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if match:
        return f"did you mean {_key([*path, match[0]])}?"
    where = f" of {_key(path)}" if path else ""
    return f"the keys{where} are {', '.join(known)} (see config/README.md)"
