"""Assembling batches of windows from clip stores (numpy only; layout: egosynth.data.core).

`WindowReader` reads through the store's public reader API (egosynth.store.reader, imported
lazily: the only zarr importer): raw rgb frames straight from the page cache into the batch,
Blosc chunks through `ChunkCache`, a byte-limited LRU cache of decoded chunks.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.buffers import BufferPool, empty_aligned
from egosynth.data.index import ClipInfo, WindowSpec
from egosynth.errors import EgosynthError
from egosynth.store.schema import (
    ARRAY_NAMES,
    CLIP_ARRAYS,
    EYED_FRAME_ARRAYS,
    FRAME_ARRAYS,
    IMAGE_ARRAYS,
)

# The store's arrays, named once in egosynth.store.schema: the image arrays, the per-frame
# arrays (those with an eye axis after time among them), and the one per-clip array
# (intrinsics, with an eye axis first).
IMAGE_FIELDS = tuple(IMAGE_ARRAYS)
EYED_FRAME_FIELDS = EYED_FRAME_ARRAYS
FRAME_FIELDS = FRAME_ARRAYS
CLIP_FIELDS = CLIP_ARRAYS
ALL_FIELDS = ARRAY_NAMES
DEFAULT_FIELDS = ("rgb", "depth", "cam_to_world", "intrinsics", "time")
ID_FIELDS = ("window", "clip", "source", "start")
DEFAULT_CACHE_BYTES = 256 << 20
_READ_ERRORS = (EgosynthError, ValueError, RuntimeError, OSError, KeyError)
MAX_AUTO_THREADS = 4  # decode threads per reader when not set (chunks of one batch)


# --------------------------------------------------------------------------- cache
class ChunkCache:
    """LRU cache of decoded chunks, bounded by the bytes of the arrays it holds.

    Thread-safe. A chunk larger than the whole limit is passed through uncached.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise EgosynthError(f"loader: cache_bytes = {max_bytes!r}: must be >= 0")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = self.misses = 0
        self._data: OrderedDict[Any, NDArray] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into another process: same limit, empty (chunks and locks stay behind).
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])  # type: ignore[misc]

    def get(self, key: Any) -> NDArray | None:
        with self._lock:
            arr = self._data.get(key)
            if arr is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return arr

    def put(self, key: Any, arr: NDArray) -> None:
        with self._lock:
            if arr.nbytes > self.max_bytes or key in self._data:
                return
            self._data[key] = arr
            self.nbytes += arr.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._data.popitem(last=False)
                self.nbytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._data)


# --------------------------------------------------------------------------- reader
def _eye_slice(eyes: Sequence[int]) -> slice:
    eyes = tuple(int(e) for e in eyes)
    if eyes == (0, 1):
        return slice(0, 2)
    if eyes in ((0,), (1,)):
        return slice(eyes[0], eyes[0] + 1)
    raise EgosynthError(f"loader: eyes = {eyes!r}: must be (0,), (1,) or (0, 1) (0 = left)")


def check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    fields = tuple(fields)
    bad = [f for f in fields if f not in ALL_FIELDS]
    if bad or not fields or len(set(fields)) != len(fields):
        raise EgosynthError(
            f"loader: fields = {list(fields)!r}: must be distinct names from {list(ALL_FIELDS)}"
        )
    return fields


@dataclass
class _ClipHandle:
    clip: Any  # egosynth.store.Clip
    arrays: dict[str, Any] = field(default_factory=dict)


