"""The C heap of a step: flat over the work done, reused within an embedding window.

glibc serves a large buffer from mmap (returned to the system when freed) or from the heap
(kept for reuse), by its size against a threshold that it raises each time such a buffer is
freed; the large buffers of varying size a step churns through (tokenised windows,
activations, scores) then come from the heap, where freed space fragments and the process's
memory creeps up with the work done (+78 MB over 300,000 frames of an embedding job,
measured). Every step fixes the threshold low (`keep_flat`): memory stays flat.

The embedding engine's activations are those buffers too: tens of MB, several per layer and
batch. Each mmap'd anew costs a page fault per 4 KB and the zeroing of it (an embedding job
with small models spent ~20% of its CPU time in the kernel so, measured: 6.9 M page faults
for 2,000 frames). While it embeds, the engine raises the threshold to its maximum and lets
the heap keep what is freed (`reused`), so a window's batches reuse the same memory, and gives
the heap's free memory back to the system after each window (`release`): flat across
windows, reused within one.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from functools import cache

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024
# glibc's defaults, and the largest mmap threshold it accepts (HEAP_MAX_SIZE / 2 on 64 bits).
TRIM_THRESHOLD = 128 * 1024
REUSED_MMAP_THRESHOLD = 32 * 1024 * 1024
REUSED_TRIM_THRESHOLD = 1 << 30  # (mallopt takes a C int)


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None where the C library is not glibc (then every function here is a no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _mallopt(parameter: int, value: int) -> None:
    libc = _libc()
    if libc is not None:
        libc.mallopt(parameter, value)


def keep_flat() -> None:
    """Serve buffers of 256 KB and more from mmap, returned to the system when freed, and stop
    glibc's adjustment of that threshold (see the module's docstring)."""
    _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


@contextlib.contextmanager
def reused() -> Iterator[None]:
    """Within: buffers up to 32 MB from the heap, freed memory kept for reuse (call `release`
    between units of work). After: `keep_flat`'s policy again, free memory given back."""
    _mallopt(_M_MMAP_THRESHOLD, REUSED_MMAP_THRESHOLD)
    _mallopt(_M_TRIM_THRESHOLD, REUSED_TRIM_THRESHOLD)
    try:
        yield
    finally:
        _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        keep_flat()
        release()


def release() -> None:
    """Give the heap's free memory back to the system (glibc's malloc_trim: whole free pages,
    wherever they lie)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
