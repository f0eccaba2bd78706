"""The window index and the epoch plan: pure arithmetic over clip lengths, no I/O.

`WindowSpec` cuts clips into windows, `WindowIndex` numbers them, `epoch_order` is each
epoch's global (seed, epoch) order and `shard_batches` / `Shard` split it over ranks and
DataLoader workers (docs/loader.md, "Order, sharding and resume").
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError


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


def check_seed(name: str, value: int) -> int:
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
    rng = np.random.default_rng([check_seed("seed", seed), check_seed("epoch", epoch)])
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
