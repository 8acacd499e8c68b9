"""Precision: the number formats the embedding engine computes in, and what keeps a 16-bit
scoring job's calls float32's.

Three precisions (config `embed.dtype`, `resolve_precision`):

* float32: everything in float32, the original's numbers; the CPU default. A GPU runs it
  without tensor cores (~60 against ~990 TFLOP/s on an H100/H200).
* bfloat16: weights and activations in bfloat16; about 1 call in 100 differs from float32's.
* float16, the GPU default: weights and activations in float16, with float32 wherever a kernel
  sums: LayerNorm statistics and the softmax inside the fused attention kernels (both
  accumulate in float32 internally), matrix products (summed in float32: cuBLAS's
  reduced-precision reductions are turned off, `set_numerics`), and the mean-pooling sums.
  Then each scoring job embeds again in float32 the frames whose call float16 could have
  changed (`rescore_positions`, `Rescorer`), so frame, chunk and read calls are float32's.
  Float16 rather than bfloat16 for this: the same speed on tensor cores, 11 significant bits
  instead of 8 (its margin shift 5.5 times smaller on the reference models, so far fewer frames
  near enough to the boundary to be rescored), and the published ESM-2 weights are float16:
  stored so, they are the originals.

Why not autocast (the `mixed` precision this replaces: float32 weights, residual stream and
attention, float16 matrix multiplications): autocast keeps no cast of a weight that needs no
gradient, so every batch cast every weight again (~450 MB per ESM-2 3B layer, ~16 GB a batch),
and the float32 residual stream, LayerNorms, rotary and attention moved twice the bytes of a
16-bit layer (bench/ops.py). Its only gain, a smaller shift of the scores, is what the
rescoring is for.

A float16 engine keeps one copy of each model, in float16. Its float32 pass converts the
weights of one module at a time as it runs it (`Float32Weights`): exactly, from the float16
values where they are the originals, and from float32 originals kept beside them where they
are not (DNABERT-S is published in float32).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from virnucpro.errors import UsageError

from virnucpro.shards import FrameWindow

if TYPE_CHECKING:
    from virnucpro.embed import EmbeddingEngine


@dataclass(frozen=True)
class Precision:
    """How an engine computes: its weights' and activations' dtype, and whether a scoring
    job embeds the frames near a decision boundary again in float32 (`Rescorer`)."""

    name: str
    dtype: torch.dtype
    rescored: bool


PRECISIONS = {
    "float32": Precision("float32", torch.float32, False),
    "bfloat16": Precision("bfloat16", torch.bfloat16, False),
    "float16": Precision("float16", torch.float16, True),
}


def resolve_precision(dtype: str | torch.dtype | Precision, device: torch.device) -> Precision:
    """'auto' is float16 on CUDA and float32 on the CPU, where 16 bits save little (no tensor
    cores) and float32 needs no rescoring."""
    if isinstance(dtype, Precision):
        return dtype
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype == "auto":
        return PRECISIONS["float16" if device.type == "cuda" else "float32"]
    if dtype not in PRECISIONS:
        raise UsageError(f"dtype {dtype!r} is not one of auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[dtype]


def set_numerics(device: torch.device) -> None:
    """What the precisions promise, made so on a GPU: float32 matrix products in float32 (no
    TF32: the rescoring must give float32's numbers), float16 ones summed in float32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- float32 weights


class Float32Weights:
    """The float32 weights of a model stored in 16 bits, for its float32 pass.

    `run(module, ...)` calls a module with its weights in float32: each converted from its
    16-bit value when that value is the original (converting is then exact), else the
    float32 original kept here. Only the module being run is converted, so the pass needs
    memory for one layer's float32 weights, not a second model.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        """Convert `model`'s float32 parameters to `dtype` in place, keeping the originals of
        those the conversion changes."""
        self._kept: dict[int, torch.Tensor] = {}
        self.converted = 0
        for param in model.parameters():
            if param.dtype != torch.float32:
                raise ValueError(f"Float32Weights needs float32 weights, not {param.dtype}")
            low = param.detach().to(dtype)
            if not torch.equal(low.to(torch.float32), param.detach()):
                self._kept[id(param)] = param.detach()
            param.data = low
            self.converted += 1

    @property
    def kept(self) -> int:
        """How many weights are kept in float32 beside their 16-bit copies."""
        return len(self._kept)

    def run(self, module: nn.Module, *args: Any) -> Any:
        """module(*args) with float32 weights, uncompiled (a float32 pass is rare: it is not
        worth a compilation of its own). The models take this as their `run`."""
        weights = {name: self._kept[id(param)] if id(param) in self._kept else param.float()
                   for name, param in module.named_parameters()}
        with torch.compiler.set_stance("force_eager"):
            return functional_call(module, weights, args)


# --------------------------------------------------------------------------- rescoring

# How far float16 may move a frame's margin P(virus) - P(others) from float32's, with room to
# spare: frames, and chunks (max P(virus) - max P(others) over their frames), within it of
# the decision boundary are embedded again in float32. Measured (README "Precision",
# bench/precision.py): the largest shift was 0.0060 over the reference data's 917 frames at
# both chunk sizes (bfloat16's: 0.036); on random models of the published shapes bfloat16's
# shift was 1.8 times its shift on the reference models (bench/agreement.py --cpu), so
# float16's is expected near 0.011 there: 0.02 leaves room for it.
RESCORE_MARGINS = {torch.float16: 0.02}
# A scoring job's float32 rescoring runs in batches gathered over up to this many windows
# (sooner when they fill the token budget); its saved batches end where a group ends, so a
# resumed job gathers the same groups, and rescores with the same numbers, as an
# uninterrupted one.
RESCORE_GROUP_WINDOWS = 4


def rescore_margin(precision: Precision) -> float | None:
    """The margin of a rescored precision (see RESCORE_MARGINS); None for the others."""
    return RESCORE_MARGINS[precision.dtype] if precision.rescored else None


def rescore_positions(scores: torch.Tensor, window: FrameWindow, margin: float
                      ) -> np.ndarray:
    """Positions in the window whose calls a 16-bit pass could have changed.

    - frames whose margin is within `margin` of 0 (or not a number: a 16-bit overflow);
    - in a chunk whose margin is within `margin` of 0, the frames that could hold its
      largest P(virus) or its largest P(others) (within `margin` of them): the chunk's call
      compares those two;
    - every frame of the shard's first and last chunks, which may continue in another shard
      (so their chunk margin is not known here).
    """
    frame_margin = (scores[:, 1] - scores[:, 0]).numpy()
    need = ~(np.abs(frame_margin) > margin)  # NaN compares False: rescored too
    keys = window.chunks if window.chunks is not None else list(range(len(window)))
    starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    for number, (start, stop) in enumerate(zip(starts, [*starts[1:], len(keys)])):
        chunk = scores[start:stop].numpy()
        best = chunk.max(axis=0)  # max P(others), max P(virus)
        if (number == 0 and window.start == 0) or (stop == len(keys) and window.final):
            need[start:stop] = True
        elif not abs(best[1] - best[0]) > margin:
            need[start:stop] |= ~(chunk < best - margin).all(axis=1)
    return np.flatnonzero(need)


@dataclass
class _Window:
    window: FrameWindow
    rows: torch.Tensor  # the 16-bit pass's rows, on the host
    need: np.ndarray  # positions to rescore


class Rescorer:
    """The frames a 16-bit pass may have called differently, embedded again in float32.

    Takes the engine's windows of rows (a scoring head's [P(others), P(virus), ...], on the
    host) and gives them back final, a group of windows at a time. The frames to rescore
    (`rescore_positions`) are gathered over the windows of a group, which ends once they fill
    the engine's float32 token budget, after RESCORE_GROUP_WINDOWS windows, or at the
    shard's end; the group's float32 pass then goes to the device behind the next window's
    batches, in the same thread (no thread of its own) and on the same stream, its rows
    copied back without waiting. The engine's one wait of the next window covers them, so
    the host still waits once per window (and once more at the end). Groups depend on the
    frames alone, so a job resumed where a group ended gathers the same groups after it.
    """

    def __init__(self, engine: EmbeddingEngine, head: Callable[[torch.Tensor], torch.Tensor],
                 margin: float, group_windows: int = RESCORE_GROUP_WINDOWS) -> None:
        self.engine, self.head, self.margin = engine, head, margin
        self.group_windows = group_windows
        self.budget = engine.budgets.esm

    def __call__(self, outputs: Iterable[tuple[FrameWindow, torch.Tensor]]
                 ) -> Iterator[tuple[FrameWindow, torch.Tensor, torch.Tensor]]:
        """(a group's windows joined, their rows, [n, 1]: 1.0 where a row was rescored)."""
        group: list[_Window] = []
        launched: tuple[list[_Window], torch.Tensor | None] | None = None
        tokens = 0
        for window, rows in outputs:
            if launched is not None:  # its rows arrived with this window's
                yield _finish(*launched)
                launched = None
            need = rescore_positions(rows[:, :2], window, self.margin)
            group.append(_Window(window, rows, need))
            tokens += self.engine.esm_tokens([window.proteins[i] for i in need])
            if tokens >= self.budget or len(group) >= self.group_windows or window.final:
                launched, group, tokens = self._launch(group), [], 0
        if group:
            launched = self._launch(group)
        if launched is not None:
            self.engine.synchronize()
            yield _finish(*launched)

    def _launch(self, group: list[_Window]) -> tuple[list[_Window], torch.Tensor | None]:
        """Queue the group's float32 pass and the copy of its rows to the host."""
        nucleotides = [part.window.nucleotides[i] for part in group for i in part.need]
        if not nucleotides:
            return group, None
        proteins = [part.window.proteins[i] for part in group for i in part.need]
        features = self.engine.embed_now(nucleotides, proteins, float32=True)
        return group, self.engine.to_host(self.head(features))


def _finish(group: list[_Window], exact: torch.Tensor | None
            ) -> tuple[FrameWindow, torch.Tensor, torch.Tensor]:
    """The group's rows with the rescored ones in place (`exact` has arrived)."""
    rows = torch.cat([part.rows for part in group])
    rescored = torch.zeros(len(rows), 1)
    if exact is not None:
        starts = np.cumsum([0] + [len(part.rows) for part in group])
        positions = torch.from_numpy(np.concatenate([part.need + start
                                                     for part, start in zip(group, starts)]))
        rows[positions] = exact
        rescored[positions] = 1.0
    return FrameWindow.joined([part.window for part in group]), rows, rescored
