"""Windows of clips from egosynth clip stores, numpy only (usable from JAX or any trainer).

Three layers, each usable alone:

* the window index and epoch plan (`WindowSpec`, `WindowIndex`, `epoch_order`,
  `shard_batches`): pure arithmetic over clip lengths, no I/O;
* the reader (`WindowReader`): assembles batches of windows from stores through the store's
  public reader API: raw rgb frames straight from the page cache into the batch, Blosc
  chunks through a byte-limited LRU cache of decoded chunks;
* the loader (`WindowLoader`): one shard's batches for an epoch, with `state_dict()` resume
  and a live mode that follows a store still being written.

Batch layout (leading B = windows in the batch, T = frames per window, E = selected eyes):

    rgb            (B, T, E, 3, H, W) uint8   (a view; memory is channels-last, see docs)
    depth          (B, T, E, H, W)    float16, z-depth in metres
    instance       (B, T, E, H, W)    uint16
    part           (B, T, E, H, W)    uint8
    cam_to_world   (B, T, E, 4, 4)    float32, OpenCV camera-to-world
    intrinsics     (B, E, 3, 3)       float32
    time           (B, T)             float64, seconds from clip start
    head_to_world  (B, T, 4, 4), fixation_point (B, T, 3), fixation_object (B, T),
    gaze_kind (B, T), walking (B, T)  as stored
    window, clip, source, start (B,)  int64: global window id, clip position in the index,
                                      store position in `sources`, first frame of the window

Array names come from the store's schema (egosynth.store.schema, pure Python); the store's
reader (egosynth.store.reader, the only zarr importer) is imported lazily, so the index and
plan work without zarr installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError
from egosynth.store.schema import (
    ARRAY_NAMES,
    CLIP_ARRAYS,
    EYED_FRAME_ARRAYS,
    FINISHED,
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
MAX_AUTO_THREADS = 4  # decode threads per reader when not set (chunks of one batch)
STATE_VERSION = 2  # 2 adds "offset" (elastic resume); version 1 states load with offset 0


# --------------------------------------------------------------------------- index
@dataclass(frozen=True)
class WindowSpec:
    """A window: `length` frames, `skip` frames apart; consecutive windows start `stride` apart.

    A window starting at frame s holds frames s, s + skip, ..., s + (length - 1) * skip.
    """

    length: int = 8
    stride: int = 1
    skip: int = 1

    def __post_init__(self) -> None:
        for name in ("length", "stride", "skip"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise EgosynthError(f"window: {name} = {value!r}: must be an integer >= 1")

    @property
    def span(self) -> int:
        """Frames from the first to the last frame of a window, inclusive."""
        return (self.length - 1) * self.skip + 1

    def count(self, n_frames: int) -> int:
        """Windows in a clip of `n_frames` frames (0 when the clip is shorter than a span)."""
        return 0 if n_frames < self.span else (n_frames - self.span) // self.stride + 1


@dataclass(frozen=True)
class ClipInfo:
    """One clip of the index: which store (`source` position), its id and its length."""

    source: int
    clip_id: str
    n_frames: int


class WindowIndex:
    """Every window of a list of clips, numbered clip-major: window ids 0..len-1."""

    def __init__(self, clips: Sequence[ClipInfo], spec: WindowSpec) -> None:
        self.clips = tuple(clips)
        self.spec = spec
        self.counts = np.array([spec.count(c.n_frames) for c in self.clips], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, window_ids: NDArray[np.integer]) -> tuple[NDArray, NDArray]:
        """(clip position, first frame) of each window id."""
        ids = np.asarray(window_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"window id out of range [0, {len(self)})")
        clip = np.searchsorted(self.offsets, ids, side="right") - 1
        start = (ids - self.offsets[clip]) * self.spec.stride
        return clip, start

    def fingerprint(self) -> str:
        """A short hash of the clips and the window spec: resume checks it matches."""
        desc = [
            [self.spec.length, self.spec.stride, self.spec.skip],
            [[c.source, c.clip_id, c.n_frames] for c in self.clips],
        ]
        return hashlib.sha1(json.dumps(desc).encode()).hexdigest()[:16]


def _check_seed(name: str, value: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        raise EgosynthError(f"loader: {name} = {value!r}: must be an integer >= 0")
    return int(value)


def epoch_order(
    index: WindowIndex, seed: int, epoch: int, shuffle: bool = True, block: int = 1
) -> NDArray[np.int64]:
    """The global order of window ids for an epoch: a function of (seed, epoch) alone.

    With `block` > 1, runs of `block` consecutive windows of one clip stay together and the
    runs are shuffled: neighbouring windows share chunks, so the cache decodes each chunk once
    instead of once per window, at the cost of batches mixing fewer clips.
    """
    n = len(index)
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([_check_seed("seed", seed), _check_seed("epoch", epoch)])
    if block <= 1:
        return rng.permutation(n).astype(np.int64)
    # Block starts: every `block`-th window of each clip, cut at clip boundaries.
    starts = np.concatenate(
        [index.offsets[c] + np.arange(0, index.counts[c], block) for c in range(len(index.clips))]
        or [np.zeros(0, np.int64)]
    ).astype(np.int64)
    ends = np.minimum(starts + block, np.repeat(index.offsets[1:], -(-index.counts // block)))
    perm = rng.permutation(len(starts))
    s, lengths = starts[perm], (ends - starts)[perm]
    # Concatenate the ranges [s_i, s_i + len_i) without a Python loop.
    pos_in_block = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(s, lengths) + pos_in_block).astype(np.int64)


# --------------------------------------------------------------------------- sharding
@dataclass(frozen=True)
class Shard:
    """Who reads: distributed `rank` of `world_size`, DataLoader `worker` of `num_workers`."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world_size and 0 <= self.worker < self.num_workers):
            raise EgosynthError(
                f"loader: shard rank {self.rank} of world_size {self.world_size}, worker "
                f"{self.worker} of {self.num_workers}: out of range"
            )


