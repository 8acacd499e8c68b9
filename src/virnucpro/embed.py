"""Embedding engine: DNABERT-S and ESM-2 features of a shard's frames.

Per frame, as the original VirNucPro: DNABERT-S mean of the last hidden state over all tokens
([CLS] and [SEP] included), ESM-2 mean of the representation layer over residues 1..len
(protein cut to 1022 residues); the feature row is [DNABERT-S | ESM-2].

How the work flows (one process, one device):

* Frames come in *windows* of consecutive frames, streamed from the shard's files
  (virnucpro.shards), so a job holds its models and a few windows, never its whole shard.
  Within a window each model's frames are tokenised once, sorted by token count (longest first,
  so a batch that runs out of memory does so early) and cut into batches whose padded size
  (frames x longest) stays within a token budget; a frame longer than the budget is a batch of
  its own. Each window's rows come back in input order, so a caller can save them and
  resume from the next window (`ShardFrames.windows(..., skip=...)`).
* A loader thread reads, tokenises, batches and stages the coming batches while the main thread
  computes; masks and token counts are built on the host there, so the compute thread never
  reads a value back from the device except once per window: on CUDA it copies each batch
  from pinned memory on a side stream and hands over an event the compute stream waits on;
  results go back to pinned host buffers without blocking, and the host waits once per window.
  The queue between the two is bounded, an exception in the loader is re-raised in the
  caller, and the thread is joined on every exit (end, error, or the caller closing the
  generator).
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
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch

from virnucpro.defaults import WINDOW_FRAMES
from virnucpro.errors import UsageError, VirNucProError
from virnucpro.models.dnabert2 import DnaBert2Encoder, load_dnabert2
from virnucpro.models.esm2 import MAX_RESIDUES, Esm2Encoder, load_esm2
from virnucpro.progress import Progress
from virnucpro.shards import FrameWindow, in_windows

log = logging.getLogger("virnucpro")

QUEUE_DEPTH = 4  # staged batches waiting for the device
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Precision:
    """How an engine computes: its weights' dtype, and whether matrix multiplications run in
    16 bits over them (autocast; see `PRECISIONS`)."""

    name: str
    weights: torch.dtype
    autocast: bool

    def matmul_dtype(self, device: torch.device) -> torch.dtype:
        """Mixed precision's matrix multiplications: float16 on a GPU, where its tensor cores
        run it as fast as bfloat16 and the published ESM-2 weights, stored in float16, stay
        exact (its 11 bits keep activations about ten times closer to float32 than bfloat16's
        8, measured); bfloat16 on a CPU, which has no fast float16 (ten times slower here)."""
        return torch.float16 if device.type == "cuda" else torch.bfloat16


PRECISIONS = {
    # Exact: the original's numbers. Slow on a GPU (no tensor cores).
    "float32": Precision("float32", torch.float32, False),
    # Fastest: weights and activations in bfloat16; about 1 call in 100 differs from float32.
    "bfloat16": Precision("bfloat16", torch.bfloat16, False),
    # float32 weights, residual stream, layer norms, attention and pooling, 16-bit matrix
    # multiplications; scoring jobs rescore in float32 the frames near a decision boundary
    # (resume.RESCORE_MARGINS), so their calls are float32's.
    "mixed": Precision("mixed", torch.float32, True),
}


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
    """One encoder's part of the work: how to tokenise, count, embed, and where its columns go.

    `batch_inputs` turns a batch's rows of the tokenised window into the encoder's inputs on
    the host (masks and counts included), so the device is never asked for a value.
    """

    name: str
    columns: slice
    budget: int
    tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
    token_counts: Callable[[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    batch_inputs: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor | None, ...]]
    forward_mean: Callable[..., torch.Tensor]


@dataclass
class _Batch:
    """Staged inputs of one batch: `rows` are positions within window `window`."""

    window: int
    model: _Model
    rows: torch.Tensor
    inputs: tuple[torch.Tensor | None, ...]
    ready: torch.cuda.Event | None  # set when the inputs were copied on a side stream
    tokens: int  # real (unpadded) tokens


@dataclass(frozen=True)
class _WindowEnd:
    window: int
    frames: FrameWindow


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
        raise UsageError(f"device {str(device)!r}: no CUDA device is available on this machine; "
                         "run on the CPU (config embed.device: cpu, CLI --device cpu) or where "
                         "a GPU is")
    return device


def resolve_precision(dtype: str | torch.dtype | Precision, device: torch.device) -> Precision:
    """'auto' is mixed on CUDA and float32 on the CPU (where bfloat16 saves little)."""
    if isinstance(dtype, Precision):
        return dtype
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype == "auto":
        return PRECISIONS["mixed" if device.type == "cuda" else "float32"]
    if dtype not in PRECISIONS:
        raise UsageError(f"dtype {dtype!r} is not one of auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[dtype]


class EmbeddingEngine:
    """Both encoders on one device, batching, the loader thread and the OOM fallback.

    Subclasses may override `forward_batch` (tests use it to simulate running out of memory).
    """

    def __init__(self, esm: Esm2Encoder, dnabert: DnaBert2Encoder, *,
                 esm_tokens: int | None = None, dnabert_tokens: int | None = None,
                 mixed: bool = False) -> None:
        self.esm, self.dnabert = esm, dnabert
        self.device = esm.embed_tokens.weight.device
        self.dtype = esm.embed_tokens.weight.dtype
        if mixed and self.dtype != torch.float32:
            raise ValueError(f"mixed precision needs float32 weights, not {self.dtype}")
        self.precision = PRECISIONS["mixed" if mixed else str(self.dtype).removeprefix("torch.")]
        self._matmul_dtype = self.precision.matmul_dtype(self.device)
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
                              lambda inputs: inputs[1].sum(1), lambda inputs: inputs,
                              dnabert.forward_mean),
            "esm": _Model("esm", slice(width, self.embed_dim), self.budgets.esm, esm.tokenize,
                          lambda inputs: inputs[1] + 2,
                          lambda inputs: (*inputs, esm.key_mask(inputs[0])), esm.forward_mean),
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
        precision = resolve_precision(dtype, device)
        start = time.monotonic()
        esm = load_esm2(esm_location, device, precision.weights, repr_layer)
        dnabert = load_dnabert2(dnabert_dir, device, precision.weights)
        log.info("models loaded in %.1f s: %s (layer %d) and DNABERT (%d layers) on %s, %s",
                 time.monotonic() - start, esm.name, esm.repr_layer,
                 dnabert.config.num_hidden_layers, device, precision.name)
        return cls(esm, dnabert, esm_tokens=esm_tokens, dnabert_tokens=dnabert_tokens,
                   mixed=precision.autocast)

    # ---- provenance

    def identities(self) -> dict[str, dict[str, Any]]:
        return {"dnabert": self.dnabert.identity(), "esm": self.esm.identity()}

    def hardware(self) -> dict[str, str | None]:
        """What computed: the device type and, on a GPU, its model, for the report pages
        (`embed.device: auto` says nothing of it). Not part of `settings`: the same numbers
        from another GPU resume a shard's saved batches."""
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {"device": self.device.type, "gpu": gpu}

    def settings(self) -> dict[str, Any]:
        """What, beyond the models, determines the numbers."""
        return {"dtype": self.precision.name,
                "matmul_dtype": (str(self._matmul_dtype).removeprefix("torch.")
                                 if self.precision.autocast else self.precision.name),
                "esm_repr_layer": self.esm.repr_layer,
                "esm_max_residues": MAX_RESIDUES,
                "esm_pooling": "mean over residues 1..len (BOS, EOS excluded)",
                "dnabert_pooling": "mean over all tokens ([CLS], [SEP] included)",
                "columns": {name: [model.columns.start, model.columns.stop]
                            for name, model in self._models.items()}}

    def nonfinite_model(self, features: torch.Tensor) -> str | None:
        """The file of the model that computed NaN or inf among `features` (rows of this
        engine's columns), or None when every value is finite: a damaged weight loads
        without complaint and shows only in what it computes."""
        files = {"esm": self.esm.model_file or self.esm.name, "dnabert": self.dnabert.weights_path}
        for name, model in self._models.items():
            if not bool(torch.isfinite(features[:, model.columns]).all()):
                return str(files[name])
        return None

    # ---- embedding

    def embed(self, nucleotides: Sequence[str], proteins: Sequence[str],
              window_frames: int = WINDOW_FRAMES, exact: bool = False) -> torch.Tensor:
        """Features [N, Dn + De] of frames held in memory, float32 on the CPU, in input order.

        `exact`: in float32 throughout even when the engine's precision is mixed (its weights
        are float32: a rescoring job gets float32's numbers from the same models).
        """
        out = torch.empty(len(nucleotides), self.embed_dim)
        windows = in_windows(nucleotides, proteins, window_frames)
        for window, rows in self.embed_windows(windows, total=len(nucleotides), exact=exact,
                                               quiet=exact):
            out[window.start:window.start + len(window)] = rows
        return out

    def embed_windows(self, windows: Iterable[FrameWindow], total: int | None = None,
                      exact: bool = False, quiet: bool = False
                      ) -> Iterator[tuple[FrameWindow, torch.Tensor]]:
        """(window, features [len(window), Dn + De]) for each window, in order.

        `windows` is consumed by the loader thread (so reading a shard overlaps the compute),
        a few windows ahead at most; `total` (frames) makes progress lines show an ETA
        (`quiet`: no progress lines).
        """
        mixed = self.precision.autocast and not exact
        progress = Progress("embed", total, unit="frame", log_every_s=LOG_EVERY_S, quiet=quiet)
        frames_done, tokens = 0, 0
        pending: list[tuple[_Model, torch.Tensor, torch.Tensor]] = []
        try:
            with _Loader(self._staged_batches(windows), QUEUE_DEPTH) as loader:
                for item in loader:
                    if isinstance(item, _WindowEnd):
                        yield item.frames, self._gather(pending, len(item.frames))
                        pending = []
                        continue
                    self._wait_for(item)
                    with torch.autocast(self.device.type, self._matmul_dtype, enabled=mixed):
                        result = self._embed_batch(item.model, item.inputs)
                    pending.append((item.model, item.rows, self._to_host(result)))
                    if item.model.name == "esm":
                        frames_done += len(item.rows)
                        tokens += item.tokens
                        progress.update(frames_done, **{"ESM tokens": tokens})
        finally:
            progress.close(**{"ESM tokens": tokens})

    def forward_batch(self, model: str, inputs: tuple[torch.Tensor | None, ...]
                      ) -> torch.Tensor:
        """Mean embeddings [n, D] of one batch ('esm' or 'dnabert'), on the device."""
        return self._models[model].forward_mean(*inputs)

    def _staged_batches(self, windows: Iterable[FrameWindow]
                        ) -> Generator[_Batch | _WindowEnd, None, None]:
        """The loader thread's work: read each window, tokenise it, batch it, stage the batches."""
        for window, frames in enumerate(windows):
            for model, seqs in ((self._models["dnabert"], frames.nucleotides),
                                (self._models["esm"], frames.proteins)):
                inputs = model.tokenize(seqs)
                counts = model.token_counts(inputs)
                for order in plan_batches(counts.numpy(), model.budget):
                    rows = torch.from_numpy(order)
                    batch = model.batch_inputs(_take(inputs, rows, int(counts[rows[0]])))
                    staged, ready = self._stage(batch)
                    yield _Batch(window, model, rows, staged, ready, int(counts[rows].sum()))
            yield _WindowEnd(window, frames)

    def _stage(self, inputs: tuple[torch.Tensor | None, ...]
               ) -> tuple[tuple[torch.Tensor | None, ...], torch.cuda.Event | None]:
        """On CUDA: pinned copies sent on the side stream, and an event marking their arrival."""
        if self._copy_stream is None:
            return inputs, None
        with torch.cuda.stream(self._copy_stream):
            staged = tuple(None if t is None else t.pin_memory().to(self.device, non_blocking=True)
                           for t in inputs)
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
            if tensor is not None:
                tensor.record_stream(stream)  # allocated on the side stream, used on this one

    def _embed_batch(self, model: _Model, inputs: tuple[torch.Tensor | None, ...]
                     ) -> torch.Tensor:
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
        return torch.cat([self._embed_batch(model, _rows(inputs, slice(0, half))),
                          self._embed_batch(model, _rows(inputs, slice(half, None)))])

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


def _rows(inputs: tuple[torch.Tensor | None, ...], rows: slice
          ) -> tuple[torch.Tensor | None, ...]:
    """Some rows of a batch's inputs (a padding mask that is None stays None)."""
    return tuple(None if t is None else t[rows] for t in inputs)
