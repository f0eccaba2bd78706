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
from typing import Any

import numpy as np
from numpy.typing import NDArray

PAGE = 4096


def empty_aligned(shape: tuple[int, ...], dtype: Any) -> NDArray:
    """`np.empty(shape, dtype)`, C-contiguous, its first byte on a page boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + PAGE, np.uint8)
    start = -raw.ctypes.data % PAGE
    return raw[start : start + nbytes].view(dtype).reshape(shape)