class WindowReader:
    """Reads batches of windows from stores through egosynth.store's reader API.

    Stores are opened lazily in the process that reads (so a reader pickles cheaply into
    DataLoader workers or Ray tasks); decoded chunks go through a byte-limited LRU cache.
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        fields: Sequence[str] = DEFAULT_FIELDS,
        eyes: Sequence[int] = (0, 1),
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        decode_threads: int | None = None,
    ) -> None:
        self.sources = tuple(str(s) for s in sources)
        bad = not isinstance(decode_threads, int) or decode_threads < 1
        if decode_threads is not None and bad:
            raise EgosynthError(
                f"loader: decode_threads = {decode_threads!r}: must be an integer >= 1 or None"
            )
        self.decode_threads = decode_threads
        # Set by WindowLoader when every chunk of its clips fits in the cache: then windows
        # that own their chunks go through the cache from their second use on (`_seen`), and
        # later epochs decode nothing.
        self.cache_everything = False
        self._seen: set[tuple[int, str, str, int]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self.fields = check_fields(fields)
        self.eyes = tuple(int(e) for e in eyes)
        self._eye = _eye_slice(self.eyes)
        self.cache_bytes = cache_bytes
        self.cache = ChunkCache(cache_bytes)
        # image batch buffers, reused once the caller drops a batch (buffers.py: fresh pages
        # cost the kernel's zeroing, a third of a raw window's read)
        self.buffers = BufferPool()
        self._stores: dict[int, Any] = {}
        self._clips: dict[tuple[int, str], _ClipHandle] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Open handles and cached chunks stay in the process that made them.
        state = self.__dict__.copy()
        state.update(_stores={}, _clips={}, _pool=None, _seen=set())  # the cache pickles empty
        return state

    def refresh(self) -> None:
        """Forget open store handles (live mode: reopen to see clips completed since)."""
        self._stores.clear()

    def store(self, source: int) -> Any:
        """The egosynth.store.ClipStore of `sources[source]`, opened once per process."""
        if source not in self._stores:
            from egosynth.store import ClipStore

            self._stores[source] = ClipStore(self.sources[source])
        return self._stores[source]

    def _handle(self, info: ClipInfo) -> _ClipHandle:
        key = (info.source, info.clip_id)
        h = self._clips.get(key)
        if h is None:
            clip = self.store(info.source).clip(info.clip_id)  # refuses incomplete clips
            if clip.n_frames != info.n_frames:
                raise EgosynthError(
                    f"{self.sources[info.source]}: clip {info.clip_id!r} has n_frames = "
                    f"{clip.n_frames}, the index says {info.n_frames} (store rewritten?)"
                )
            h = self._clips[key] = _ClipHandle(clip)
        return h

    def _chunk_frames(self, h: _ClipHandle, name: str) -> int:
        """Frames per chunk of one array (from the array itself: arrays may differ)."""
        return h.clip.chunk_frames(name)

    @contextmanager
    def _named_errors(self, info: ClipInfo, name: str, start: Any, stop: Any) -> Iterator[None]:
        """A store read's failure as one line naming the store, clip, array and frames."""
        try:
            yield
        except _READ_ERRORS as exc:
            raise self._named(exc, info, name, start, stop) from None

    def _named(
        self, exc: Exception, info: ClipInfo, name: str, start: Any, stop: Any
    ) -> EgosynthError:
        msg = str(exc).split("\n")[0]
        return EgosynthError(
            f"{self.sources[info.source]}: clip {info.clip_id}/{name} frames "
            f"{start}:{stop}: corrupt or unreadable ({msg})"
        )

    def _read(self, info: ClipInfo, h: _ClipHandle, name: str, sel: slice) -> NDArray:
        # Clip.read: local stores decode chunk files directly (checksummed), URLs via zarr.
        with self._named_errors(info, name, sel.start, sel.stop):
            if sel.start is None:  # a small array, whole
                return h.clip.read(names=[name])[name]
            return h.clip.read(sel.start, sel.stop, [name])[name]

    def _read_into(
        self, info: ClipInfo, h: _ClipHandle, name: str, start: int, dst: NDArray, step: int = 1
    ) -> None:
        try:  # not _named_errors: a context manager costs ~3 us, run per window
            h.clip.read_into(name, start, dst, step)
        except _READ_ERRORS as exc:
            raise self._named(exc, info, name, start, start + (len(dst) - 1) * step + 1) from None

    def _read_window(
        self, info: ClipInfo, h: _ClipHandle, name: str, start: int, skip: int, dst: NDArray
    ) -> None:
        """One window's frames of a frame-addressable array straight into its batch row."""
        if self._eye == slice(0, 2):
            self._read_into(info, h, name, start, dst, skip)
            return
        both = empty_aligned((len(dst), 2, *dst.shape[2:]), dst.dtype)  # frames: both eyes
        self._read_into(info, h, name, start, both, skip)
        dst[...] = both[:, self._eye]

    def _read_windows(
        self,
        info: ClipInfo,
        h: _ClipHandle,
        name: str,
        rows: list[int],
        starts: list[int],
        skip: int,
        dst: NDArray,
    ) -> None:
        """Windows of one clip into their batch rows, each chunk file looked up once."""
        with h.clip.steady_files():
            for row, s in zip(rows, starts, strict=True):
                self._read_window(info, h, name, s, skip, dst[row])

    def _whole(self, info: ClipInfo, h: _ClipHandle, name: str) -> NDArray:
        """A small array read whole once per clip (poses, time, gaze, intrinsics)."""
        key = (info.source, info.clip_id, name)
        arr = self.cache.get(key)
        if arr is None:
            arr = self._read(info, h, name, slice(None))
            self.cache.put(key, arr)
        return arr

    def _plan_image(
        self,
        jobs: list[Callable[[], None]],
        info: ClipInfo,
        h: _ClipHandle,
        name: str,
        rows: list[int],
        starts: list[int],
        spec: WindowSpec,
        dst: NDArray,
    ) -> Callable[[], None]:
        """Queue the decodes one clip's windows need (into `jobs`); return the copy step.

        Arrays stored as raw frames (`Clip.frame_addressable`) are read window by window
        straight into the batch: each frame is one copy out of the OS page cache, which is
        the cache for them, as for a memmap.
        Windows that never overlap (stride >= span) and are whole chunks own those chunks:
        no other window of the epoch reads them, so they decode straight into the batch (no
        cache, no copy) - unless the cache can keep every chunk until the next epoch and this
        is the chunks' second use (admission on second use: a single pass never pays for
        filling the cache; see `cache_everything`). Every other window reads decoded chunks
        through the cache; missing chunks are decoded by the jobs, then the returned step
        copies each window's frames into `dst`.
        """
        if h.clip.frame_addressable(name):
            # a few jobs of consecutive windows, each thread taking two or more per batch
            per = max(1, -(-len(dst) // (2 * self.threads())))
            for lo in range(0, len(rows), per):
                group = rows[lo : lo + per], starts[lo : lo + per]
                jobs.append(partial(self._read_windows, info, h, name, *group, spec.skip, dst))
            return lambda: None
        cf, t = self._chunk_frames(h, name), spec.length
        own = spec.stride >= spec.span and spec.skip == 1 and self._eye == slice(0, 2)
        direct = [own and s % cf == 0 and (t % cf == 0 or s + t == info.n_frames) for s in starts]
        if self.cache_everything:
            for i, s in enumerate(starts):
                if direct[i]:
                    keys = {
                        (info.source, info.clip_id, name, c)
                        for c in range(s // cf, -(-(s + t) // cf))
                    }
                    direct[i] = not keys <= self._seen
                    self._seen |= keys
        for row, s, d in zip(rows, starts, direct, strict=True):
            if d:
                jobs.append(partial(self._read_into, info, h, name, s, dst[row]))
        cached = np.array([s for s, d in zip(starts, direct, strict=True) if not d], np.int64)
        frames = cached[:, None] + np.arange(t) * spec.skip  # one array op for all windows
        chunks: dict[int, NDArray] = {}
        missing = []
        for c in np.unique(frames // cf).tolist():
            arr = self.cache.get((info.source, info.clip_id, name, c))
            if arr is None:
                missing.append(c)
            else:
                chunks[c] = arr
        jobs.extend(self._decode_jobs(info, h, name, missing, chunks))

        def copy() -> None:
            for row, s, d in zip(rows, starts, direct, strict=True):
                if d:
                    continue
                k = 0
                while k < t:  # frames of one chunk form one strided slice: one copy each
                    f = s + k * spec.skip
                    c, local = divmod(f, cf)
                    n = min(t - k, (cf - 1 - local) // spec.skip + 1)
                    sl = slice(local, local + (n - 1) * spec.skip + 1, spec.skip)
                    dst[row, k : k + n] = chunks[c][sl, self._eye]
                    k += n
            for c in missing:
                self.cache.put((info.source, info.clip_id, name, c), chunks[c])

        return copy

    def _decode_jobs(
        self, info: ClipInfo, h: _ClipHandle, name: str, missing: list[int], got: dict
    ) -> list[Callable[[], None]]:
        """Jobs that decode chunks `missing` of an image array into `got` (chunk -> array)."""
        cf = self._chunk_frames(h, name)
        # A local store's direct reads (fast path on) cost little per call: one chunk each,
        # into a buffer of its own (eviction frees it whole; under 4 MiB, so numpy does not ask
        # for huge pages, whose first-touch faults stalled for ms here). Through zarr (URLs, or
        # the fast path off), one read call per run of consecutive chunks: its per-call cost
        # dominates small reads, and it decodes the chunks of one call concurrently.
        if h.clip.direct:
            shape, dtype = h.clip.layout(name)
            jobs = []
            for c in missing:
                lo, hi = c * cf, min((c + 1) * cf, info.n_frames)
                got[c] = empty_aligned((hi - lo, *shape[1:]), dtype)
                jobs.append(partial(self._read_into, info, h, name, lo, got[c]))
            return jobs

        def read_run(lo: int, hi: int) -> None:
            data = self._read(info, h, name, slice(lo * cf, min(hi * cf, info.n_frames)))
            for c in range(lo, hi):
                got[c] = data[(c - lo) * cf : (c - lo + 1) * cf]

        jobs, run_start = [], 0
        for i in range(1, len(missing) + 1):
            if i == len(missing) or missing[i] != missing[i - 1] + 1:
                jobs.append(partial(read_run, missing[run_start], missing[i - 1] + 1))
                run_start = i
        return jobs

    def _run(self, jobs: list[Callable[[], None]]) -> None:
        """Run a batch's read and decode jobs on the reader's decode threads.

        File reads, checksums and Blosc decompression release the GIL, so with several
        threads the jobs of one batch run in parallel. Each thread takes the next job until
        none is left: one hand-off per thread and batch, as waking a thread cost ~90 us here,
        close to a whole window's read. Even one decode thread beats decoding in the main
        thread: there numcodecs hands each chunk to Blosc's own thread team, whose hand-offs
        cost more than they save on ~1 MiB chunks (measured here: 273 us vs 155 us for a
        768 KiB rgb chunk), while in any other thread it decodes single-threaded. The first
        failing job's error is raised (as if the jobs ran in order).
        """
        if not jobs:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads(), thread_name_prefix="egosynth-decode")
        todo = iter(enumerate(jobs))
        lock = threading.Lock()
        failed: list[tuple[int, BaseException]] = []

        def drain() -> None:
            while True:
                with lock:
                    i, job = next(todo, (-1, None))
                if job is None:
                    return
                try:
                    job()
                except BaseException as exc:  # re-raised below, in job order
                    failed.append((i, exc))
                    return  # later jobs of this thread's share go to the others

        for future in [self._pool.submit(drain) for _ in range(min(self.threads(), len(jobs)))]:
            future.result()
        if failed:
            raise min(failed, key=lambda f: f[0])[1]

    def threads(self) -> int:
        """Decode threads this reader uses (`decode_threads`, or the CPUs it may run on)."""
        if self.decode_threads is not None:
            return self.decode_threads
        return min(MAX_AUTO_THREADS, len(os.sched_getaffinity(0)))

    def read_batch(
        self, windows: Sequence[tuple[ClipInfo, int]], spec: WindowSpec
    ) -> dict[str, NDArray]:
        """Stack windows [(clip, first frame), ...] into one batch dict (layout: module doc)."""
        b, t, e = len(windows), spec.length, len(self.eyes)
        out: dict[str, NDArray] = {}
        offsets = np.arange(t) * spec.skip
        # Group windows by clip so each clip's chunks are gathered in one pass.
        by_clip: dict[tuple[int, str], list[int]] = {}
        for i, (info, _) in enumerate(windows):
            by_clip.setdefault((info.source, info.clip_id), []).append(i)
        jobs: list[Callable[[], None]] = []  # decodes of the whole batch, run together
        copies: list[Callable[[], None]] = []
        for rows in by_clip.values():
            info = windows[rows[0]][0]
            h = self._handle(info)
            starts = [windows[i][1] for i in rows]
            for name in self.fields:
                if name in IMAGE_FIELDS:
                    if name not in out:
                        shape, dtype = h.clip.layout(name)
                        # page-aligned: frame copies avoid a slow memcpy case (buffers.py)
                        out[name] = self.buffers.take((b, t, e, *shape[2:]), dtype)
                    plan = self._plan_image(jobs, info, h, name, rows, starts, spec, out[name])
                    copies.append(plan)
                else:
                    self._fill_small(out, name, info, h, rows, starts, offsets, b, e)
        self._run(jobs)
        for copy in copies:
            copy()
        if "rgb" in out:  # (B, T, E, H, W, 3) in memory -> (B, T, E, 3, H, W) view, no copy
            out["rgb"] = out["rgb"].transpose(0, 1, 2, 5, 3, 4)
        return out

    def _fill_small(
        self,
        out: dict[str, NDArray],
        name: str,
        info: ClipInfo,
        h: _ClipHandle,
        rows: list[int],
        starts: list[int],
        offsets: NDArray,
        b: int,
        e: int,
    ) -> None:
        whole = self._whole(info, h, name)
        if name in CLIP_FIELDS:
            val = whole[self._eye]
            if name not in out:
                out[name] = np.empty((b, *val.shape), whole.dtype)
            out[name][rows] = val
            return
        idx = np.asarray(starts)[:, None] + offsets[None, :]
        val = whole[idx]
        if name in EYED_FRAME_FIELDS:
            val = val[:, :, self._eye]
        if name not in out:
            out[name] = np.empty((b, *val.shape[1:]), whole.dtype)
        out[name][rows] = val


def list_clips(reader: WindowReader, source_ids: Sequence[int] | None = None) -> list[ClipInfo]:
    """Complete clips of the reader's stores with their frame counts, in (store, id) order.

    Frame counts come from each clip's attrs (the store's public `Clip.n_frames`).
    """
    out = []
    for s in range(len(reader.sources)) if source_ids is None else source_ids:
        store = reader.store(s)
        for cid in store.clip_ids():
            out.append(ClipInfo(s, cid, store.clip(cid).n_frames))
    return out


def decoded_bytes(reader: WindowReader, clips: Sequence[ClipInfo]) -> int:
    """Bytes of every decoded image chunk the reader's fields touch in `clips` (both eyes:
    chunks are cached whole), from the layout of each store's first clip. Arrays stored as
    raw frames never enter the cache and count nothing."""
    per_frame: dict[int, int] = {}
    total = 0
    for c in clips:
        if c.source not in per_frame:
            clip = reader.store(c.source).clip(c.clip_id)
            names = [n for n in reader.fields if n in IMAGE_FIELDS]
            per_frame[c.source] = sum(
                int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
                for shape, dtype in (clip.layout(n) for n in names if not clip.frame_addressable(n))
            )
        total += per_frame[c.source] * c.n_frames
    return total
