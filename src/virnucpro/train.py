"""Train the VirNucPro classifier from embedded, labelled frames.

The frames come from the prediction stages (prepare with the original's training-time rule
that drops chunks holding ambiguous bases, then embed), so a trained model sees exactly the
features prediction gives it. Training follows the original train.py: the same MLP
(Xavier-initialised), cross-entropy, SGD with momentum and a step learning-rate schedule,
early stopping on validation loss (the best weights are kept). Unlike the original it is
seeded and deterministic on CPU, splits the validation set by *read* (frames of one read never
sit on both sides), and weighs files as configured.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from virnucpro import layout
from virnucpro.atomic import atomic_open
from virnucpro.errors import InputError, UsageError
from virnucpro.features import read_trusted
from virnucpro.hashing import files_sha256
from virnucpro.models.classifier import MLPClassifier, save_classifier
from virnucpro.plots import class_scores_plot, roc_plot
from virnucpro.prepare import index_rows

log = logging.getLogger("virnucpro")

VIRUS, NON_VIRUS = 1, 0


@dataclass
class TrainingSettings:
    validation_fraction: float = 0.1
    seed: int = 42
    epochs: int = 200
    patience: int = 5
    batch_size: int = 32
    learning_rate: float = 0.0002
    momentum: float = 0.9
    lr_step_epochs: int = 10
    lr_gamma: float = 0.85
    hidden_dim: int = 512


@dataclass
class LabelledFile:
    """One labelled FASTA file, as the workflow prepared and embedded it."""

    fasta: str
    label: int  # VIRUS or NON_VIRUS
    weight: float
    validation: bool  # an explicit validation file (else split by validation_fraction)
    features: list[str] = field(default_factory=list)  # shard feature files, in shard order
    indexes: list[str] = field(default_factory=list)  # the shards' index.tsv (frame -> read)


def labelled_sample(directory: str | os.PathLike, label: int, weight: float = 1.0,
                    validation: bool = False) -> LabelledFile:
    """A labelled file as the workflow left it in `{outdir}/{name}/`: its prepare stats name
    the FASTA, its finished shards have features/ and prepare/shards/ files."""
    directory = Path(directory)
    prepared = layout.prepare_dir(directory)
    stats = prepared / layout.STATS
    if not stats.is_file():
        raise InputError(directory, f"no {stats.relative_to(directory)}", "give a sample "
                         "directory of the workflow's outdir whose prepare and embed steps "
                         "finished")
    shards = layout.prepared_shards(prepared)
    features = [layout.features_file(directory, s) for s in shards]
    missing = [s for s, path in zip(shards, features) if not layout.sentinel(path).exists()]
    if missing:
        raise InputError(directory, f"shard {missing[0]} is not embedded yet",
                         "run the workflow's train target (or embed the shard) first")
    return LabelledFile(json.loads(stats.read_text())["input"], label, weight, validation,
                        list(map(str, features)),
                        [str(layout.shard_file(prepared, s, "index")) for s in shards])


class FrameRows:
    """The rows of several feature files as one table, read from disk as training needs them.

    The files are memory-mapped: a batch's rows are pages of the files (page cache, which the
    kernel reclaims), so a training run's memory does not grow with its training set.
    """

    def __init__(self, tables: list[torch.Tensor]) -> None:
        self.tables = tables
        self.width = next((t.shape[1] for t in tables if len(t)), 0)
        self.offsets = np.cumsum([0, *(len(t) for t in tables)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def take(self, positions: np.ndarray) -> torch.Tensor:
        """Rows at these positions (0 .. len - 1), float32 [len(positions), width], in order."""
        table = np.searchsorted(self.offsets, positions, side="right") - 1
        out = torch.empty(len(positions), self.width)
        for t in np.unique(table):
            where = np.flatnonzero(table == t)
            local = torch.from_numpy(positions[where] - self.offsets[t])
            out[torch.from_numpy(where)] = self.tables[t][local].float()
        return out


@dataclass
class Examples:
    """Frames for training or validation: rows of `rows` at `positions`, in example order."""

    rows: FrameRows
    positions: np.ndarray  # int64 [N]
    labels: torch.Tensor  # [N] int64
    weights: torch.Tensor  # [N] float32

    @classmethod
    def in_memory(cls, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
                  ) -> Examples:
        """Examples of rows held in memory, in row order."""
        return cls(FrameRows([features]), np.arange(len(features), dtype=np.int64), labels,
                   weights)

    def __len__(self) -> int:
        return len(self.positions)

    def features(self, examples: torch.Tensor | slice) -> torch.Tensor:
        return self.rows.take(self.positions[examples])

    def blocks(self, size: int = 8192) -> Iterator[slice]:
        return (slice(start, start + size) for start in range(0, len(self), size))


def _load(file: LabelledFile, registry: Path | None
          ) -> tuple[list[torch.Tensor], np.ndarray, dict[str, Any]]:
    """A file's feature tables (memory-mapped, one per shard), the read each frame came from,
    and the embedding models. A corrupted feature file is moved aside and its `.done`
    removed, so that the rerun embeds the shard again."""
    tables, reads, models = [], [], {}
    for features, index in zip(file.features, file.indexes, strict=True):
        features = Path(features)
        registry_path = registry or layout.registry(features.parent.parent.parent)
        table = read_trusted(features, registry_path)
        tables.append(table.data)
        reads.extend(int(row[1]) for row in index_rows(index, table.ids, features,
                                                       repeats=False))
        models = table.meta.get("models", models)
    return tables, np.asarray(reads, dtype=np.int64), models


def split_reads(reads: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Validation mask over frames: a seeded `fraction` of the distinct reads, whole."""
    distinct = np.unique(reads)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(distinct)[: int(round(len(distinct) * fraction))]
    return np.isin(reads, chosen)


