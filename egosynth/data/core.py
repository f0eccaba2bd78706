"""Windows of clips from egosynth clip stores, numpy only (usable from JAX or any trainer).

Three layers, each usable alone:

* the window index and epoch plan (egosynth.data.index: `WindowSpec`, `WindowIndex`,
  `epoch_order`, `shard_batches`): pure arithmetic over clip lengths, no I/O;
* the reader (egosynth.data.reader: `WindowReader`): assembles batches of windows from stores
  through the store's public reader API: raw rgb frames straight from the page cache into the
  batch, Blosc chunks through a byte-limited LRU cache of decoded chunks;
* the loader (here: `LoaderConfig`, `WindowLoader`): one shard's batches for an epoch, with
  `state_dict()` resume and a live mode that follows a store still being written.

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

import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.data.index import (
    ClipInfo,
    Shard,
    WindowIndex,
    WindowSpec,
    check_seed,
    env_rank_world,
    epoch_order,
    live_shard_of,
    rank_batch_count,
    shard_batches,
    used_windows,
)
from egosynth.data.reader import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_FIELDS,
    WindowReader,
    decoded_bytes,
    list_clips,
)
from egosynth.errors import EgosynthError
from egosynth.store.schema import FINISHED

STATE_VERSION = 2  # 2 adds "offset" (elastic resume), later "credit" (optional, default 0);
# version 1 states load with offset 0


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
        # As given (None: from the environment); an adapter may `place` the loader again
        # once the process knows where it sits (see egosynth.data.torch).
        self.requested = (rank, world_size)
        env_rank, env_world = env_rank_world()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        Shard(self.rank, self.world_size)  # validates
        self.batch_size, self.shuffle, self.block, self.drop_last = (
            cfg.batch_size, cfg.shuffle, cfg.block, cfg.drop_last
        )  # fmt: skip
        self.seed = check_seed("seed", cfg.seed)
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
        # Batches of this epoch an earlier layout read that a trainer counts as this rank's
        # (elastic resume: Lightning restores its batch count): see __len__.
        self.credit = 0
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
        """Batches this rank reads in a whole epoch; live mode has no length.

        In an epoch resumed on another world size, trainers count the batches the old layout
        read as done, and some fix the length once per run (Lightning reads it after loading
        the state, then ends every epoch when its count reaches it or the loader ends). So
        the length is then the larger of a whole epoch's and (the batches counted as done +
        those left to rank 0, which has the most): every epoch, the resumed one included, ends
        when the loader does, on every rank (one with nothing left still makes its empty pass
        rather than skip it and lose the next epoch).
        """
        if self.live:
            raise TypeError("a live WindowLoader has no length: clips are still being added")
        whole = rank_batch_count(
            len(self.index), self.batch_size, self.rank, self.world_size, self.drop_last
        )
        return whole if not self.offset else max(whole, self.credit + self._left(rank=0))

    def _left(self, rank: int | None = None) -> int:
        """Batches this rank (or `rank`) reads in the current segment of the epoch (positions
        from `offset` on; the whole epoch unless it was resumed on another world size)."""
        return rank_batch_count(
            len(self.index) - self.offset, self.batch_size,
            self.rank if rank is None else rank, self.world_size, self.drop_last,
        )  # fmt: skip

    def place(self, rank: int, world_size: int) -> None:
        """Make this loader rank `rank` of `world_size`, keeping its position.

        For trainers that start their process group after the loader was built (Lightning's
        DDP runs the user's script in every process, then initialises torch.distributed in
        `fit`). Ranks step together, so on another world size the loader continues after the
        order positions the old layout consumed, as an elastic resume does (every window
        once per epoch).
        """
        Shard(rank, world_size)  # validates
        if world_size != self.world_size and not self.live:
            self._carry_over(self.world_size)
        self.rank, self.world_size = rank, world_size

    def _carry_over(self, world: int) -> None:
        """Re-express the position, reached on `world` ranks, for any other world size.

        Ranks step together, so the old layout's ranks consumed the first
        batches_done * batch_size * world order positions of their segment between them: the
        new layout splits what is left of the epoch (every window once), and the trainer's
        count of those batches becomes `credit` (see __len__).
        """
        consumed = self.offset + self.batches_done * self.batch_size * world
        self.credit += self.batches_done
        self.offset, self.batches_done = min(consumed, len(self.index)), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a resumed position is kept only if it belongs to this epoch.

        Without calls to set_epoch, every new pass after a finished one advances the epoch
        by itself (so shuffling goes on under trainers that never call it); with one, the
        pass runs that epoch (from the start again if it was finished).
        """
        epoch = check_seed("epoch", epoch)
        if epoch != self.epoch:
            self.epoch, self.batches_done, self.offset, self.credit = epoch, 0, 0, 0
        self._epoch_pinned = True

    def begin_pass(self) -> None:
        """Where a new pass starts: the resumed position, or after a finished epoch the next
        epoch (or the same one again, from its start, if set_epoch named it)."""
        # Finished: this rank read all its batches. (Not "the pass ran to its end": trainers
        # such as Lightning stop after len() batches without exhausting the iterator. After a
        # resume, the epoch is finished only once every rank's share is: _all_ranks_done.)
        if not self.live and self._left() <= self.batches_done:
            if not self._resumed:  # next epoch, or the named one again from its start
                self.epoch += 0 if self._epoch_pinned else 1
                self.batches_done, self.offset, self.credit = 0, 0, 0
            elif not self._epoch_pinned and self._all_ranks_done():
                self.epoch, self.batches_done, self.offset = self.epoch + 1, 0, 0
                self.credit = 0
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
        source = self.batches() if self.prefetch == 0 else prefetched(self.batches(), self.prefetch)
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
            "credit": self.credit,
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
        epoch = check_seed("epoch", state["epoch"])
        done = check_seed("batches_done", state["batches_done"])
        offset = check_seed("offset", state.get("offset", 0))
        credit = check_seed("credit", state.get("credit", 0))
        world = state.get("world_size")
        if not isinstance(world, int) or world < 1:
            raise EgosynthError(f"loader state: world_size = {world!r}: not a rank count")
        self.epoch, self._epoch_pinned, self._resumed = epoch, False, True
        # the same layout: every rank resumes where it was; another: elastic
        self.offset, self.batches_done, self.credit = offset, done, credit
        if world != self.world_size:
            self._carry_over(world)

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


def prefetched(batches: Iterator[dict[str, NDArray]], depth: int) -> Iterator[dict[str, NDArray]]:
    """Run `batches` in a background thread, `depth` batches ahead of the consumer.

    For loops without DataLoader workers (numpy, JAX, or torch with none): reading (mostly in
    the store's threads, outside the GIL) overlaps the consumer's step. Order is unchanged.
    Stopping early (break, garbage collection) stops the thread.
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
