"""Embedding engine: DNABERT-S and ESM-2 features of a shard's frames.

Per frame, as the original VirNucPro: DNABERT-S mean of the last hidden state over all tokens
([CLS] and [SEP] included), ESM-2 mean of the representation layer over residues 1..len
(protein cut to 1022 residues); the feature row is [DNABERT-S | ESM-2].

How the work flows (one process, one device; the number formats are virnucpro.precision's):

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
  from pinned memory on a side stream and hands over an event the compute stream waits on.
  Each batch's rows are written into the window's rows on the device; a caller's `head` (a
  scoring job's classifier) turns them into its own rows there, which go back to pinned host
  memory, and the host waits once per window. The queue between the two threads is bounded,
  an exception in the loader is re-raised in the caller, and the thread is joined on every
  exit (end, error, or the caller closing the generator).
* A float32 pass of a few frames (`embed_now`: a scoring job's rescoring) runs in the calling
  thread, on the same stream, without waiting for the device.
* A batch that runs out of GPU memory is split in halves, recursively; batches at least as
  large as one that failed are split before they are tried. A single frame that does not fit
  is an error. Every frame is embedded exactly once.
* Optionally (`compile`) each layer is compiled, once per job; where compiling fails, one
  line says so and the models run uncompiled.
* `work` counts what was computed: frames, real and padded tokens per model, frames
  rescored, seconds.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import torch

from virnucpro import heap
from virnucpro.defaults import WINDOW_FRAMES
from virnucpro.errors import UsageError, VirNucProError, one_line
from virnucpro.models.dnabert2 import DnaBert2Encoder, load_dnabert2
from virnucpro.models.esm2 import MAX_RESIDUES, Esm2Encoder, load_esm2
from virnucpro.precision import (PRECISIONS, Float32Weights, Precision, dtype_name,
                                 resolve_precision, set_numerics)
from virnucpro.progress import Progress
from virnucpro.shards import FrameWindow, in_windows

log = logging.getLogger("virnucpro")

QUEUE_DEPTH = 4  # staged batches waiting for the device
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class TokenBudgets:
    """Padded tokens (frames x longest frame) per batch, per model."""

    esm: int
    dnabert: int


# GPU: large enough that ESM-2 3B matmuls run at full speed (~600 frames of 52 tokens), small
# enough for its activations (~50 KB a token in 16 bits) to fit beside the weights on a 24 GB
# card; a float32 pass (rescoring) splits on its own if twice that does not fit.
# CPU: matmuls are at full speed from a few thousand tokens; bigger only costs memory, and
# DNABERT's widest activation (6,144 columns a token) then outgrows what the heap reuses
# within a window (virnucpro.heap: 32 MB, 2,048 tokens x 6,144 x 4 bytes = 50 MB already).
DEFAULT_BUDGETS = {"cuda": TokenBudgets(esm=32_768, dnabert=65_536),
                   "cpu": TokenBudgets(esm=4_096, dnabert=2_048)}
# Batches of frames within 5% of their longest's length, once a quarter of the budget full.
SAME_LENGTH = 0.95
BATCH_FILL = 0.25
MODEL_LABELS = {"esm": "ESM", "dnabert": "DNABERT"}


class EmbeddingError(VirNucProError):
    """Embedding cannot go on (a single frame does not fit in GPU memory)."""


# --------------------------------------------------------------------------- batching


def plan_batches(token_counts: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices of frames in batches of similar length, longest first.

    Each batch holds frames whose padded size (count x longest) is at most `budget`; a frame
    longer than the budget alone makes a batch. A batch also ends before a frame shorter than
    SAME_LENGTH x its longest once it holds BATCH_FILL of the budget: with a large budget a
    window's frames would otherwise share a few batches of widely different lengths (DNABERT
    tokens of 150-bp reads with a GPU's budget: 94% of the padded tokens real, 98% so). Every
    index appears exactly once.
    """
    if budget < 1:
        raise ValueError(f"token budget must be positive, not {budget}")
    counts = np.asarray(token_counts)
    order = np.argsort(-counts, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        # Sorted longest first, so the batch's width is its first frame's count.
        width = int(counts[order[start]])
        candidates = counts[order[start:start + max(1, budget // width)]]
        shorter = np.flatnonzero(candidates < SAME_LENGTH * width)
        shorter = shorter[shorter * width >= BATCH_FILL * budget]
        size = int(shorter[0]) if len(shorter) else len(candidates)
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
    """Staged inputs of one batch of a window of `size` frames; `rows` (staged too) are the
    batch's positions in the window."""

    window: int
    size: int
    model: _Model
    rows: torch.Tensor
    inputs: tuple[torch.Tensor | None, ...]
    ready: torch.cuda.Event | None  # set when the inputs were copied on a side stream
    tokens: int  # real (unpadded) tokens
    padded: int  # frames x the longest frame's tokens


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


def resolve_compile(compile: bool | str, device: torch.device) -> bool:
    """'auto' compiles on CUDA (fused layers), not on the CPU (compiling takes longer than a
    CPU job gains)."""
    if isinstance(compile, bool):
        return compile
    if compile not in ("auto", "true", "false"):
        raise UsageError(f"compile {compile!r} is not one of auto, true, false")
    return device.type == "cuda" if compile == "auto" else compile == "true"


def store_in_16_bits(esm: Esm2Encoder, dnabert: DnaBert2Encoder, dtype: torch.dtype
                     ) -> dict[str, Float32Weights]:
    """Convert both models' float32 weights to `dtype` in place; what their float32 pass
    needs (virnucpro.precision.Float32Weights), per model, for the engine."""
    dnabert.dtype = dtype
    return {"esm": Float32Weights(esm, dtype), "dnabert": Float32Weights(dnabert.model, dtype)}


@dataclass
class Work:
    """What an engine computed: frames, and per model and pass (the engine's own, and the
    float32 rescoring) frames, real tokens and padded tokens (frames x longest, batch by
    batch); seconds spent embedding. For sidecars, logs and benchmarks."""

    seconds: float = 0.0
    counts: dict[tuple[str, bool], list[int]] = field(default_factory=dict)

    def add(self, model: str, float32_pass: bool, frames: int, tokens: int, padded: int) -> None:
        count = self.counts.setdefault((model, float32_pass), [0, 0, 0])
        count[0] += frames
        count[1] += tokens
        count[2] += padded

    def frames(self, float32_pass: bool = False) -> int:
        return self.counts.get(("esm", float32_pass), [0])[0]

    def summary(self) -> dict[str, Any]:
        """Frames, frames rescored, seconds, rates and each model's tokens, as JSON."""
        seconds = max(self.seconds, 1e-9)
        tokens = {}
        for (model, float32_pass), (_, real, padded) in sorted(self.counts.items()):
            tokens.setdefault(model, {})["float32_rescoring" if float32_pass else "pass"] = {
                "real": real, "padded": padded,
                "padding_efficiency": round(real / padded, 4) if padded else None}
        return {"frames": self.frames(), "frames_rescored": self.frames(True),
                "seconds": round(self.seconds, 3),
                "frames_per_s": round(self.frames() / seconds, 1),
                "tokens_per_s": {model: round(sum(c[1] for (m, _), c in self.counts.items()
                                                  if m == model) / seconds)
                                 for model in tokens},
                "tokens": tokens}

    def line(self) -> str:
        """The summary as one log line."""
        summary = self.summary()
        parts = [f"{summary['frames']:,} frames in {summary['seconds']:.1f} s "
                 f"({summary['frames_per_s']:,} frames/s), {summary['frames_rescored']:,} "
                 "rescored in float32"]
        for model, passes in summary["tokens"].items():
            counted = passes["pass"] if "pass" in passes else next(iter(passes.values()))
            parts.append(f"{MODEL_LABELS[model]} {counted['real']:,} real of {counted['padded']:,} "
                         f"padded tokens ({counted['padding_efficiency']:.1%}), "
                         f"{summary['tokens_per_s'][model]:,} tokens/s")
        return "; ".join(parts)


class EmbeddingEngine:
    """Both encoders on one device, batching, the loader thread and the OOM fallback.

    The precision follows the weights' dtype: float32, bfloat16, or float16 (then the
    engine's float32 pass needs `float32_weights`, from `store_in_16_bits`). Subclasses may
    override `forward_batch` (tests use it to simulate running out of memory).
    """

    def __init__(self, esm: Esm2Encoder, dnabert: DnaBert2Encoder, *,
                 esm_tokens: int | None = None, dnabert_tokens: int | None = None,
                 compile: bool = False,
                 float32_weights: dict[str, Float32Weights] | None = None) -> None:
        self.esm, self.dnabert = esm, dnabert
        self.device = esm.embed_tokens.weight.device
        self.dtype = esm.embed_tokens.weight.dtype
        self.precision: Precision = PRECISIONS[dtype_name(self.dtype)]
        # The weights' devices: `dnabert.device` may say 'cuda' where the weights say 'cuda:0'.
        dnabert_weights = next(dnabert.model.parameters())
        if (dnabert_weights.device, dnabert_weights.dtype) != (self.device, self.dtype):
            raise ValueError(f"ESM-2 is on {self.device} in {self.dtype}, DNABERT on "
                             f"{dnabert_weights.device} in {dnabert_weights.dtype}: "
                             "load both alike")
        if self.precision.rescored and set(float32_weights or ()) != {"esm", "dnabert"}:
            raise ValueError(f"{self.precision.name} needs both models' float32 weights for "
                             "its float32 pass: load them with store_in_16_bits")
        self.float32_weights = float32_weights
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
        # Smallest padded batch size that ran out of memory, per model and pass.
        self._oom_tokens = {(name, float32_pass): math.inf for name in self._models
                            for float32_pass in (False, True)}
        self._copy_stream = (torch.cuda.Stream(self.device) if self.device.type == "cuda"
                             else None)
        self.compile = compile
        self._compiled = compile
        if compile:
            esm.compile_layers()
            dnabert.model.compile_layers()
        self.work = Work()

    @classmethod
    def from_config(cls, esm_location: str | os.PathLike, dnabert_dir: str | os.PathLike,
                    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                    esm_tokens: int | None = None, dnabert_tokens: int | None = None,
                    repr_layer: int | None = None, compile: bool | str = "auto"
                    ) -> EmbeddingEngine:
        """Load both models (ESM-2 by name or path, DNABERT-S directory) onto one device."""
        device = resolve_device(device)
        precision = resolve_precision(dtype, device)
        compile = resolve_compile(compile, device)
        set_numerics(device)
        start = time.monotonic()
        loaded = torch.float32 if precision.rescored else precision.dtype
        esm = load_esm2(esm_location, device, loaded, repr_layer)
        dnabert = load_dnabert2(dnabert_dir, device, loaded)
        kept, float32_weights = "", None
        if precision.rescored:
            float32_weights = store_in_16_bits(esm, dnabert, precision.dtype)
            weights = float32_weights.values()
            kept = (f" ({sum(w.kept for w in weights)} of {sum(w.converted for w in weights)} "
                    "weights also kept in float32: not exact in 16 bits)")
        log.info("models loaded in %.1f s: %s (layer %d) and DNABERT (%d layers) on %s, %s%s%s",
                 time.monotonic() - start, esm.name, esm.repr_layer,
                 dnabert.config.num_hidden_layers, device, precision.name, kept,
                 ", compiled at the first batch" if compile else "")
        return cls(esm, dnabert, esm_tokens=esm_tokens, dnabert_tokens=dnabert_tokens,
                   compile=compile, float32_weights=float32_weights)

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
                "compile": self.compile,
                "esm_repr_layer": self.esm.repr_layer,
                "esm_max_residues": MAX_RESIDUES,
                "esm_pooling": "mean over residues 1..len (BOS, EOS excluded)",
                "dnabert_pooling": "mean over all tokens ([CLS], [SEP] included)",
                "columns": {name: [model.columns.start, model.columns.stop]
                            for name, model in self._models.items()}}

    def nonfinite_columns(self, features: torch.Tensor) -> torch.Tensor:
        """[n, 2] float, on the features' device: 1 where DNABERT's (column 0) or ESM-2's
        (column 1) part of a row holds NaN or inf. A damaged weight loads without complaint
        and shows only in what it computes."""
        return torch.stack([~torch.isfinite(features[:, model.columns]).all(1)
                            for model in self._models.values()], 1).float()

    def model_file(self, model: str) -> str:
        """The file a model's weights came from ('esm' or 'dnabert')."""
        files = {"esm": self.esm.model_file or self.esm.name, "dnabert": self.dnabert.weights_path}
        return str(files[model])

    def nonfinite_model(self, features: torch.Tensor) -> str | None:
        """The file of the model that computed NaN or inf among `features` (rows of this
        engine's columns), or None when every value is finite."""
        flags = self.nonfinite_columns(features).amax(0)
        bad = [name for name, flag in zip(self._models, flags.tolist()) if flag]
        return self.model_file(bad[0]) if bad else None

    def esm_tokens(self, proteins: Sequence[str]) -> int:
        """ESM-2 tokens of these proteins (residues up to the cut, BOS and EOS)."""
        return sum(min(len(protein), MAX_RESIDUES) + 2 for protein in proteins)

    # ---- embedding

    def embed(self, nucleotides: Sequence[str], proteins: Sequence[str],
              window_frames: int = WINDOW_FRAMES, float32: bool = False) -> torch.Tensor:
        """Features [N, Dn + De] of frames held in memory, float32 on the CPU, in input order.

        `float32`: in float32 throughout even when the engine computes in 16 bits (with the
        same batches as a float32 engine: its numbers).
        """
        out = torch.empty(len(nucleotides), self.embed_dim)
        windows = in_windows(nucleotides, proteins, window_frames)
        for window, rows in self.embed_windows(windows, total=len(nucleotides), quiet=float32,
                                               float32=float32):
            out[window.start:window.start + len(window)] = rows
        return out

    def embed_windows(self, windows: Iterable[FrameWindow], total: int | None = None,
                      head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      quiet: bool = False, float32: bool = False
                      ) -> Iterator[tuple[FrameWindow, torch.Tensor]]:
        """(window, rows) for each window, in order, rows on the host: the features
        [len(window), Dn + De] (float32), or what `head` makes of them on the device.

        `windows` is consumed by the loader thread (so reading a shard overlaps the compute),
        a few windows ahead at most; `total` (frames) makes progress lines show an ETA
        (`quiet`: no progress lines). `float32`: every batch in float32.
        """
        progress = Progress("embed", total, unit="frame", log_every_s=LOG_EVERY_S, quiet=quiet)
        counts = dict.fromkeys(("ESM tokens", "DNABERT tokens"), 0)
        frames_done = 0
        start = time.monotonic()
        out: torch.Tensor | None = None
        filled: dict[str, int] = {}
        try:
            with heap.reused(), _Loader(self._staged_batches(windows), QUEUE_DEPTH) as loader:
                for item in loader:
                    if isinstance(item, _WindowEnd):
                        rows = self._finish_window(out, filled, len(item.frames), head)
                        out = None
                        heap.release()
                        yield item.frames, rows
                        continue
                    if out is None:
                        out = torch.empty(item.size, self.embed_dim, device=self.device)
                        filled = dict.fromkeys(self._models, 0)
                    self._run(item, out, float32)
                    filled[item.model.name] += len(item.rows)
                    counts[f"{MODEL_LABELS[item.model.name]} tokens"] += item.tokens
                    if item.model.name == "esm":
                        frames_done += len(item.rows)
                        progress.update(frames_done, **counts)
        finally:
            self.work.seconds += time.monotonic() - start
            progress.close(**counts)

    def embed_now(self, nucleotides: Sequence[str], proteins: Sequence[str],
                  float32: bool = True) -> torch.Tensor:
        """Features [N, Dn + De] of a few frames on the device, float32, computed in this
        thread (no loader) and not waited for: a scoring job's float32 rescoring."""
        frames = FrameWindow(0, [str(i) for i in range(len(nucleotides))], list(nucleotides),
                             list(proteins))
        out = torch.empty(len(frames), self.embed_dim, device=self.device)
        for batch in self._window_batches(0, frames):
            self._run(batch, out, float32)
        return out

    def forward_batch(self, model: str, inputs: tuple[torch.Tensor | None, ...],
                      float32: bool = False) -> torch.Tensor:
        """Mean embeddings [n, D] of one batch ('esm' or 'dnabert'), on the device; in float32
        (`float32`) with 16-bit weights converted module by module."""
        run = self.float32_weights[model].run if float32 and self.float32_weights else None
        return self._models[model].forward_mean(*inputs, run=run)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        """Start copying a device tensor to pinned host memory; it is complete once the host
        has waited for the device (`synchronize`). On the CPU, the tensor itself."""
        if tensor.device.type != "cuda":
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    def synchronize(self) -> None:
        """Wait until the device has done all the work given to it."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _staged_batches(self, windows: Iterable[FrameWindow]
                        ) -> Generator[_Batch | _WindowEnd, None, None]:
        """The loader thread's work: read each window, tokenise it, batch it, stage the batches."""
        for window, frames in enumerate(windows):
            yield from self._window_batches(window, frames)
            yield _WindowEnd(window, frames)

    def _window_batches(self, window: int, frames: FrameWindow) -> Iterator[_Batch]:
        """A window's batches, tokenised, planned and staged, each model's in turn."""
        for model, seqs in ((self._models["dnabert"], frames.nucleotides),
                            (self._models["esm"], frames.proteins)):
            inputs = model.tokenize(seqs)
            counts = model.token_counts(inputs)
            for order in plan_batches(counts.numpy(), model.budget):
                rows = torch.from_numpy(order)
                width = int(counts[rows[0]])
                batch = model.batch_inputs(_take(inputs, rows, width))
                (staged_rows, *staged), ready = self._stage((rows, *batch))
                yield _Batch(window, len(frames), model, staged_rows, tuple(staged), ready,
                             int(counts[rows].sum()), len(rows) * width)

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
        for tensor in (batch.rows, *batch.inputs):
            if tensor is not None:
                tensor.record_stream(stream)  # allocated on the side stream, used on this one

    def _run(self, batch: _Batch, out: torch.Tensor, float32: bool) -> None:
        """Embed a batch into its rows of `out` (on the device), and count it."""
        self._wait_for(batch)
        result = self._embed_batch(batch.model, batch.inputs, float32)
        out[:, batch.model.columns].index_copy_(0, batch.rows, result)
        float32_pass = float32 and self.precision.rescored
        self.work.add(batch.model.name, float32_pass, len(batch.rows), batch.tokens,
                      batch.padded)

    def _finish_window(self, out: torch.Tensor | None, filled: dict[str, int], size: int,
                       head: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """A window's rows on the host, once the device has computed them (the wait)."""
        if out is None or any(count != size for count in filled.values()):
            raise RuntimeError(f"internal error: a window of {size} frames got {filled} rows")
        host = self.to_host(out if head is None else head(out))
        self.synchronize()
        return host

    def _embed_batch(self, model: _Model, inputs: tuple[torch.Tensor | None, ...],
                     float32: bool) -> torch.Tensor:
        """forward_batch, halving the batch on CUDA out-of-memory until it fits."""
        frames, padded = inputs[0].shape[0], inputs[0].numel()
        key = (model.name, float32)
        if frames == 1 or padded < self._oom_tokens[key]:
            try:
                return self._forward(model.name, inputs, float32)
            except torch.cuda.OutOfMemoryError:
                if frames == 1:
                    raise EmbeddingError(
                        f"{model.name}: out of GPU memory on a single frame of {padded} tokens; "
                        "use a GPU with more free memory, or --device cpu") from None
            # Outside the except block, so the failed attempt's tensors are freed first.
            self._oom_tokens[key] = min(self._oom_tokens[key], padded)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("%s: out of GPU memory on %d frames (%d padded tokens); splitting "
                        "batches of this size from now on", model.name, frames, padded)
        half = (frames + 1) // 2
        return torch.cat([self._embed_batch(model, _rows(inputs, slice(0, half)), float32),
                          self._embed_batch(model, _rows(inputs, slice(half, None)), float32)])

    def _forward(self, model: str, inputs: tuple[torch.Tensor | None, ...], float32: bool
                 ) -> torch.Tensor:
        """forward_batch; where the compiled layers fail (compiling, or running what was
        compiled), one line says so and the models run uncompiled from then on."""
        if not self._compiled:
            if not self.compile:
                return self.forward_batch(model, inputs, float32)
            with torch.compiler.set_stance("force_eager"):
                return self.forward_batch(model, inputs, float32)
        try:
            return self.forward_batch(model, inputs, float32)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # compiling can fail in many ways: all mean "run uncompiled"
            log.warning("compiling the models failed (%s); they run uncompiled",
                        one_line(exc, 200))
            self._compiled = False
        return self._forward(model, inputs, float32)


def _rows(inputs: tuple[torch.Tensor | None, ...], rows: slice
          ) -> tuple[torch.Tensor | None, ...]:
    """Some rows of a batch's inputs (a padding mask that is None stays None)."""
    return tuple(None if t is None else t[rows] for t in inputs)