def _examples(rows: FrameRows, parts: list[tuple[np.ndarray, int, float]]) -> Examples:
    """Examples from (positions, label, weight) parts, in part order."""
    positions = np.concatenate([p[0] for p in parts]).astype(np.int64)
    labels = torch.cat([torch.full((len(p[0]),), p[1], dtype=torch.int64) for p in parts])
    weights = torch.cat([torch.full((len(p[0]),), p[2], dtype=torch.float32) for p in parts])
    return Examples(rows, positions, labels, weights)


def assemble(files: Sequence[LabelledFile], settings: TrainingSettings,
             registry: Path | None = None) -> tuple[Examples, Examples, dict[str, Any]]:
    """Training and validation examples, and the embedding models they were made with."""
    train, validation, models, tables = [], [], {}, []
    explicit = any(f.validation for f in files)
    for file in files:
        file_tables, reads, models = _load(file, registry)
        base = sum(len(t) for t in tables)
        tables.extend(file_tables)
        positions = base + np.arange(len(reads), dtype=np.int64)
        log.info("%s: %d frames (%s)", file.fasta, len(reads),
                 "virus" if file.label == VIRUS else "non-virus")
        if file.validation:
            validation.append((positions, file.label, file.weight))
            continue
        if explicit:  # validation files given: every other frame trains
            train.append((positions, file.label, file.weight))
            continue
        held = split_reads(reads, settings.validation_fraction, settings.seed)
        validation.append((positions[held], file.label, file.weight))
        train.append((positions[~held], file.label, file.weight))
    for name, parts in (("training", train), ("validation", validation)):
        labels = {label for positions, label, _ in parts if len(positions)}
        if labels != {VIRUS, NON_VIRUS}:
            raise UsageError(f"the {name} set needs frames of both classes, it has "
                             f"{sorted(labels) or 'none'}; give virus and non-virus files with "
                             "stop-free frames, or a larger validation_fraction")
    rows = FrameRows(tables)
    return _examples(rows, train), _examples(rows, validation), models


