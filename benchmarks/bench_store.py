"""What each piece of the store's fast path buys, against plain zarr, side by side in one run.

The store's fast path (egosynth/store/_fast.py, one switch: EGOSYNTH_STORE_FAST) is egosynth's
own chunk I/O for local stores. Issue 16 asks to keep each piece only where a benchmark shows
it pays. This benchmark times every piece against the path that replaces it when the piece is
gone, on the same clips, alternating on/off `--repeat` times (the machine's speed drifts over
minutes), and prints the median time of each and their ratio (off / on: > 1 = the piece pays):

- writer, array documents: `ClipWriter(direct=True)`'s constructor (the clip group's 13
  zarr.json documents written as files, made once per layout by zarr in memory) against
  `direct=False` (zarr creates the group and arrays);
- writer, chunk files: `write_frames` + `write_meta` + `complete` of a whole clip through
  `_fast.Frames.write` / `_fast.Direct.write` against zarr's array writes;
- reader, raw rgb frames (`_fast.Frames`): every T-frame window of every clip read into a
  batch row, against zarr reading the same frames out of its sharding codec;
- reader, shard-state cache (`_fast.ShardCache`): the same windows through `Frames` with the
  cache against a cache that keeps nothing (each read then stats, maps and checks the shard's
  index and its frames' crc32c again);
- reader, Blosc chunks (`_fast.Direct`): every window of depth, instance and part, against
  zarr.

The clips are real renders: the demo scene set (procedural rooms, mesh backend, in process),
so the codecs see rendered depth and masks. The render time per clip is printed too, to put
the writer's figures in proportion (the NeRF backend renders ~100x slower than the mesh one).
Page cache warm throughout (each piece reads what was just written or read).

    .venv/bin/python benchmarks/bench_store.py [--clips 2] [--seconds 4] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from egosynth.store import _fast

MASKS = ("depth", "instance", "part")


@contextmanager
def fast_path(on: bool) -> Iterator[None]:
    """The store's one switch, set for the duration (as tests/conftest.py does)."""
    before = _fast.ENABLED
    _fast.ENABLED = on
    try:
        yield
    finally:
        _fast.ENABLED = before


@contextmanager
def shard_cache(cache: _fast.ShardCache) -> Iterator[None]:
    """Readers use `cache` as the process's shard-state cache for the duration."""
    before = _fast.SHARDS
    _fast.SHARDS = cache
    try:
        yield
    finally:
        _fast.SHARDS = before


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def render_clips(tmp: Path, clips: int, seconds: float, width: int, height: int) -> tuple:
    """The demo set rendered in this process (mesh backend); (store path, render s per clip)."""
    from egosynth.config import DEFAULT_SCENE_SET, load_scene_set
    from egosynth.orchestration import render_set

    sset = load_scene_set(DEFAULT_SCENE_SET)
    res = sset.resolution.model_copy(update={"width": width, "height": height})
    sset = sset.model_copy(update={"clip_seconds": seconds, "resolution": res})
    path = tmp / "rendered.zarr"
    report = render_set(sset, path, clips_per_scene=clips, workers=0, progress=False)
    return path, report.render_s / max(len(report.done), 1)


class Piece:
    """One fast-path piece: the same work with it (mode "on") and without it ("off").

    `work(mode, prepared)` does the timed work and returns how many units it did; `prepare(mode)`
    (untimed) makes what it needs first.
    """

    def __init__(
        self,
        name: str,
        unit: str,
        work: Callable[[str, Any], int],
        prepare: Callable[[str], Any] = lambda mode: None,
    ) -> None:
        self.name, self.unit, self.work, self.prepare = name, unit, work, prepare
        self.times: dict[str, list[float]] = {"on": [], "off": []}
        self.count = 0

    def run_once(self) -> None:
        for mode in ("on", "off"):
            prepared = self.prepare(mode)
            t0 = time.perf_counter()
            self.count = self.work(mode, prepared)
            self.times[mode].append(time.perf_counter() - t0)

    def row(self) -> str:
        on, off = (statistics.median(self.times[m]) for m in ("on", "off"))
        per = 1e3 / max(self.count, 1)
        return (
            f"  {self.name:46s} {on * per:9.3f} {off * per:9.3f} ms/{self.unit:6s} {off / on:6.2f}x"
        )