def used_windows(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Windows of the order an epoch uses: all, or (drop_last) whole batches for every rank."""
    if drop_last:
        return (n // (batch_size * world_size)) * batch_size * world_size
    return n


def rank_batch_count(
    n: int, batch_size: int, rank: int, world_size: int, drop_last: bool = False
) -> int:
    """Batches rank `rank` reads in an epoch of `n` windows."""
    n_used = used_windows(n, batch_size, world_size, drop_last)
    n_global = -(-n_used // batch_size)
    return max(0, -(-(n_global - rank) // world_size))


def shard_batches(
    n: int, batch_size: int, shard: Shard, start_batch: int = 0, drop_last: bool = False
) -> Iterator[tuple[int, int]]:
    """Order positions [lo, hi) of each batch this shard reads, in the order it reads them.

    Global batch g covers order positions [g * B, (g + 1) * B). Rank r owns global batches
    r, r + R, r + 2R, ... (its "local" batches 0, 1, 2, ...). Worker w of W reads local batches
    start + w, start + w + W, ...: exactly the round-robin in which torch's DataLoader collects
    worker outputs, so the batches a rank's DataLoader yields come out in the rank's order
    whatever the number of workers, and "k batches consumed" pins the resume point exactly.
    """
    if batch_size < 1:
        raise EgosynthError(f"loader: batch_size = {batch_size!r}: must be >= 1")
    n_used = used_windows(n, batch_size, shard.world_size, drop_last)
    n_local = rank_batch_count(n, batch_size, shard.rank, shard.world_size, drop_last)
    for j in range(start_batch + shard.worker, n_local, shard.num_workers):
        g = j * shard.world_size + shard.rank
        yield g * batch_size, min((g + 1) * batch_size, n_used)


def env_rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's / Ray Train's RANK and WORLD_SIZE (default 0, 1)."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise EgosynthError(
            f"environment: RANK = {os.environ.get('RANK')!r}, WORLD_SIZE = "
            f"{os.environ.get('WORLD_SIZE')!r}: must be integers"
        ) from None


def live_shard_of(seed: int, clip_id: str, start: int, n_shards: int) -> int:
    """Stable shard of a window in live mode: the same in every process, whenever it looks."""
    return zlib.crc32(f"{seed}/{clip_id}/{start}".encode()) % n_shards


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
        except (EgosynthError, ValueError, RuntimeError, OSError, KeyError) as exc:
            msg = str(exc).split("\n")[0]
            raise EgosynthError(
                f"{self.sources[info.source]}: clip {info.clip_id}/{name} frames "
                f"{start}:{stop}: corrupt or unreadable ({msg})"
            ) from None

    def _read(self, info: ClipInfo, h: _ClipHandle, name: str, sel: slice) -> NDArray:
        # Clip.read: local stores decode chunk files directly (checksummed), URLs via zarr.
        with self._named_errors(info, name, sel.start, sel.stop):
            if sel.start is None:  # a small array, whole
                return h.clip.read(names=[name])[name]
            return h.clip.read(sel.start, sel.stop, [name])[name]

    def _read_into(
        self, info: ClipInfo, h: _ClipHandle, name: str, start: int, dst: NDArray, step: int = 1
    ) -> None:
        with self._named_errors(info, name, start, start + (len(dst) - 1) * step + 1):
            h.clip.read_into(name, start, dst, step)

    def _read_window(
        self, info: ClipInfo, h: _ClipHandle, name: str, start: int, skip: int, dst: NDArray
    ) -> None:
        """One window's frames of a frame-addressable array straight into its batch row."""
        if self._eye == slice(0, 2):
            self._read_into(info, h, name, start, dst, skip)
            return
        both = np.empty((len(dst), 2, *dst.shape[2:]), dst.dtype)  # frames hold both eyes
        self._read_into(info, h, name, start, both, skip)
        dst[...] = both[:, self._eye]

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
            for row, s in zip(rows, starts, strict=True):
                jobs.append(partial(self._read_window, info, h, name, s, spec.skip, dst[row]))
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
                got[c] = np.empty((hi - lo, *shape[1:]), dtype)
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
                        out[name] = np.empty((b, t, e, *shape[2:]), dtype=dtype)
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


# --------------------------------------------------------------------------- loader
@dataclass(frozen=True)
class LoaderConfig:
    """How windows are cut, ordered and read: one object for every adapter (WindowLoader,
    the torch datasets, Ray Data's read_windows), so a trainer and a data pipeline that share
    it see the same windows in the same order.

    >>> cfg = LoaderConfig(length=8, stride=4, batch_size=16, seed=0)
    >>> WindowLoader("a.zarr", cfg)  # or any adapter: WindowIterableDataset("a.zarr", cfg)
    >>> cfg.replace(seed=1)          # a changed copy; unknown names are refused

    Where a rank sits (rank, world_size) is not configuration: each process's own.
    """

    length: int = 8  # frames per window
    stride: int = 1  # frames between window starts
    skip: int = 1  # frame step inside a window
    fields: tuple[str, ...] = DEFAULT_FIELDS
    eyes: tuple[int, ...] = (0, 1)
    batch_size: int = 8  # windows per batch (the torch adapters; Ray Data batches rows itself)
    shuffle: bool = True
    seed: int = 0
    block: int = 1  # consecutive windows kept together by the shuffle
    drop_last: bool = False
    cache_bytes: int = DEFAULT_CACHE_BYTES
    decode_threads: int | None = None  # None: min(cores, MAX_AUTO_THREADS)
    prefetch: int = 0  # batches read ahead in a background thread
    live: bool = False  # follow stores still being written
    poll_s: float = 2.0
    idle_timeout_s: float | None = 600.0

    def __post_init__(self) -> None:
        # sequences as tuples: a config is hashable and compares by value
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "eyes", tuple(self.eyes))

    def replace(self, **changes: Any) -> LoaderConfig:
        return LoaderConfig.of(self, **changes)

    @classmethod
    def of(cls, config: LoaderConfig | None = None, **changes: Any) -> LoaderConfig:
        """`config` (default: the defaults) with `changes`; a name that is not a setting is
        refused in one line."""
        names = {f.name for f in dataclass_fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise EgosynthError(
                f"loader: {unknown[0]!r} is not a loader setting (settings: {sorted(names)})"
            )
        if config is not None and not isinstance(config, LoaderConfig):
            raise EgosynthError(f"loader: config = {config!r:.60}: not a LoaderConfig")
        return replace(config or cls(), **changes)


class WindowLoader:
    """Batches of windows for one shard of one epoch; numpy only.

    >>> loader = WindowLoader(["a.zarr", "b.zarr"], LoaderConfig(length=8, stride=4, batch_size=16))
    >>> for epoch in range(10):
    ...     loader.set_epoch(epoch)
    ...     for batch in loader:           # dict of numpy arrays, layout in the module doc
    ...         ...
    ...     ckpt = loader.state_dict()     # resume mid-epoch with load_state_dict(ckpt)

    The global order is a function of (seed, epoch): rank r of R takes global batches
    r, r + R, ...; within a rank, DataLoader workers take batches round-robin, so the batches
    a rank sees come in the same order whatever the number of workers.
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        config: LoaderConfig | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        clips: Sequence[ClipInfo] | None = None,
        **settings: Any,
    ) -> None:
        """`config`, with any LoaderConfig setting given by name on top (length=16, ...)."""
        cfg = self.config = LoaderConfig.of(config, **settings)
        if isinstance(sources, str | Path):
            sources = [sources]
        if not sources:
            raise EgosynthError("loader: sources = []: give at least one store")
        self.spec = WindowSpec(cfg.length, cfg.stride, cfg.skip)
        for name in ("batch_size", "block"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or value < 1:
                raise EgosynthError(f"loader: {name} = {value!r}: must be an integer >= 1")
        env_rank, env_world = env_rank_world()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        Shard(self.rank, self.world_size)  # validates
        self.batch_size, self.shuffle, self.block, self.drop_last = (
            cfg.batch_size, cfg.shuffle, cfg.block, cfg.drop_last
        )  # fmt: skip
        self.seed = _check_seed("seed", cfg.seed)
        self.reader = WindowReader(sources, cfg.fields, cfg.eyes, cfg.cache_bytes,
                                   cfg.decode_threads)  # fmt: skip
        self._identities: list[dict[str, Any]] | None = None
        self.live, self.poll_s, self.idle_timeout_s = cfg.live, cfg.poll_s, cfg.idle_timeout_s
        if not isinstance(cfg.prefetch, int) or cfg.prefetch < 0:
            raise EgosynthError(f"loader: prefetch = {cfg.prefetch!r}: must be an integer >= 0")
        self.prefetch = cfg.prefetch
        self.epoch = 0
        self.batches_done = 0  # batches this rank has consumed of the current epoch segment
        # Global order positions an earlier layout (another world size) consumed before this
        # segment of the epoch began: the segment is positions [offset, n).
        self.offset = 0
        self._epoch_pinned = False  # set_epoch was called since the last pass began
        self._resumed = False  # load_state_dict was called since the last pass began
        if self.live:
            self.index = WindowIndex([], self.spec)
        else:
            self.index = WindowIndex(list_clips(self.reader) if clips is None else clips, self.spec)
            decoded = decoded_bytes(self.reader, self.index.clips)
            self.reader.cache_everything = decoded <= self.reader.cache.max_bytes
            self.reader.refresh()  # the listing's handles are not needed by readers
            if len(self.index) == 0:
                raise EgosynthError(
                    f"loader: no complete clip of {list(self.reader.sources)} has "
                    f"{self.spec.span} frames for a window (length {cfg.length}, skip {cfg.skip})"
                )
        self._order: tuple[int, NDArray[np.int64]] | None = None

    # ----------------------------------------------------------- epoch plan
    def order(self) -> NDArray[np.int64]:
        """This epoch's global window order (all ranks), cached per epoch."""
        if self._order is None or self._order[0] != self.epoch:
            self._order = (
                self.epoch,
                epoch_order(self.index, self.seed, self.epoch, self.shuffle, self.block),
            )
        return self._order[1]

    def __len__(self) -> int:
        """Batches this rank reads in a whole epoch (after an elastic resume: in what is left
        of it); live mode has no length."""
        if self.live:
            raise TypeError("a live WindowLoader has no length: clips are still being added")
        return rank_batch_count(
            len(self.index) - self.offset, self.batch_size, self.rank, self.world_size,
            self.drop_last,
        )  # fmt: skip

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a resumed position is kept only if it belongs to this epoch.

        Without calls to set_epoch, every new pass after a finished one advances the epoch
        by itself (so shuffling goes on under trainers that never call it); with one, the
        pass runs that epoch (from the start again if it was finished).
        """
        epoch = _check_seed("epoch", epoch)
        if epoch != self.epoch:
            self.epoch, self.batches_done, self.offset = epoch, 0, 0
        self._epoch_pinned = True

    def begin_pass(self) -> None:
        """Where a new pass starts: the resumed position, or after a finished epoch the next
        epoch (or the same one again, from its start, if set_epoch named it)."""
        # Finished: this rank read all its batches. (Not "the pass ran to its end": trainers
        # such as Lightning stop after len() batches without exhausting the iterator. After a
        # resume, the epoch is finished only once every rank's share is: _all_ranks_done.)
        if not self.live and len(self) <= self.batches_done:
            if not self._resumed:  # next epoch, or the named one again from its start
                self.epoch += 0 if self._epoch_pinned else 1
                self.batches_done, self.offset = 0, 0
            elif not self._epoch_pinned and self._all_ranks_done():
                self.epoch, self.batches_done, self.offset = self.epoch + 1, 0, 0
            # else: resumed at the end of this rank's share of the named epoch: nothing left
        self._epoch_pinned = self._resumed = False

    def _all_ranks_done(self) -> bool:
        """With uneven ranks (drop_last=False) a resumed rank's end of the epoch is not the
        epoch's: it is finished once every rank's share was consumed (ranks step together)."""
        n = len(self.index) - self.offset
        used = used_windows(n, self.batch_size, self.world_size, self.drop_last)
        return self.batches_done * self.batch_size * self.world_size >= used

    # ----------------------------------------------------------- iteration
    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, NDArray]]:
        """The batches DataLoader worker `worker` of `num_workers` yields, in its order."""
        if self.live:
            yield from self._live_batches(worker, num_workers)
            return
        start = self.batches_done  # past the end (a state saved there): nothing left to read
        shard = Shard(self.rank, self.world_size, worker, num_workers)
        order = self.order()[self.offset :]
        for lo, hi in shard_batches(len(order), self.batch_size, shard, start, self.drop_last):
            yield self.read_windows(order[lo:hi])

    def read_windows(self, window_ids: NDArray[np.integer]) -> dict[str, NDArray]:
        """One batch of the given global window ids, in that order."""
        ids = np.asarray(window_ids, dtype=np.int64)
        clip, start = self.index.locate(ids)
        infos = [self.index.clips[c] for c in clip]
        batch = self.reader.read_batch(list(zip(infos, start.tolist(), strict=True)), self.spec)
        batch.update(
            window=ids,
            clip=clip.astype(np.int64),
            source=np.array([i.source for i in infos], np.int64),
            start=start.astype(np.int64),
            clip_id=np.array([i.clip_id for i in infos]),
        )
        return batch

    def __iter__(self) -> Iterator[dict[str, NDArray]]:
        """Single-process iteration over this rank's batches, counting them for resume."""
        self.begin_pass()
        source = (
            self.batches() if self.prefetch == 0 else _prefetched(self.batches(), self.prefetch)
        )
        try:
            for batch in source:
                self.batches_done += 1
                yield batch
        finally:
            source.close()  # stops a prefetch thread now, not at garbage collection

    # ----------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Where the run is: enough to resume exactly, with any number of workers, and (ranks
        stepping together, as under DDP) on any rank and any number of ranks."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "offset": self.offset,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "index": self.index.fingerprint(),
            "stores": self._store_ids(),
        }

    def _store_ids(self) -> list[dict[str, Any]]:
        """Each source store's identity (`ClipStore.identity`: store_id and fingerprint), so
        that a resume on another store with the same clip ids and lengths is refused."""
        if self._identities is None:
            self._identities = [
                self.reader.store(s).identity for s in range(len(self.reader.sources))
            ]
        return self._identities

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: the next iteration starts after the batches `state` says were consumed."""
        if self.live:
            raise EgosynthError("loader: live mode does not resume (the clip set is growing)")
        mine = self.state_dict()
        if "stores" in state and state["stores"] != mine["stores"]:  # states before it: none
            theirs = state["stores"] if isinstance(state["stores"], list) else []
            for k, src in enumerate(self.reader.sources):
                saved = theirs[k] if k < len(theirs) else None
                if saved != mine["stores"][k]:
                    raise EgosynthError(
                        f"{src}: not the store this state was saved on (saved store "
                        f"{saved!r}, this one {mine['stores'][k]!r}); refusing to resume on "
                        "another store"
                    )
        if state.get("version") not in (1, STATE_VERSION):
            raise EgosynthError(
                f"loader state: version = {state.get('version')!r}, this loader reads 1 and "
                f"{STATE_VERSION}"
            )
        for key in ("seed", "batch_size", "index"):
            if state.get(key) != mine[key]:
                raise EgosynthError(
                    f"loader state: {key} = {state.get(key)!r}, this loader has {mine[key]!r}; "
                    "resume with the same stores, window, seed and batch size"
                )
        epoch = _check_seed("epoch", state["epoch"])
        done = _check_seed("batches_done", state["batches_done"])
        offset = _check_seed("offset", state.get("offset", 0))
        world = state.get("world_size")
        if not isinstance(world, int) or world < 1:
            raise EgosynthError(f"loader state: world_size = {world!r}: not a rank count")
        self.epoch, self._epoch_pinned, self._resumed = epoch, False, True
        if world == self.world_size:  # the same layout: every rank resumes where it was
            self.offset, self.batches_done = offset, done
        else:
            # Elastic: ranks step together, so the saved layout's ranks consumed the first
            # done * batch_size * world order positions of their segment between them; the
            # new layout splits what is left of the epoch (every window once).
            consumed = offset + done * self.batch_size * world
            self.offset, self.batches_done = min(consumed, len(self.index)), 0

    # ----------------------------------------------------------- live mode
    def _live_batches(self, worker: int, num_workers: int) -> Iterator[dict[str, NDArray]]:
        """Follow the stores as clips complete; yield each complete clip's windows once.

        Each window goes to the shard `live_shard_of` names, so every process agrees on
        who reads it without coordination, whenever it happens to see the clip. Ends when every
        store is finalized (store_status written by the driver) and all its clips are read, or
        after `idle_timeout_s` seconds without a new clip.
        """
        shard_id = self.rank * num_workers + worker
        n_shards = self.world_size * num_workers
        seen: set[tuple[int, str]] = set()
        pending: list[tuple[ClipInfo, int]] = []
        last_new = time.monotonic()
        generation = 0
        while True:
            finished = self._stores_finalized()
            new = [c for c in self._poll_clips() if (c.source, c.clip_id) not in seen]
            if new:
                last_new = time.monotonic()
                windows = []
                for c in new:
                    seen.add((c.source, c.clip_id))
                    for w in range(self.spec.count(c.n_frames)):
                        s = w * self.spec.stride
                        if live_shard_of(self.seed, c.clip_id, s, n_shards) == shard_id:
                            windows.append((c, s))
                if self.shuffle and windows:
                    rng = np.random.default_rng([self.seed, self.epoch, generation])
                    windows = [windows[i] for i in rng.permutation(len(windows))]
                pending.extend(windows)
                generation += 1
            while len(pending) >= self.batch_size:
                yield self._read_live(pending[: self.batch_size])
                del pending[: self.batch_size]
            if finished and not new:
                break
            idle = time.monotonic() - last_new
            if self.idle_timeout_s is not None and idle > self.idle_timeout_s:
                break
            if not new:
                time.sleep(self.poll_s)
        if pending and not self.drop_last:
            yield self._read_live(pending)

    def _started(self) -> list[int]:
        """Stores that exist yet: a live loader may start before the render creates its store."""
        out = []
        for s, path in enumerate(self.reader.sources):
            try:
                self.reader.store(s)
            except EgosynthError:
                local = Path(path.removeprefix("file://"))
                being_made = not local.exists() or (
                    local.is_dir() and not (local / "zarr.json").exists()
                )
                if "://" in path.removeprefix("file://"):
                    raise
                if being_made:
                    continue
                # zarr.json may have appeared between the failed open and the look: open
                # again; failing now, it is there but not a readable clip store.
                self.reader.store(s)
            out.append(s)
        return out

    def _poll_clips(self) -> list[ClipInfo]:
        self.reader.refresh()  # reopen: a store handle may predate the clips just completed
        return list_clips(self.reader, self._started())

    def _stores_finalized(self) -> bool:
        """True when the driver has finalized every store (checked BEFORE listing clips)."""
        self.reader.refresh()
        started = self._started()
        if len(started) < len(self.reader.sources):
            return False
        # FINISHED: "interrupted" too (stopped, marked on its way out)
        return all(self.reader.store(s).attrs.get("store_status") in FINISHED for s in started)

    def _read_live(self, windows: list[tuple[ClipInfo, int]]) -> dict[str, NDArray]:
        batch = self.reader.read_batch(windows, self.spec)
        batch.update(
            window=np.full(len(windows), -1, np.int64),  # no global numbering while live
            clip=np.full(len(windows), -1, np.int64),
            source=np.array([c.source for c, _ in windows], np.int64),
            start=np.array([s for _, s in windows], np.int64),
        )
        batch["clip_id"] = np.array([c.clip_id for c, _ in windows])
        return batch


_DONE = object()


def _prefetched(batches: Iterator[dict[str, NDArray]], depth: int) -> Iterator[dict[str, NDArray]]:
    """Run `batches` in a background thread, `depth` batches ahead of the consumer.

    For numpy/JAX loops without DataLoader workers: reading (mostly in the store's threads,
    outside the GIL) overlaps the consumer's step. Order is unchanged. Stopping early (break,
    garbage collection) stops the thread.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, name="egosynth-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