def _loss(model: MLPClassifier, examples: Examples) -> float:
    """Weighted mean cross-entropy, computed a block of rows at a time."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for block in examples.blocks():
            losses = F.cross_entropy(model(examples.features(block)), examples.labels[block],
                                     reduction="none")
            total += (losses * examples.weights[block]).sum().double()
    return float(total / examples.weights.double().sum())


def predict(model: MLPClassifier, examples: Examples) -> np.ndarray:
    """P(virus) of every example, a block of rows at a time."""
    return np.concatenate([model.predict_proba(examples.features(block))[:, 1].numpy()
                           for block in examples.blocks()])


def fit(train: Examples, validation: Examples, settings: TrainingSettings
        ) -> tuple[MLPClassifier, list[dict[str, float]]]:
    """The MLP with the lowest validation loss, and the per-epoch history."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = MLPClassifier(train.rows.width, settings.hidden_dim)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                                momentum=settings.momentum)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_step_epochs,
                                               settings.lr_gamma)
    best, best_loss, waited, history = None, float("inf"), 0, []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(train.labels), generator=generator)
        total = 0.0
        for batch in order.split(settings.batch_size):
            if len(batch) < 2:  # BatchNorm needs two rows in training mode
                continue
            optimizer.zero_grad()
            losses = F.cross_entropy(model(train.features(batch.numpy())), train.labels[batch],
                                     reduction="none")
            weights = train.weights[batch]
            loss = (losses * weights).sum() / weights.sum()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        schedule.step()
        validation_loss = _loss(model, validation)
        history.append({"epoch": epoch, "train_loss": total / len(train.labels),
                        "validation_loss": validation_loss})
        log.info("epoch %d: train loss %.4f, validation loss %.4f", epoch,
                 history[-1]["train_loss"], validation_loss)
        if math.isnan(validation_loss) and best is None:
            raise UsageError(f"training diverged: the validation loss is NaN after epoch "
                             f"{epoch}; lower train.learning_rate (now "
                             f"{settings.learning_rate}) or check the training files")
        if validation_loss < best_loss:  # never true for NaN: a diverged epoch is not kept
            best, best_loss, waited = copy.deepcopy(model.state_dict()), validation_loss, 0
        else:
            waited += 1
            if waited >= settings.patience:
                log.info("early stop after epoch %d: no better validation loss for %d epochs",
                         epoch, waited)
                break
    model.load_state_dict(best)
    return model.eval(), history


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(labels)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return (np.r_[0, fp] / max(fp[-1], 1), np.r_[0, tp] / max(tp[-1], 1))


def evaluate(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (virus = positive; called virus when P(virus) > 0.5,
    as prediction calls it) and ROC AUC."""
    called = scores > 0.5
    tp = int(np.sum(called & (labels == VIRUS)))
    fp = int(np.sum(called & (labels == NON_VIRUS)))
    fn = int(np.sum(~called & (labels == VIRUS)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    fpr, tpr = roc_curve(labels, scores)
    return {"accuracy": float(np.mean(called == (labels == VIRUS))), "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "roc_auc": float(np.trapezoid(tpr, fpr)), "frames": len(labels),
            "virus_frames": int(np.sum(labels == VIRUS))}


def train_run(files: Sequence[LabelledFile], settings: TrainingSettings, chunk_size: int,
              model_out: str | os.PathLike, metrics_out: str | os.PathLike,
              roc_out: str | os.PathLike, scores_out: str | os.PathLike) -> dict[str, Any]:
    """Train, then write the model (+ sidecar), validation metrics and the two plots."""
    if not any(f.label == VIRUS for f in files) or not any(f.label == NON_VIRUS for f in files):
        raise UsageError("training needs virus and non-virus files: set train.virus and "
                         "train.nonvirus in the config")
    train, validation, models = assemble(files, settings)
    log.info("training on %d frames, validating on %d", len(train.labels),
             len(validation.labels))
    model, history = fit(train, validation, settings)
    scores = predict(model, validation)
    labels = validation.labels.numpy()
    metrics = evaluate(labels, scores)
    data = [{"file": f.fasta, "label": "virus" if f.label == VIRUS else "non-virus",
             "weight": f.weight, "validation": f.validation,
             "features_sha256": files_sha256(f.features)}
            for f in files]
    fingerprint = hashlib.sha256(json.dumps([data, asdict(settings)], sort_keys=True)
                                 .encode()).hexdigest()
    about = {"chunk_size": chunk_size, "embedding_models": models,
             "training_data": data, "training_data_sha256": fingerprint,
             "training": asdict(settings), "epochs_run": len(history),
             "validation_metrics": metrics}
    save_classifier(model, model_out, about)
    with atomic_open(metrics_out, "w") as handle:
        json.dump({**metrics, "train_frames": len(train.labels), "history": history}, handle,
                  indent=2)
        handle.write("\n")
    fpr, tpr = roc_curve(labels, scores)
    for out, text in ((roc_out, roc_plot(fpr, tpr, metrics["roc_auc"])),
                      (scores_out, class_scores_plot(scores[labels == VIRUS],
                                                     scores[labels == NON_VIRUS]))):
        with atomic_open(out, "w") as handle:
            handle.write(text)
    log.info("validation: accuracy %.4f, precision %.4f, recall %.4f, F1 %.4f, ROC AUC %.4f",
             metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["f1"],
             metrics["roc_auc"])
    return metrics