def writer_pieces(src, tmp: Path) -> list[Piece]:
    """The writer's two pieces over every clip of the source store `src` (a ClipStore)."""
    from egosynth.store import META_ARRAYS, ClipWriter, prepare_store

    keep = ("scene", "seed", "fps", "rig", "labels")
    clips = []
    for cid in src.clip_ids():
        c = src.clip(cid)
        clips.append((cid, c.n_frames, c.read(), {k: c.attrs[k] for k in keep if k in c.attrs}))
    h, w = clips[0][2]["rgb"].shape[2:4]
    stores = {mode: tmp / f"write_{mode}.zarr" for mode in ("on", "off")}
    for path in stores.values():
        prepare_store(path, "bench", {})

    def writers(mode: str, _: Any = None) -> list:
        direct = mode == "on"
        return [ClipWriter(stores[mode], cid, n, h, w, a, direct=direct) for cid, n, _, a in clips]

    def write(mode: str, ws: list) -> int:
        for wr, (_, n, data, _) in zip(ws, clips, strict=True):
            for s in range(0, n, wr.chunk_frames):
                e = s + wr.chunk_frames
                wr.write_frames(s, {k: data[k][s:e] for k in ("rgb", "depth", "instance", "part")})
            wr.write_meta({k: data[k] for k in META_ARRAYS}, data["intrinsics"])
            wr.complete()
        return len(ws)

    return [
        Piece("writer: array documents (constructor)", "clip", lambda m, _: len(writers(m))),
        Piece("writer: chunk files (frames, meta, complete)", "clip", write, writers),
    ]


def windows(clip, length: int, stride: int) -> list[int]:
    return list(range(0, clip.n_frames - length + 1, stride))


def reader_pieces(path: Path, length: int, stride: int) -> list[Piece]:
    """The reader's three pieces over every window of every clip of the store at `path`."""
    from egosynth.store import ClipStore

    clips = {}
    for mode in ("on", "off"):
        with fast_path(mode == "on"):
            store = ClipStore(path)
            clips[mode] = [store.clip(c) for c in store.clip_ids()]
            for c in clips[mode]:  # open every array now: steady state, as a loader's epoch 2
                for name in ("rgb", "depth", "instance", "part"):
                    c.layout(name)

    def read(names: tuple[str, ...]) -> Callable[[str, Any], int]:
        """Every window of `names` through the store's readers with the switch on or off."""

        def work(mode: str, _: Any) -> int:
            n = 0
            with fast_path(mode == "on"):
                for c in clips[mode]:
                    for name in names:
                        shape, dtype = c.layout(name)
                        buf = np.empty((length, *shape[1:]), dtype)
                        for s in windows(c, length, stride):
                            c.read_into(name, s, buf)
                            n += 1
            return n

        return work

    rgb = read(("rgb",))
    forgetful = _fast.ShardCache(states=0, maps=0)

    def rgb_with_or_without_cache(mode: str, _: Any) -> int:
        """Raw frames with the fast path on: the process's shard cache ("on") or none."""
        if mode == "on":
            return rgb("on", None)
        with shard_cache(forgetful):
            return rgb("on", None)

    return [
        Piece("reader: raw rgb frames (Frames)", "window", rgb),
        Piece("reader: shard-state cache (ShardCache)", "window", rgb_with_or_without_cache),
        Piece("reader: Blosc chunks (Direct; 3 arrays)", "window", read(MASKS)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=2, help="clips per scene (2 scenes)")
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--length", type=int, default=8, help="window length T")
    ap.add_argument("--stride", type=int, default=4, help="window stride")
    ap.add_argument("--repeat", type=int, default=5, help="alternating on/off runs per piece")
    args = ap.parse_args()
    if not _fast.enabled():
        ap.error("run with the fast path on (EGOSYNTH_STORE_FAST unset): it toggles it itself")

    from egosynth.store import ClipStore

    print(f"load average at start: {_load()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        path, render_s = render_clips(tmp, args.clips, args.seconds, args.width, args.height)
        src = ClipStore(path)
        first = src.clip(src.clip_ids()[0])
        print(
            f"{len(src.clip_ids())} clips x {first.n_frames} stereo frames, "
            f"{args.width}x{args.height}, chunk_frames {first.attrs['chunk_frames']}; mesh "
            f"render {1e3 * render_s:.0f} ms per clip; windows T={args.length} "
            f"stride {args.stride}; median of {args.repeat} alternating runs"
        )
        pieces = writer_pieces(src, tmp) + reader_pieces(path, args.length, args.stride)
        for piece in pieces:
            piece.run_once()  # warm-up: imports, zarr's caches, first maps and checks
            piece.times = {"on": [], "off": []}
        for _ in range(args.repeat):
            for piece in pieces:
                piece.run_once()
        print(f"\n  {'piece':46s} {'with it':>9s} {'without':>9s} {'':9s} {'ratio':>6s}")
        for piece in pieces:
            print(piece.row())
        print(
            "\n  ratio = time without the piece / time with it (> 1: the piece pays). Writer "
            "rows per clip: compare with the render time per clip above."
        )
        print(f"load average at end: {_load()}")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
