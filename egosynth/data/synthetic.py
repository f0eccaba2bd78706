"""Small synthetic clip stores whose every value says where it came from (tests, benchmarks).

Written only through egosynth.store's writer API. In clip number `k`, frame `t`, eye `e`:
rgb channels = (t % 256, k % 256, (e * 128 + x + y) % 256), depth = t + e / 2,
instance = t, part = e + 1, cam_to_world translation = (t, e, k), time = t / fps,
intrinsics fx = 100 + e. A window read back can therefore be checked value by value, and a
frame never written (zeros) is told apart from a written one for t > 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FPS = 10.0


def pattern_frames(k: int, t0: int, t1: int, height: int, width: int) -> dict[str, NDArray]:
    """Image arrays of frames [t0, t1) of clip number `k`."""
    t = np.arange(t0, t1)[:, None, None, None]
    e = np.arange(2)[None, :, None, None]
    yx = (np.arange(height)[:, None] + np.arange(width)[None, :])[None, None]
    shape = (t1 - t0, 2, height, width)
    rgb = np.empty((*shape, 3), np.uint8)
    rgb[..., 0] = np.broadcast_to(t % 256, shape)
    rgb[..., 1] = k % 256
    rgb[..., 2] = np.broadcast_to((e * 128 + yx) % 256, shape)
    return {
        "rgb": rgb,
        "depth": np.broadcast_to(t + e / 2, shape).astype(np.float16),
        "instance": np.broadcast_to(t, shape).astype(np.uint16),
        "part": np.broadcast_to(e + 1, shape).astype(np.uint8),
    }


def pattern_meta(k: int, n: int) -> tuple[dict[str, NDArray], NDArray]:
    """Per-frame pose/gaze arrays and intrinsics of clip number `k` with `n` frames."""
    c2w = np.tile(np.eye(4, dtype=np.float32), (n, 2, 1, 1))
    c2w[:, :, 0, 3] = np.arange(n)[:, None]
    c2w[:, :, 1, 3] = np.arange(2)[None, :]
    c2w[:, :, 2, 3] = k
    head = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    head[:, 0, 3] = np.arange(n)
    meta = {
        "cam_to_world": c2w,
        "time": np.arange(n) / FPS,
        "head_to_world": head,
        "fixation_point": np.stack([np.arange(n), np.zeros(n), np.full(n, k)], 1),
        "fixation_object": np.full(n, k, np.int32),
        "gaze_kind": (np.arange(n) % 3).astype(np.int8),
        "walking": np.arange(n) % 2 == 0,
    }
    k_mat = np.tile(np.eye(3, dtype=np.float32), (2, 1, 1))
    k_mat[:, 0, 0] = [100.0, 101.0]
    return meta, k_mat


def prepare(path: str | Path) -> None:
    from egosynth.store import prepare_store

    prepare_store(path, "synthetic", {"set_config": {"name": "synthetic"}}, overwrite=True)


def write_clip(
    path: str | Path,
    k: int,
    n_frames: int,
    height: int = 4,
    width: int = 6,
    chunk_frames: int | None = 4,
    frames_fn: Callable[[int, int, int, int, int], dict[str, NDArray]] = pattern_frames,
    between_batches: Callable[[], None] | None = None,
    clip_id: str | None = None,
    rgb: str = "raw",
) -> str:
    """Write clip number `k` (id `clip_id` or c0000k) batch by batch, then mark it complete
    (`rgb`: the store's rgb layout, "raw" or "lz4")."""
    from egosynth.store import ClipWriter

    cid = clip_id or f"c{k:05d}"
    w = ClipWriter(
        path,
        cid,
        n_frames,
        height,
        width,
        {"scene": "synthetic", "seed": k, "fps": FPS},
        chunk_frames=chunk_frames,
        rgb=rgb,
    )
    step = w.chunk_frames
    for t0 in range(0, n_frames, step):
        t1 = min(n_frames, t0 + step)
        w.write_frames(t0, frames_fn(k, t0, t1, height, width))
        if between_batches is not None:
            between_batches()
    meta, k_mat = pattern_meta(k, n_frames)
    w.write_meta(meta, k_mat)
    w.complete()
    return cid


def write_store(
    path: str | Path,
    lengths: Sequence[int],
    height: int = 4,
    width: int = 6,
    chunk_frames: int | None = 4,
    finalize: bool = True,
    delay_s: float = 0.0,
    frames_fn: Callable[[int, int, int, int, int], dict[str, NDArray]] = pattern_frames,
    rgb: str = "raw",
) -> list[str]:
    """A store with one clip per entry of `lengths`; `delay_s` sleeps between frame batches."""
    from egosynth.store import finalize_store

    prepare(path)
    pause = (lambda: time.sleep(delay_s)) if delay_s > 0 else None
    ids = [
        write_clip(path, k, n, height, width, chunk_frames, frames_fn, pause, rgb=rgb)
        for k, n in enumerate(lengths)
    ]
    if finalize:
        finalize_store(path, ids)
    return ids
