"""Page-aligned numpy buffers for frame copies (the store's readers and the loader's batches).

Why: on AMD EPYC (this machine: ERMS/FSRM), glibc's memcpy copies blocks of a few KiB to a few
MiB with `rep movsb`, which runs ~8x slower when the destination lies 1-31 bytes past the
source modulo 4096 (benchmarks/bench_memcpy.py: 8 frames of 96 KiB in ~35 us, ~270-290 us at
those offsets). A raw rgb frame in
a shard file starts 4 bytes (its crc32c) further into a page than the frame before, and frame
sizes are usually whole pages (2*H*W*3 for 128x96, 128x128, 256x192, ...), while numpy's
buffers from mmap (every allocation over glibc's 32 MiB threshold, and the first large ones)
start 16 bytes into a page: half of each shard's frames then take the slow case. A
page-aligned destination puts every frame 0-28 bytes *before* its source modulo 4096.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

PAGE = 4096


def empty_aligned(shape: tuple[int, ...], dtype: Any) -> NDArray:
    """`np.empty(shape, dtype)`, C-contiguous, its first byte on a page boundary."""
    return _aligned_in(_owner(_nbytes(shape, dtype)), shape, dtype)


def _nbytes(shape: tuple[int, ...], dtype: Any) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def _owner(nbytes: int) -> NDArray:
    """Raw bytes with room for `nbytes` from a page boundary on."""
    return np.empty(nbytes + PAGE, np.uint8)


def _aligned_in(owner: NDArray, shape: tuple[int, ...], dtype: Any) -> NDArray:
    """The (shape, dtype) view of `owner` that starts on its first page boundary."""
    start = -owner.ctypes.data % PAGE
    return owner[start : start + _nbytes(shape, dtype)].view(dtype).reshape(shape)


class BufferPool:
    """Page-aligned buffers that are handed out again once nothing outside the pool holds them.

    Why: a fresh batch buffer's pages are zeroed by the kernel on first touch. For the loader's
    12 MiB batches (16 windows of 8 stereo 128x128 frames) that cost ~25-30 us per 768 KiB
    window here, a third of what reading the window costs (benchmarks/bench_loader.py), and
    glibc gives large buffers back to the OS when they are freed, so every batch paid it.

    Why it is safe: every array `take` returns is a view of a pooled numpy array that owns its
    memory, and so is every view of it (numpy points a view of a view at the owner), a torch
    tensor made with `torch.from_numpy`, a DLPack or buffer-protocol export: each holds a
    reference to the owner. An owner referenced by the pool alone is reachable by no one, so
    its memory can be written again. Code that keeps a raw address without a reference
    (ctypes pointers) is not covered, as with any recycled buffer.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep  # owners kept per size, in use or free
        self._owners: dict[int, list[NDArray]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"keep": self.keep}  # pickled into another process: empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["keep"])  # type: ignore[misc]

    def take(self, shape: tuple[int, ...], dtype: Any) -> NDArray:
        """An uninitialised page-aligned C-contiguous array, as `empty_aligned` gives."""
        nbytes = _nbytes(shape, dtype)
        with self._lock:
            owners = self._owners.setdefault(nbytes, [])
            owner = next((owners[i] for i in range(len(owners)) if _free(owners, i)), None)
            if owner is None:
                owner = _owner(nbytes)
                if len(owners) < self.keep:  # else handed out unpooled: freed when dropped
                    owners.append(owner)
        return _aligned_in(owner, shape, dtype)


def _free(owners: list[NDArray], i: int) -> bool:
    """Whether `owners[i]` is referenced by that list alone."""
    return _refs(owners, i) <= _ALONE


def _refs(owners: list[NDArray], i: int) -> int:
    return sys.getrefcount(owners[i])


# What `_refs` counts for an array a list alone holds, measured the same way rather than
# assumed (CPython versions count the references of a call's arguments differently).
_ALONE = _refs([np.empty(0)], 0)
