"""Embedding engine: DNABERT-S and ESM-2 features of a shard's frames.

Per frame, as the original VirNucPro: DNABERT-S mean of the last hidden state over all tokens
([CLS] and [SEP] included), ESM-2 mean of the representation layer over residues 1..len
(protein cut to 1022 residues); the feature row is [DNABERT-S | ESM-2].

How the work flows (one process, one device):

* Frames are processed in *windows* of consecutive frames (the caller's checkpoint interval).
  Within a window each model's frames are tokenised once, sorted by token count (longest first,
  so a batch that runs out of memory does so early) and cut into batches whose padded size
  (frames x longest) stays within a token budget; a frame longer than the budget is a batch of
  its own. Each window's rows come back in input order, so a caller can checkpoint it and
  resume from the next window (`embed_windows(..., start_window=k)`).
* A loader thread tokenises, batches and stages the coming batches while the main thread
  computes: on CUDA it copies each batch from pinned memory on a side stream and hands over
  an event the compute stream waits on; results go back to pinned host buffers without
  blocking, and the host waits once per window. The queue between the two is bounded, an
  exception in the loader is re-raised in the caller, and the thread is joined on every exit
  (end, error, or the caller closing the generator).
* A batch that runs out of GPU memory is split in halves, recursively; batches at least as
  large as one that failed are split before they are tried. A single frame that does not fit
  is an error. Every frame is embedded exactly once.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from virnucpro.errors import InputError, MissingInputError, UsageError, VirNucProError
from virnucpro.models.dnabert2 import DnaBert2Encoder, load_dnabert2
from virnucpro.models.esm2 import MAX_RESIDUES, Esm2Encoder, load_esm2
from virnucpro.progress import Progress

log = logging.getLogger("virnucpro")

DEFAULT_WINDOW_FRAMES = 10_000
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
QUEUE_DEPTH = 4  # staged batches waiting for the device
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class TokenBudgets:
    """Padded tokens (frames x longest frame) per batch, per model."""

    esm: int
    dnabert: int


# GPU: large enough that ESM-2 3B matmuls run at full speed (~600 frames of 52 tokens), small
# enough for its activations (~50 KB a token in bf16) to fit beside the weights on a 24 GB card.
# CPU: matmuls are at full speed from a few thousand tokens; bigger only costs memory.
DEFAULT_BUDGETS = {"cuda": TokenBudgets(esm=32_768, dnabert=65_536),
                   "cpu": TokenBudgets(esm=4_096, dnabert=8_192)}


class EmbeddingError(VirNucProError):
    """Embedding cannot go on (a single frame does not fit in GPU memory)."""


# --------------------------------------------------------------------------- reading a shard


def _read_fasta(path: Path) -> tuple[list[str], list[str]]:
    """IDs (header up to the first whitespace) and sequences (lines joined) of a FASTA file."""
    ids: list[str] = []
    seqs: list[str] = []
    parts: list[str] = []
    try:
        with open(path) as handle:
            for line in handle:
                line = line.rstrip()
                if line.startswith(">"):
                    if ids:
                        seqs.append("".join(parts))
                    ids.append((line[1:].split() or [""])[0])
                    parts = []
                elif line:
                    if not ids:
                        raise InputError(str(path), "sequence text before the first '>' header",
                                         "pass a FASTA file")
                    parts.append(line)
    except FileNotFoundError:
        raise MissingInputError(str(path), "file not found", "run prepare first") from None
    except UnicodeDecodeError:
        raise InputError(str(path), "not a text file", "pass a FASTA file") from None
    if ids:
        seqs.append("".join(parts))
    return ids, seqs


def read_frames(nucleotide_fasta: str | os.PathLike, protein_fasta: str | os.PathLike
                ) -> tuple[list[str], list[str], list[str]]:
    """A shard's frames: (IDs, nucleotide sequences, protein sequences), in file order.

    The two files must list the same IDs in the same order (prepare writes them so); any
    difference is an InputError naming both files and the first record that differs.
    """
    nucleotide_fasta, protein_fasta = Path(nucleotide_fasta), Path(protein_fasta)
    ids, nucleotides = _read_fasta(nucleotide_fasta)
    protein_ids, proteins = _read_fasta(protein_fasta)
    hint = ("a shard's nucleotide and protein files must list the same frames in the same "
            "order: run prepare again")
    for number, (nucleotide_id, protein_id) in enumerate(zip(ids, protein_ids), 1):
        if nucleotide_id != protein_id:
            raise InputError(str(nucleotide_fasta), f"record #{number} of {protein_fasta} is "
                             f"'{protein_id}' instead", hint, nucleotide_id, number)
    if len(ids) != len(protein_ids):
        longer, shorter = ((nucleotide_fasta, protein_fasta) if len(ids) > len(protein_ids)
                           else (protein_fasta, nucleotide_fasta))
        number = min(len(ids), len(protein_ids)) + 1
        first_extra = (ids if len(ids) > len(protein_ids) else protein_ids)[number - 1]
        raise InputError(str(longer), f"{shorter} has no record #{number} to match it", hint,
                         first_extra, number)
    for path, seqs in ((nucleotide_fasta, nucleotides), (protein_fasta, proteins)):
        empty = next((i for i, seq in enumerate(seqs) if not seq), None)
        if empty is not None:
            raise InputError(str(path), "empty sequence", "every frame needs a sequence: run "
                             "prepare again", ids[empty], empty + 1)
    return ids, nucleotides, proteins


# --------------------------------------------------------------------------- batching


def plan_batches(token_counts: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices of frames in batches of similar length, longest first.

    Each batch holds frames whose padded size (count x longest) is at most `budget`; a frame
    longer than the budget alone makes a batch. Every index appears exactly once.
    """
    if budget < 1:
        raise ValueError(f"token budget must be positive, not {budget}")
    order = np.argsort(-np.asarray(token_counts), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        # Sorted longest first, so the batch's width is its first frame's count.
        size = max(1, budget // int(token_counts[order[start]]))
        batches.append(order[start:start + size])
        start += size
    return batches


@dataclass(frozen=True)
class _Model:
    """One encoder's part of the work: how to tokenise, count, embed, and where its columns go."""

    name: str
    columns: slice
    budget: int
    tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
    token_counts: Callable[[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    forward_mean: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Batch:
    """Staged inputs of one batch: `rows` are positions within window `window`."""

    window: int
    model: _Model
    rows: torch.Tensor
    inputs: tuple[torch.Tensor, torch.Tensor]
    ready: torch.cuda.Event | None  # set when the inputs were copied on a side stream
    tokens: int  # real (unpadded) tokens


@dataclass(frozen=True)
class _WindowEnd:
    window: int
    size: int


def _take(inputs: tuple[torch.Tensor, ...], rows: torch.Tensor, width: int
          ) -> tuple[torch.Tensor, ...]:
    """Rows of a window's tokenised inputs, 2-D ones trimmed to the batch's longest frame."""
    return tuple(t[rows, :width] if t.ndim == 2 else t[rows] for t in inputs)


# --------------------------------------------------------------------------- the loader thread


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


class _Loader:
    """Runs a generator in a thread; its items come out through a bounded queue.

    Iterating re-raises the generator's exception. `close` (also on leaving a `with`) stops
    the thread at its next hand-over and joins it.
    """

    def __init__(self, items: Generator[Any, None, None], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,),
                                         name="virnucpro-loader", daemon=True)
        self._thread.start()

    def _run(self, items: Generator[Any, None, None]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(_Failed(exc))
        finally:
            items.close()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> _Loader:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


# --------------------------------------------------------------------------- the engine


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UsageError(f"device {str(device)!r} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


class EmbeddingEngine:
    """Both encoders on one device, batching, the loader thread and the OOM fallback.

    Subclasses may override `forward_batch` (tests use it to simulate running out of memory).
    """

    def __init__(self, esm: Esm2Encoder, dnabert: DnaBert2Encoder, *,
                 esm_tokens: int | None = None, dnabert_tokens: int | None = None) -> None:
        self.esm, self.dnabert = esm, dnabert
        self.device = esm.embed_tokens.weight.device
        self.dtype = esm.embed_tokens.weight.dtype
        # The weights' devices: `dnabert.device` may say 'cuda' where the weights say 'cuda:0'.
        dnabert_weights = next(dnabert.model.parameters())
        if (dnabert_weights.device, dnabert_weights.dtype) != (self.device, self.dtype):
            raise ValueError(f"ESM-2 is on {self.device} in {self.dtype}, DNABERT on "
                             f"{dnabert_weights.device} in {dnabert_weights.dtype}: "
                             "load both alike")
        defaults = DEFAULT_BUDGETS["cuda" if self.device.type == "cuda" else "cpu"]
        self.budgets = TokenBudgets(esm=esm_tokens or defaults.esm,
                                    dnabert=dnabert_tokens or defaults.dnabert)
        width = dnabert.hidden_size
        self.embed_dim = width + esm.embed_dim
        self._models = {
            "dnabert": _Model("dnabert", slice(0, width), self.budgets.dnabert, dnabert.tokenize,
                              lambda inputs: inputs[1].sum(1), dnabert.forward_mean),
            "esm": _Model("esm", slice(width, self.embed_dim), self.budgets.esm, esm.tokenize,
                          lambda inputs: inputs[1] + 2, esm.forward_mean),
        }
        # Smallest padded batch size that ran out of memory, per model.
        self._oom_tokens = {name: math.inf for name in self._models}
        self._copy_stream = (torch.cuda.Stream(self.device) if self.device.type == "cuda"
                             else None)

    @classmethod
    def from_config(cls, esm_location: str | os.PathLike, dnabert_dir: str | os.PathLike,
                    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                    esm_tokens: int | None = None, dnabert_tokens: int | None = None,
                    repr_layer: int | None = None) -> EmbeddingEngine:
        """Load both models (ESM-2 by name or path, DNABERT-S directory) onto one device."""
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        start = time.monotonic()
        esm = load_esm2(esm_location, device, dtype, repr_layer)
        dnabert = load_dnabert2(dnabert_dir, device, dtype)
        log.info("models loaded in %.1f s: %s (layer %d) and DNABERT (%d layers) on %s, %s",
                 time.monotonic() - start, esm.name, esm.repr_layer,
                 dnabert.config.num_hidden_layers, device, str(dtype).removeprefix("torch."))
        return cls(esm, dnabert, esm_tokens=esm_tokens, dnabert_tokens=dnabert_tokens)

    # ---- provenance

    def identities(self) -> dict[str, dict[str, Any]]:
        return {"dnabert": self.dnabert.identity(), "esm": self.esm.identity()}

    def settings(self) -> dict[str, Any]:
        """What, beyond the models, determines the numbers."""
        return {"dtype": str(self.dtype).removeprefix("torch."),
                "esm_repr_layer": self.esm.repr_layer,
                "esm_max_residues": MAX_RESIDUES,
                "esm_pooling": "mean over residues 1..len (BOS, EOS excluded)",
                "dnabert_pooling": "mean over all tokens ([CLS], [SEP] included)",
                "columns": {name: [model.columns.start, model.columns.stop]
                            for name, model in self._models.items()}}

    # ---- embedding

    def embed(self, nucleotides: Sequence[str], proteins: Sequence[str],
              window_frames: int = DEFAULT_WINDOW_FRAMES) -> torch.Tensor:
        """Features [N, Dn + De], float32 on the CPU, rows in input order."""
        out = torch.empty(len(nucleotides), self.embed_dim)
        for window, rows in self.embed_windows(nucleotides, proteins, window_frames):
            out[window * window_frames:window * window_frames + len(rows)] = rows
        return out

    def embed_windows(self, nucleotides: Sequence[str], proteins: Sequence[str],
                      window_frames: int, start_window: int = 0
                      ) -> Iterator[tuple[int, torch.Tensor]]:
        """(window index, features [n, Dn + De]) for windows `start_window`, ... in order.

        Window k holds frames k*window_frames .. (k+1)*window_frames - 1, rows in input order.
        """
        total = _check_windows(nucleotides, proteins, window_frames, start_window)
        progress = Progress("embed", total, unit="frame", log_every_s=LOG_EVERY_S)
        done = {"frames": 0, "ESM tokens": 0}
        pending: list[tuple[_Model, torch.Tensor, torch.Tensor]] = []
        batches = self._staged_batches(nucleotides, proteins, window_frames, start_window)
        try:
            with _Loader(batches, QUEUE_DEPTH) as loader:
                for item in loader:
                    if isinstance(item, _WindowEnd):
                        yield item.window, self._gather(pending, item.size)
                        pending = []
                        continue
                    self._wait_for(item)
                    result = self._embed_batch(item.model, item.inputs)
                    pending.append((item.model, item.rows, self._to_host(result)))
                    if item.model.name == "esm":
                        done["frames"] += len(item.rows)
                        done["ESM tokens"] += item.tokens
                        progress.update(done["frames"], **done)
        finally:
            progress.close(**done)

    def forward_batch(self, model: str, inputs: tuple[torch.Tensor, torch.Tensor]
                      ) -> torch.Tensor:
        """Mean embeddings [n, D] of one batch ('esm' or 'dnabert'), on the device."""
        return self._models[model].forward_mean(*inputs)

    def _staged_batches(self, nucleotides: Sequence[str], proteins: Sequence[str],
                        window_frames: int, start_window: int
                        ) -> Generator[_Batch | _WindowEnd, None, None]:
        """The loader thread's work: tokenise each window, batch it, stage the batches."""
        for window in range(start_window, math.ceil(len(nucleotides) / window_frames)):
            span = slice(window * window_frames, (window + 1) * window_frames)
            for model, seqs in ((self._models["dnabert"], nucleotides[span]),
                                (self._models["esm"], proteins[span])):
                inputs = model.tokenize(list(seqs))
                counts = model.token_counts(inputs)
                for order in plan_batches(counts.numpy(), model.budget):
                    rows = torch.from_numpy(order)
                    batch = _take(inputs, rows, int(counts[rows[0]]))
                    staged, ready = self._stage(batch)
                    yield _Batch(window, model, rows, staged, ready, int(counts[rows].sum()))
            yield _WindowEnd(window, len(nucleotides[span]))

    def _stage(self, inputs: tuple[torch.Tensor, ...]
               ) -> tuple[tuple[torch.Tensor, ...], torch.cuda.Event | None]:
        """On CUDA: pinned copies sent on the side stream, and an event marking their arrival."""
        if self._copy_stream is None:
            return inputs, None
        with torch.cuda.stream(self._copy_stream):
            staged = tuple(t.pin_memory().to(self.device, non_blocking=True) for t in inputs)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return staged, ready

    def _wait_for(self, batch: _Batch) -> None:
        """Make the compute stream wait for the batch's copy (the host does not wait)."""
        if batch.ready is None:
            return
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(batch.ready)
        for tensor in batch.inputs:
            tensor.record_stream(stream)  # allocated on the side stream, used on this one

    def _embed_batch(self, model: _Model, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """forward_batch, halving the batch on CUDA out-of-memory until it fits."""
        frames, padded = inputs[0].shape[0], inputs[0].numel()
        if frames == 1 or padded < self._oom_tokens[model.name]:
            try:
                return self.forward_batch(model.name, inputs)
            except torch.cuda.OutOfMemoryError:
                if frames == 1:
                    raise EmbeddingError(
                        f"{model.name}: out of GPU memory on a single frame of {padded} tokens; "
                        "use a GPU with more free memory, or --device cpu") from None
            # Outside the except block, so the failed attempt's tensors are freed first.
            self._oom_tokens[model.name] = min(self._oom_tokens[model.name], padded)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("%s: out of GPU memory on %d frames (%d padded tokens); splitting "
                        "batches of this size from now on", model.name, frames, padded)
        half = (frames + 1) // 2
        return torch.cat([self._embed_batch(model, tuple(t[:half] for t in inputs)),
                          self._embed_batch(model, tuple(t[half:] for t in inputs))])

    def _to_host(self, result: torch.Tensor) -> torch.Tensor:
        """Start copying a result to pinned host memory; complete once `_gather` synchronises."""
        if result.device.type != "cuda":
            return result
        host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
        return host.copy_(result, non_blocking=True)

    def _gather(self, pending: list[tuple[_Model, torch.Tensor, torch.Tensor]],
                size: int) -> torch.Tensor:
        """A window's rows in input order, once its results have reached the host."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        out = torch.empty(size, self.embed_dim)
        filled = dict.fromkeys(self._models, 0)
        for model, rows, values in pending:
            out[rows, model.columns] = values
            filled[model.name] += len(rows)
        if any(count != size for count in filled.values()):
            raise RuntimeError(f"internal error: a window of {size} frames got {filled} rows")
        return out


def _check_windows(nucleotides: Sequence[str], proteins: Sequence[str], window_frames: int,
                   start_window: int) -> int:
    """Validate the arguments of embed_windows; return the number of frames to embed."""
    if len(nucleotides) != len(proteins):
        raise ValueError(f"{len(nucleotides)} nucleotide but {len(proteins)} protein sequences")
    if window_frames < 1:
        raise ValueError(f"window_frames must be at least 1, not {window_frames}")
    windows = math.ceil(len(nucleotides) / window_frames)
    if not 0 <= start_window <= windows:
        raise ValueError(f"start_window {start_window} is outside 0..{windows}")
    return max(0, len(nucleotides) - start_window * window_frames)
