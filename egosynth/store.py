"""The Zarr clip store: the ONE module that imports zarr.

Layout (schema version 1, documented for outsiders in docs/store.md)::

    <name>.zarr/                  root attrs: format, schema_version, egosynth_version,
                                  fingerprint, set_config, scene_configs, store_status,
                                  and (written once by the driver at the end) index, labels
      clips/<clip_id>/            attrs: scene, seed, fps, n_frames, width, height, rig,
                                  labels, ..., status ("complete" is written last)
        rgb            (T, 2, H, W, 3) uint8
        depth          (T, 2, H, W)    float16, z-depth in metres (0 = nothing hit)
        instance       (T, 2, H, W)    uint16 (0 = background)
        part           (T, 2, H, W)    uint8  (0 = no part)
        cam_to_world   (T, 2, 4, 4)    float32, OpenCV camera-to-world, metres
        intrinsics     (2, 3, 3)       float32, pinhole K in pixels
        time           (T,)            float64, seconds from clip start
        head_to_world  (T, 4, 4)       float32
        fixation_point (T, 3)          float32, world metres
        fixation_object(T,)            int32, object index (-1 = none)
        gaze_kind      (T,)            int8 (0 ahead, 1 look-around, 2 object)
        walking        (T,)            bool

Image arrays are chunked along time only: a chunk file holds `chunk_frames` whole stereo
frames. `rgb` is stored raw by default, each frame with its own crc32c (zarr's sharding codec:
one frame per inner chunk), so any window of frames is read, and verified, by reading just those
frames; depth and masks are Blosc-lz4 compressed chunks with a crc32c each (they shrink 3-100x).
Corruption is detected on read either way. Every array has `dimension_names`, so xarray opens
a clip group as a Dataset.

Concurrency: each clip group has exactly ONE writer (one clip = one worker); the root metadata
is written only by the driver (at the start, and once at the end with the index and the
consolidated metadata). A clip is visible to readers only once its `status` is "complete".
"""

from __future__ import annotations

import fcntl
import json
import math
import mmap
import os
import resource
import shutil
import sys
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import crc32c  # takes any buffer, releases the GIL; the same CRC as zarr's codec
import numcodecs
import numcodecs.blosc
import numpy as np
import zarr
import zarr.codecs
import zarr.storage
from numpy.typing import NDArray

from egosynth import __version__
from egosynth.errors import EgosynthError

FORMAT = "egosynth-clip-store"
SCHEMA_VERSION = 1
CLIPS = "clips"
COMPLETE = "complete"
WRITING = "writing"
# Root `store_status`: "rendering" while a driver runs; at its end "complete" (every planned
# clip complete), "incomplete" (some failed) or "interrupted" (stopped: Ctrl-C, an error).
RENDERING, INCOMPLETE, INTERRUPTED = "rendering", "incomplete", "interrupted"
FINISHED = (COMPLETE, INCOMPLETE, INTERRUPTED)  # no driver is writing the store any more
# Arrays that may omit chunks (and rgb frames) that are entirely the fill value: an absent
# chunk of these reads as all background. Every chunk of every other array is stored, so a
# missing one is an error. Recorded per clip in its `sparse_arrays` attr.
SPARSE_ARRAYS = ("instance", "part")
TARGET_CHUNK_BYTES = 1 << 20  # ~1 MiB of rgb per chunk: big enough to compress, small to stream
MAX_CHUNK_FRAMES = 8

# Per-frame image arrays: name -> (dtype, trailing shape after (T, 2, H, W), dimension names).
IMAGE_ARRAYS: dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    "rgb": ("uint8", (3,), ("time", "eye", "y", "x", "channel")),
    "depth": ("float16", (), ("time", "eye", "y", "x")),
    "instance": ("uint16", (), ("time", "eye", "y", "x")),
    "part": ("uint8", (), ("time", "eye", "y", "x")),
}
# Small per-clip arrays: name -> (dtype, shape after T (None = no time axis), dimension names).
POSE = ("pose_row", "pose_col")
META_ARRAYS: dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    "cam_to_world": ("float32", (2, 4, 4), ("time", "eye", *POSE)),
    "time": ("float64", (), ("time",)),
    "head_to_world": ("float32", (4, 4), ("time", *POSE)),
    "fixation_point": ("float32", (3,), ("time", "xyz")),
    "fixation_object": ("int32", (), ("time",)),
    "gaze_kind": ("int8", (), ("time",)),
    "walking": ("bool", (), ("time",)),
}
INTRINSICS_DIMS = ("eye", "k_row", "k_col")
ARRAY_NAMES = (*IMAGE_ARRAYS, *META_ARRAYS, "intrinsics")


def compressors(cname: str = "lz4", clevel: int = 5) -> list[Any]:
    """Blosc (byte-shuffled) then a crc32c checksum over the compressed bytes of each chunk."""
    return [
        zarr.codecs.BloscCodec(cname=cname, clevel=clevel, shuffle="shuffle"),
        zarr.codecs.Crc32cCodec(),
    ]


def default_chunk_frames(height: int, width: int) -> int:
    """Frames per chunk so an rgb chunk is ~1 MiB, between 1 and MAX_CHUNK_FRAMES."""
    frame_bytes = 2 * height * width * 3
    return int(min(MAX_CHUNK_FRAMES, max(1, TARGET_CHUNK_BYTES // frame_bytes)))


def _local(path: str | Path) -> Path | None:
    """The local filesystem path of a store, or None for an fsspec URL."""
    s = str(path)
    if "://" in s and not s.startswith("file://"):
        return None
    return Path(s.removeprefix("file://"))


def _open_root(path: str | Path, mode: str = "r", consolidated: bool | None = None) -> zarr.Group:
    """Open the root group; readers use consolidated metadata when the driver wrote it."""
    local = _local(path)
    if local is not None and not (local / "zarr.json").is_file():
        what = "does not exist" if not local.exists() else "is not a Zarr store (no zarr.json)"
        raise EgosynthError(f"{path}: {what}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
            root = zarr.open_group(
                str(path), mode=mode, use_consolidated=consolidated if mode == "r" else False
            )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise EgosynthError(f"{path}: cannot open as a Zarr store ({exc})") from None
    _check_root_attrs(path, root.attrs.asdict())
    return root


def _check_root_attrs(path: str | Path, attrs: Mapping[str, Any] | None) -> None:
    """Refuse a root that is not an egosynth store of this schema version."""
    attrs = attrs or {}
    if attrs.get("format") != FORMAT:
        raise EgosynthError(f"{path}: not an egosynth clip store (root attr format != {FORMAT!r})")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise EgosynthError(
            f"{path}: schema_version = {attrs.get('schema_version')!r}, this egosynth reads "
            f"{SCHEMA_VERSION}"
        )


# --------------------------------------------------------------------------- direct chunk I/O
# zarr-python spends ~1-3 ms of bookkeeping per chunk read or written while the work itself
# (file I/O, crc32c, lz4) is ~0.1-0.3 ms. For local stores egosynth therefore reads and writes
# chunk files itself, for arrays whose metadata says they use exactly the codec chain below.
# The bytes are the ones zarr reads and writes (tests check byte equality both ways); anything
# else (fsspec URLs, other codecs, shards) goes through zarr.
_CRC_BYTES = 4
_BLOSC_HEADER = 16
_BLOSC_MEMCPYED = 0x02  # Blosc header flag: the bytes after the header are the data, stored
_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_NO_FRAME = 2**64 - 1  # shard index entry of a frame never written (it reads as the fill value)
RGB_LAYOUTS = ("raw", "lz4")  # rgb stored as raw frames (default) or as Blosc-lz4 chunks


def _crc(data: Any) -> bytes:
    """The 4 bytes zarr's crc32c codec appends: crc32c of `data` (any buffer), little-endian."""
    return crc32c.crc32c(data).to_bytes(_CRC_BYTES, "little")


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """A file's version as far as a reader can tell: inode, size, mtime and ctime."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _write_chunk(path: Path, parts: Sequence[Any], made: set[Path]) -> None:
    """Write the buffers `parts`, in order, as the chunk file `path` (atomically), creating its
    folder unless this writer already did (`made`)."""
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.add(path.parent)
    _write_atomic(path, b"".join(memoryview(p).cast("B") for p in parts))


def _chunk_key(ndim: int, c: int) -> str:
    """Key of time chunk `c` of an array chunked along time only (default encoding, "/")."""
    return f"c/{c}" + "/0" * (ndim - 1)


class _CorruptChunk(Exception):
    """A chunk file whose checksum or size does not match (message: key and reason)."""


@dataclass(frozen=True)
class _Direct:
    """Reads and writes the chunk files of ONE array without zarr.

    Qualifies only: chunks split axis 0 alone, codecs `bytes` (little-endian) -> `blosc` ->
    `crc32c`, regular grid, default chunk keys with "/" (what `ClipWriter` creates), on a
    little-endian machine.
    """

    folder: Path
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill: Any
    blosc: numcodecs.Blosc
    sparse: bool = True  # chunks entirely the fill value are not stored (a missing one is fill)

    @classmethod
    def from_metadata(
        cls, folder: Path, md: Mapping[str, Any], sparse: bool = True
    ) -> _Direct | None:
        """The direct reader of an array's zarr.json document, or None (use zarr)."""
        if sys.byteorder != "little":  # decoded bytes are used as native numbers
            return None
        try:
            codecs = md["codecs"]
            if [c["name"] for c in codecs] != ["bytes", "blosc", "crc32c"]:
                return None
            if (codecs[0].get("configuration") or {}).get("endian", "little") != "little":
                return None
            if not _default_keys(md):
                return None
            if md["chunk_grid"]["name"] != "regular" or md.get("storage_transformers"):
                return None
            shape = tuple(int(n) for n in md["shape"])
            chunks = tuple(int(n) for n in md["chunk_grid"]["configuration"]["chunk_shape"])
            dtype = np.dtype(md["data_type"])
            if dtype.kind not in "biuf" or not shape or chunks[1:] != shape[1:]:
                return None
            b = codecs[1]["configuration"]
            blosc = numcodecs.Blosc(
                cname=b["cname"],
                clevel=int(b["clevel"]),
                shuffle=_SHUFFLES[b["shuffle"]],
                blocksize=int(b.get("blocksize", 0)),
                typesize=int(b.get("typesize", dtype.itemsize)),
            )
            fill = np.array(md["fill_value"], dtype)
            return cls(folder, shape, chunks, dtype, fill, blosc, sparse)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    @property
    def file_frames(self) -> int:
        """Frames per chunk file (writes cover whole files)."""
        return self.chunks[0]

    def key(self, c: int) -> str:
        return _chunk_key(len(self.shape), c)

    def read(self, start: int, stop: int, out: NDArray | None = None, step: int = 1) -> NDArray:
        """Rows start, start + step, ... below stop along axis 0, into `out` if given
        (C-contiguous, this shape and dtype); with step 1, whole chunks inside the range
        decode in place, without a copy."""
        if step != 1:  # chunks decode whole anyway: decode the span, keep every step-th row
            rows = self.read(start, stop)[::step]
            if out is None:
                return rows
            out[...] = rows
            return out
        cf = self.chunks[0]
        if out is None:
            out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        for c in range(start // cf, -(-stop // cf)):
            lo = c * cf
            a, b = max(lo, start), min(lo + cf, stop)
            if a == lo and b == lo + cf:
                self._decode(c, out[a - start : b - start])
            else:  # an end of the range, or the clip's padded last chunk
                whole = np.empty(self.chunks, self.dtype)
                self._decode(c, whole)
                out[a - start : b - start] = whole[a - lo : b - lo]
        return out

    def _decode(self, c: int, dst: NDArray) -> None:
        """Decode chunk `c` into the C-contiguous `dst` (fill value when never written, if the
        array is sparse; a missing chunk of any other array is an error).

        A chunk Blosc stored uncompressed (clevel 0, or data it could not shrink) holds the
        data as it is after the 16-byte header: it is read straight into `dst` and checksummed
        there, one copy out of the page cache as for a memmap. Any other chunk is read whole,
        checksummed, then decompressed into `dst`.
        """
        key = self.key(c)
        try:
            # A str path (pathlib's joins cost ~15 us, a tenth of decoding a 1 MiB chunk);
            # unbuffered: each read is one call, straight into its buffer.
            with open(f"{self.folder}/{key}", "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size < _BLOSC_HEADER + _CRC_BYTES:
                    raise _CorruptChunk(f"{key}: {size} bytes, too short for a chunk")
                head = f.read(_BLOSC_HEADER)
                stored = bool(head[2] & _BLOSC_MEMCPYED)
                stored = stored and size == _BLOSC_HEADER + dst.nbytes + _CRC_BYTES
                if stored:
                    view = memoryview(dst).cast("B")
                    if f.readinto(view) != len(view):
                        raise _CorruptChunk(f"{key}: ends early")
                    checksum = crc32c.crc32c(view, crc32c.crc32c(head))
                else:
                    f.seek(0)
                    body = f.read(size - _CRC_BYTES)
                    checksum = crc32c.crc32c(body)
                crc = f.read(_CRC_BYTES)
        except FileNotFoundError:
            if not self.sparse:
                raise _CorruptChunk(f"{key}: missing (this array stores every chunk)") from None
            dst[...] = self.fill
            return
        if checksum != int.from_bytes(crc, "little"):
            raise _CorruptChunk(f"{key}: checksum mismatch")
        nbytes = int.from_bytes(head[4:8], "little")  # Blosc header: uncompressed size
        if nbytes != dst.nbytes:
            raise _CorruptChunk(f"{key}: holds {nbytes} bytes, expected {dst.nbytes}")
        if stored:
            return
        try:
            numcodecs.blosc.decompress(body, dst)
        except (RuntimeError, ValueError) as exc:
            raise _CorruptChunk(f"{key}: {exc}") from None

    def write(self, start: int, data: NDArray, made: set[Path]) -> None:
        """Write rows [start, start + len(data)): chunk-aligned, ending on a chunk boundary or
        at the end of the array (the last chunk is padded with the fill value, as zarr does).

        A chunk that is entirely the fill value is not stored in a sparse array (zarr's
        write_empty_chunks=False). `made` remembers folders already created by this writer.
        """
        cf = self.chunks[0]
        for lo in range(0, len(data), cf):
            block = data[lo : lo + cf]
            if len(block) < cf:
                full = np.full(self.chunks, self.fill, self.dtype)
                full[: len(block)] = block
                block = full
            path = self.folder / self.key((start + lo) // cf)
            if self.sparse and not np.any(block != self.fill):
                path.unlink(missing_ok=True)
                continue
            payload = self.blosc.encode(np.ascontiguousarray(block, self.dtype))
            _write_chunk(path, [payload, _crc(payload)], made)


@dataclass
class _ShardState:
    """One version of one shard file, as a `_Frames` reader found it."""

    stamp: tuple[int, int, int, int]  # inode, size, mtime, ctime of the file
    offsets: list[int] | None  # per frame (-1: not stored); None: back to back from 0
    checked: int = 0  # bit i set: frame i's checksum matched
    data: NDArray[np.uint8] | None = None  # the whole file mapped read-only, while mapped


class _ShardCache:
    """What a process knows of the shard files it has read: per file version, where the frames
    lie and which frames' checksums matched (the last `states` files read, ~150 bytes each),
    and memory maps of the last `maps` files read.

    Why maps: frames are copied out of the page cache as from a numpy memmap (a read() into
    the batch was ~40 % slower here: the kernel copies page by page). Why remember checks: a
    loader reads the same frames every epoch, and a crc32c costs ~0.65x a memcpy here (~21
    GB/s), so each frame is checked once per version of its file. A replaced or rewritten file
    is noticed by its stat before each read (new inode, size, mtime or ctime) and checked anew;
    egosynth's writers replace files (rename), never truncate them in place.
    """

    def __init__(self, states: int = 1 << 16, maps: int | None = None) -> None:
        self.limits = states, maps if maps is not None else _map_limit()
        self.clear()

    def clear(self) -> None:
        """Forget everything (also run in a forked child: the parent's lock may be held)."""
        self._states: OrderedDict[str, _ShardState] = OrderedDict()
        self._mapped: OrderedDict[str, _ShardState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, stamp: tuple[int, int, int, int]) -> _ShardState | None:
        """The state of `path` if it is still the version `stamp`."""
        with self._lock:
            state = self._states.get(path)
            if state is None or state.stamp != stamp:
                return None
            self._states.move_to_end(path)
            if state.data is not None:
                self._mapped.move_to_end(path)
            return state

    def forget(self, folder: str | Path) -> None:
        """Drop what is known of the files under `folder` (about to be deleted: a map would
        keep a deleted file's disk space in use)."""
        prefix = f"{Path(folder).absolute()}/"
        with self._lock:
            for path in [p for p in self._states if p.startswith(prefix)]:
                self._states.pop(path).data = None
                self._mapped.pop(path, None)

    def put(self, path: str, state: _ShardState) -> None:
        """Remember `state`, mapped (its `data` set): the oldest maps and states are dropped."""
        with self._lock:
            old = self._states.pop(path, None)
            if old is not None and old is not state:
                old.data = None
                self._mapped.pop(path, None)
            self._states[path] = self._mapped[path] = state
            self._mapped.move_to_end(path)
            while len(self._mapped) > self.limits[1]:
                self._mapped.popitem(last=False)[1].data = None  # unmapped once unreferenced
            while len(self._states) > self.limits[0]:
                gone, dropped = self._states.popitem(last=False)
                if self._mapped.pop(gone, None) is not None:
                    dropped.data = None


def _map_limit() -> int:
    """Shard maps a process keeps: Python's mmap holds a file descriptor per map, so a quarter
    of the open-file limit, at most 1024 (~1 GiB of the page cache mapped)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 4))


_SHARDS = _ShardCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SHARDS.clear)


@dataclass(frozen=True)
class _Frames:
    """Reads and writes the chunk files of ONE array stored as raw frames, without zarr.

    The layout is zarr's sharding codec: a chunk file ("shard") holds `shard` frames along
    time; each frame is one inner chunk, its raw little-endian bytes followed by their crc32c;
    after the frames comes an index of (offset, nbytes) uint64 pairs, one per frame (2**64-1
    both for a frame never written: it reads as the fill value), and the index's crc32c. As
    every frame carries its own checksum, any frames can be read - straight into their
    destination, one copy out of the page cache as for a memmap - and verified, without
    reading the rest of the chunk.

    Qualifies only: time split alone into shards, one frame per inner chunk, inner codecs
    `bytes` (little-endian) -> `crc32c`, index codecs the same at the end of the shard,
    regular grid, default chunk keys with "/", on a little-endian machine.
    """

    folder: Path
    shape: tuple[int, ...]
    shard: int
    dtype: np.dtype
    fill: Any
    sparse: bool = True  # frames of fill values are not stored (a missing one reads as fill)

    @cached_property
    def frame_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @cached_property
    def index_bytes(self) -> int:
        """Size of the shard index: (offset, nbytes) uint64 per frame, then its crc32c."""
        return 16 * self.shard + _CRC_BYTES

    @classmethod
    def from_metadata(
        cls, folder: Path, md: Mapping[str, Any], sparse: bool = True
    ) -> _Frames | None:
        """The direct reader of an array's zarr.json document, or None (not this layout)."""
        if sys.byteorder != "little":
            return None
        try:
            (codec,) = md["codecs"]
            cfg = codec["configuration"]
            chain = [*cfg["codecs"], *cfg["index_codecs"]]
            if (
                codec["name"] != "sharding_indexed"
                or [c["name"] for c in chain] != ["bytes", "crc32c"] * 2
                or any(
                    (c.get("configuration") or {}).get("endian", "little") != "little"
                    for c in chain
                )
                or cfg.get("index_location", "end") != "end"
                or not _default_keys(md)
                or md["chunk_grid"]["name"] != "regular"
                or md.get("storage_transformers")
            ):
                return None
            shape = tuple(int(n) for n in md["shape"])
            shards = tuple(int(n) for n in md["chunk_grid"]["configuration"]["chunk_shape"])
            inner = tuple(int(n) for n in cfg["chunk_shape"])
            dtype = np.dtype(md["data_type"])
            if dtype.kind not in "biuf" or not shape or shards[1:] != shape[1:]:
                return None
            if inner != (1, *shape[1:]):
                return None
            # absolute: the shard cache's keys must not depend on how the store was named
            fill = np.array(md["fill_value"], dtype)
            return cls(folder.absolute(), shape, shards[0], dtype, fill, sparse)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    @property
    def chunks(self) -> tuple[int, ...]:
        """The read unit, as zarr's `Array.chunks` reports it: one frame."""
        return (1, *self.shape[1:])

    @property
    def file_frames(self) -> int:
        """Frames per chunk file (writes cover whole files)."""
        return self.shard

    def key(self, s: int) -> str:
        return _chunk_key(len(self.shape), s)

    def read(self, start: int, stop: int, out: NDArray | None = None, step: int = 1) -> NDArray:
        """Rows start, start + step, ... below stop along axis 0, into `out` if given
        (C-contiguous, this shape and dtype): each frame is read straight into its row."""
        frames = range(start, stop, step)
        if out is None:
            out = np.empty((len(frames), *self.shape[1:]), self.dtype)
        lo = 0
        while lo < len(frames):  # the frames of one shard at a time
            s = frames[lo] // self.shard
            hi = lo + 1
            while hi < len(frames) and frames[hi] // self.shard == s:
                hi += 1
            self._read_shard(s, frames[lo:hi], out[lo:hi])
            lo = hi
        return out

    def _read_shard(self, s: int, frames: range, out: NDArray) -> None:
        """Frames `frames` (all in shard `s`) into `out`, each checked against its crc32c
        unless already checked in the same version of the file (see `_ShardCache`)."""
        key = self.key(s)
        path = f"{self.folder}/{key}"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not self.sparse:
                raise _CorruptChunk(f"{key}: missing (this array stores every frame)") from None
            out[...] = self.fill
            return
        state = _SHARDS.get(path, _stamp(st))
        data = None if state is None else state.data
        if data is None:
            state, data = self._map(path, key, state)
        first = frames.start - s * self.shard
        local = range(first, first + len(frames) * frames.step, frames.step)
        self._copy_frames(state, data, key, local, out)

    def _map(
        self, path: str, key: str, known: _ShardState | None
    ) -> tuple[_ShardState, NDArray[np.uint8]]:
        """Map a shard file; a version not `known` has its index checked first."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size < self.index_bytes:
                raise _CorruptChunk(
                    f"{key}: {st.st_size} bytes, too short for a shard of {self.shard}"
                )
            data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        state = known if known is not None and known.stamp == _stamp(st) else None
        if state is None:
            state = _ShardState(_stamp(st), self._offsets(data, key))
        state.data = data
        _SHARDS.put(path, state)
        return state, data

    def _offsets(self, data: NDArray[np.uint8], key: str) -> list[int] | None:
        """Byte offset of each frame in the shard (-1: not stored), from its index after
        checking the index's checksum and every entry; None when the frames lie back to back
        from offset 0 (as egosynth writes them)."""
        n = self.index_bytes
        raw = data[len(data) - n :]
        if crc32c.crc32c(raw[:-_CRC_BYTES]) != int.from_bytes(raw[-_CRC_BYTES:], "little"):
            raise _CorruptChunk(f"{key}: index checksum mismatch")
        step = self.frame_bytes + _CRC_BYTES
        offsets = []
        entries = raw[:-_CRC_BYTES].view("<u8").reshape(-1, 2).tolist()
        for i, (offset, nbytes) in enumerate(entries):
            if offset == _NO_FRAME:
                offsets.append(-1)
            elif nbytes != step or offset + nbytes > len(data) - n:
                raise _CorruptChunk(f"{key}: frame {i} of the shard has {nbytes} bytes at {offset}")
            else:
                offsets.append(offset)
        return None if offsets == list(range(0, self.shard * step, step)) else offsets

    def _copy_frames(
        self, state: _ShardState, src: NDArray[np.uint8], key: str, local: range, out: NDArray
    ) -> None:
        """Copy the shard's frames `local` from its map `src` into `out` (one strided copy
        when the frames lie back to back, the usual case), after checking each frame not yet
        checked in this version of the file."""
        fb, step = self.frame_bytes, self.frame_bytes + _CRC_BYTES
        at = None
        if state.checked != (1 << self.shard) - 1:  # else (steady state) nothing to check
            at = self._at(state, local)
            self._check(state, src, key, local, at)
            if not self.sparse and min(at, default=0) < 0:
                f = local[at.index(min(at))]
                raise _CorruptChunk(f"{key}: frame {f} of the shard is missing")
        flat = out.reshape(len(out), -1).view(np.uint8)
        if state.offsets is None:  # (frame, byte) view of the shard: one copy for all
            frames = src[: self.shard * step].reshape(self.shard, step)
            flat[...] = frames[local.start : local.stop : local.step, :fb]
            return
        if at is None:
            at = self._at(state, local)
        for q, a in enumerate(at):
            if a < 0:
                out[q] = self.fill
            else:
                flat[q] = src[a : a + fb]

    def _at(self, state: _ShardState, local: range) -> list[int]:
        """Byte offset in the shard of each frame of `local` (-1: not stored)."""
        step = self.frame_bytes + _CRC_BYTES
        return [f * step if state.offsets is None else state.offsets[f] for f in local]

    def _check(
        self, state: _ShardState, src: NDArray[np.uint8], key: str, local: range, at: list[int]
    ) -> None:
        """Check the crc32c of frames `local` (at byte offsets `at`) not checked yet."""
        fb = self.frame_bytes
        for f, a in zip(local, at, strict=True):
            if a < 0 or state.checked >> f & 1:
                continue
            if crc32c.crc32c(src[a : a + fb]) != int.from_bytes(src[a + fb : a + fb + 4], "little"):
                raise _CorruptChunk(f"{key}: checksum mismatch in frame {f} of the shard")
            state.checked |= 1 << f

    def write(self, start: int, data: NDArray, made: set[Path]) -> None:
        """Write rows [start, start + len(data)): shard-aligned, ending on a shard boundary or
        at the end of the array. In a sparse array frames equal to the fill value are not stored,
        and a shard of nothing but such frames is no file (zarr's write_empty_chunks=False)."""
        for lo in range(0, len(data), self.shard):
            block = data[lo : lo + self.shard]
            path = self.folder / self.key((start + lo) // self.shard)
            index = np.full((self.shard, 2), _NO_FRAME, "<u8")
            parts: list[Any] = []
            pos = 0
            for i, frame in enumerate(block):
                if self.sparse and not np.any(frame != self.fill):
                    continue
                raw = np.ascontiguousarray(frame, self.dtype)
                parts += [raw, _crc(raw)]
                index[i] = pos, raw.nbytes + _CRC_BYTES
                pos += raw.nbytes + _CRC_BYTES
            if not parts:
                path.unlink(missing_ok=True)
                continue
            _write_chunk(path, [*parts, index, _crc(index)], made)


def _default_keys(md: Mapping[str, Any]) -> bool:
    """Whether an array's chunk keys are zarr's default encoding with "/"."""
    cke = md["chunk_key_encoding"]
    sep = (cke.get("configuration") or {}).get("separator", "/")
    return cke["name"] == "default" and sep == "/"


def _direct_io(
    folder: Path, md: Mapping[str, Any], sparse: bool = True
) -> _Direct | _Frames | None:
    """The direct chunk reader/writer of an array's zarr.json document, or None (use zarr).
    `sparse`: whether chunks of fill values may be absent (else a missing one is an error)."""
    return _Direct.from_metadata(folder, md, sparse) or _Frames.from_metadata(folder, md, sparse)


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file then rename, like zarr's LocalStore: a reader never sees half a file."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    """A zarr.json document, or None when there is none (or it is not a JSON object)."""
    doc, _ = _json_doc(path)
    return doc


def _json_doc(path: Path, node: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """(document, None) for a readable zarr.json (of `node_type` `node`, if given); (None,
    None) when there is none; (None, why) when it is there but unusable (corrupt).

    egosynth and zarr write zarr.json atomically (temp file, then rename), so a document that
    exists but does not parse was damaged afterwards: never a writer's intermediate state.
    """
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None, f"{path.name} is not valid JSON"
    if not isinstance(doc, dict):
        return None, f"{path.name} is not a JSON object"
    if node is not None and doc.get("node_type") != node:
        return None, f"{path.name}: node_type = {doc.get('node_type')!r}, expected {node!r}"
    return doc, None


def _scan_groups(folder: Path, bad: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """name -> attributes of every child GROUP of a local group folder.

    Listing the folder ourselves skips what a live writer has not finished (a folder without
    zarr.json yet, `*.partial` temp files) silently, where zarr's listing warns on each. A
    child whose zarr.json is there but corrupt (not JSON, not a group) is never a writer's
    intermediate state: it goes into `bad` (name -> why) when given, else it is an error.
    """
    out: dict[str, dict[str, Any]] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for entry in sorted(entries, key=lambda e: e.name):
        if not entry.is_dir():
            continue
        doc, why = _json_doc(Path(entry.path) / "zarr.json", "group")  # None: being created
        attrs = None if doc is None else doc.get("attributes", {})
        if doc is not None and not isinstance(attrs, dict):
            why = "zarr.json: attributes are not a JSON object"
        if why is not None:
            if bad is None:
                raise EgosynthError(f"{folder.parent}: clip {entry.name}: {why} (corrupt)")
            bad[entry.name] = why
        elif attrs is not None:
            out[entry.name] = dict(attrs)
    return out


def _clip_attrs(
    path: str | Path, root: zarr.Group, bad: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """clip id -> attributes of every clip group (complete or not) of an open store; a
    corrupt clip group is an error, or goes into `bad` when given (see `_scan_groups`)."""
    local = _local(path)
    if local is not None and root.metadata.consolidated_metadata is None:
        return _scan_groups(local / CLIPS, bad)
    if CLIPS not in root:
        return {}
    clips = root[CLIPS]
    with warnings.catch_warnings():
        # A remote store being written: unfinished objects are skipped, not worth a warning.
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        return {cid: group.attrs.asdict() for cid, group in clips.groups()}


# --------------------------------------------------------------------------- driver side
def prepare_store(
    path: str | Path, fingerprint: str, attrs: Mapping[str, Any], overwrite: bool = False
) -> None:
    """Create the store, or reopen one made from the same config, before any clip is written.

    A store made from a different config (other fingerprint or schema) is refused unless
    `overwrite`; anything at `path` that is not an egosynth store is never touched. Opening
    drops the consolidated metadata, so readers never trust a stale index while rendering.

    A local store's folder is never replaced, only emptied (`--overwrite`) and filled: the
    driver's write lock (`writer_lock`) lives on that folder. A new store gets a random
    `store_id`, kept as long as the store is extended or resumed (a trainer's checkpoint
    records it: resuming on another store is refused).
    """
    local = _local(path)
    if local is not None and local.exists():
        if not local.is_dir() or (any(local.iterdir()) and not (local / "zarr.json").is_file()):
            raise EgosynthError(f"{path}: exists and is not a Zarr store; refusing to touch it")
    old = _root_attrs(path)
    if old is not None:
        if old.get("format") != FORMAT:
            raise EgosynthError(f"{path}: exists and is not an egosynth clip store")
        same = old.get("fingerprint") == fingerprint and old.get("schema_version") == SCHEMA_VERSION
        if not same and not overwrite:
            raise EgosynthError(
                f"{path}: store was made from a different config (fingerprint "
                f"{old.get('fingerprint')!r}, schema {old.get('schema_version')!r}; this config "
                f"{fingerprint!r}, schema {SCHEMA_VERSION}); use --overwrite to replace it"
            )
        if overwrite:
            _remove_store(path)
    kept = old if old is not None and not overwrite else {}
    base = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "egosynth_version": __version__,
        "fingerprint": fingerprint,
        **attrs,
        "store_status": RENDERING,
    }
    if kept.get("store_id") or not kept:  # stores made before store_id existed keep none
        base["store_id"] = kept.get("store_id") or uuid.uuid4().hex
    try:
        if local is not None:
            # Written here, not by zarr.open_group(mode="w"): that deletes and recreates the
            # folder (a new inode), and the write lock held on the old one would guard nothing.
            local.mkdir(parents=True, exist_ok=True)
            (local / CLIPS).mkdir(exist_ok=True)
            _write_atomic(local / "zarr.json", _group_doc(base))
            if not (local / CLIPS / "zarr.json").is_file():
                _write_atomic(local / CLIPS / "zarr.json", _group_doc({}))
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
            try:
                root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
                root.attrs.put(base)
            except FileNotFoundError:
                root = zarr.open_group(str(path), mode="w", attributes=base)
            if CLIPS not in root:
                root.create_group(CLIPS)
    except OSError as exc:
        raise EgosynthError(f"{path}: cannot write the store ({exc.strerror or exc})") from None


def _root_attrs(path: str | Path) -> dict[str, Any] | None:
    """Root attrs of an existing Zarr store at `path`, or None when there is none."""
    local = _local(path)
    if local is not None and not (local / "zarr.json").is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
            return zarr.open_group(str(path), mode="r", use_consolidated=False).attrs.asdict()
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, OSError) as exc:
        raise EgosynthError(f"{path}: cannot read the existing store ({exc})") from None


@contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """Hold the store's write lock: one render driver per store at a time.

    A second render into the same local store (another terminal, a rerun while the first
    still runs, with or without --overwrite) would plan the same clips and write them twice.
    The lock is an exclusive `flock` on the store folder itself (no lock file to go stale:
    the kernel drops it when the process dies). It guards the folder the render writes
    because egosynth never replaces that folder (`prepare_store` and `--overwrite` empty and
    fill it; see `_check_locked`). The folder is created empty if missing (and removed again
    if the locked work fails before writing anything). URL stores are not locked.
    """
    local = _local(path)
    if local is None:
        yield
        return
    if local.exists() and not local.is_dir():
        raise EgosynthError(f"{path}: exists and is not a Zarr store; refusing to touch it")
    made = not local.exists()
    fd = _lock_folder(path, local)
    try:
        try:
            yield
            _check_locked(path, local, fd)
        finally:
            if made and local.is_dir() and not any(local.iterdir()):
                local.rmdir()  # failed before writing: leave no empty folder behind
    finally:
        os.close(fd)


def _lock_folder(path: str | Path, local: Path) -> int:
    """Open and exclusively flock the folder now at `local` (made if missing); the descriptor.

    The folder at the path must still be the one locked once the lock is held: a holder that
    removed its empty folder (see `writer_lock`) leaves a waiter a lock on a deleted inode, so
    that case locks again.
    """
    for _ in range(5):
        try:
            local.mkdir(parents=True, exist_ok=True)
            fd = os.open(local, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            why = exc.strerror or exc
            raise EgosynthError(f"{path}: cannot write the store ({why})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EgosynthError(
                f"{path}: another egosynth process is writing this store (it holds the "
                "store's write lock); wait for it to finish, or render to another --out"
            ) from None
        if _same_folder(local, fd):
            return fd
        os.close(fd)
    raise EgosynthError(f"{path}: the store folder keeps being replaced; cannot lock it")


def _same_folder(local: Path, fd: int) -> bool:
    """Whether the folder at `local` is the one open as `fd` (same device and inode)."""
    try:
        st, mine = os.stat(local), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _check_locked(path: str | Path, local: Path, fd: int) -> None:
    """Fail loudly if the locked store folder was replaced while locked: the lock would not
    have guarded what was written (a bug, or a process that ignores the lock)."""
    if local.exists() and not _same_folder(local, fd):
        raise EgosynthError(
            f"{path}: the store folder was replaced while this render held its write lock; "
            "another process may have written it: check it with egosynth inspect --validate"
        )


def _remove_store(path: str | Path) -> None:
    local = _local(path)
    if local is not None:
        _SHARDS.forget(local)
        # Empty the folder but keep it: its inode carries the writer lock (writer_lock).
        for child in local.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:  # fsspec URL: let zarr's store delete every key under it
        store = zarr.open_group(str(path), mode="r+", use_consolidated=False).store
        import asyncio

        asyncio.run(store.delete_dir(""))


def finalize_store(
    path: str | Path, planned: Sequence[str], interrupted: bool = False
) -> dict[str, Any]:
    """Write the root index and label table, then consolidate metadata (driver only, once).

    Returns the index: clip id -> summary of every complete clip. `store_status` becomes
    "complete" when every planned clip is complete, else "incomplete"; "interrupted" when the
    run was stopped before its end (`interrupted`: Ctrl-C, an error), so that readers stop
    waiting for it. A corrupt clip group is left out of the index (the next run redoes it).
    """
    root = _open_root(path, "r+")
    index: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    for cid, a in sorted(_clip_attrs(path, root, bad={}).items()):
        if a.get("status") != COMPLETE:
            continue
        index[cid] = {k: a[k] for k in ("scene", "n_frames", "fps", "width", "height", "seed")}
        labels.setdefault(a["scene"], a.get("labels", []))
    done = all(cid in index for cid in planned)
    attrs = root.attrs.asdict()
    status = INTERRUPTED if interrupted else COMPLETE if done else INCOMPLETE
    attrs.update(index=index, labels=labels, store_status=status)
    root.attrs.put(attrs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
        # Leftovers of a killed writer (a clip folder without zarr.json, a temp file) are not
        # part of the hierarchy; zarr skips them, and need not warn about each.
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        zarr.consolidate_metadata(str(path))
    return index


@contextmanager
def finalized_on_exit(path: str | Path, planned: Sequence[str]) -> Iterator[None]:
    """Finalize the store when the block ends (the driver's render): normally, or marked
    "interrupted" when it raises (KeyboardInterrupt included), so that `store_status` never
    stays "rendering" after the driver is gone. A driver killed outright (SIGKILL) cannot:
    live readers then stop at their idle timeout, and the next render redoes the rest."""
    try:
        yield
    except BaseException:
        try:
            finalize_store(path, planned, interrupted=True)
        except Exception:  # best effort: the error that stopped the run is what to report
            pass
        raise
    finalize_store(path, planned)


def complete_clip_ids(path: str | Path, fingerprint: str | None = None) -> set[str]:
    """Ids of clips whose status is complete (and, if given, made from `fingerprint`); a
    corrupt clip group is not complete (a render redoes it)."""
    out = set()
    for cid, a in _clip_attrs(path, _open_root(path, "r+"), bad={}).items():
        if a.get("status") == COMPLETE and (
            fingerprint is None or a.get("fingerprint") == fingerprint
        ):
            out.add(cid)
    return out


# --------------------------------------------------------------------------- worker side
def _create_arrays(
    group: zarr.Group,
    n_frames: int,
    height: int,
    width: int,
    tc: int,
    cname: str,
    clevel: int,
    rgb: str,
) -> dict[str, zarr.Array]:
    """Create every array of a clip group through zarr (the definition of the layout)."""
    comp = compressors(cname, clevel)
    arrays: dict[str, zarr.Array] = {}
    for name, (dtype, tail, dims) in IMAGE_ARRAYS.items():
        shape = (n_frames, 2, height, width, *tail)
        # Raw rgb: lz4 shrinks rendered frames only 1.4-1.9x yet costs ~3 memcpys to decode,
        # and raw frames with a checksum each let a reader fetch exactly a window's frames.
        raw = name == "rgb" and rgb == "raw"
        arrays[name] = group.create_array(
            name,
            shape=shape,
            chunks=(1, *shape[1:]) if raw else (tc, *shape[1:]),
            shards=(tc, *shape[1:]) if raw else None,
            dtype=dtype,
            compressors=[zarr.codecs.Crc32cCodec()] if raw else comp,
            fill_value=0,
            dimension_names=dims,
        )
    for name, (dtype, tail, dims) in META_ARRAYS.items():
        shape = (n_frames, *tail)  # tiny: one chunk for the whole clip
        arrays[name] = group.create_array(
            name,
            shape=shape,
            chunks=shape,
            dtype=dtype,
            compressors=comp,
            fill_value=False if dtype == "bool" else 0,
            dimension_names=dims,
        )
    arrays["intrinsics"] = group.create_array(
        "intrinsics",
        shape=(2, 3, 3),
        chunks=(2, 3, 3),
        dtype="float32",
        compressors=comp,
        fill_value=0,
        dimension_names=INTRINSICS_DIMS,
    )
    return arrays


def _group_doc(attrs: Mapping[str, Any]) -> bytes:
    """A group's zarr.json with `attrs`, exactly the bytes zarr writes (made without I/O)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    doc = GroupMetadata(attributes=dict(attrs), zarr_format=3)
    return doc.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


_ARRAY_DOCS: dict[tuple[int, int, int, int, str, int, str], dict[str, bytes]] = {}


def _array_docs(
    n_frames: int, height: int, width: int, tc: int, cname: str, clevel: int, rgb: str
) -> dict[str, bytes]:
    """name -> the zarr.json bytes of every array of a clip group, exactly as zarr writes them.

    zarr makes them once per layout in a memory store; each clip then writes them as plain
    files (creating 12 arrays through zarr took ~35 ms per clip here, the files < 2 ms).
    """
    key = (n_frames, height, width, tc, cname, clevel, rgb)
    if key not in _ARRAY_DOCS:
        mem: dict[str, Any] = {}
        _create_arrays(zarr.open_group(zarr.storage.MemoryStore(store_dict=mem), mode="w"), *key)
        _ARRAY_DOCS[key] = {
            k.removesuffix("/zarr.json"): v.to_bytes()
            for k, v in mem.items()
            if k.endswith("/zarr.json")
        }
    return _ARRAY_DOCS[key]


class ClipWriter:
    """Writes ONE clip group. Create, write frame batches and poses, then `complete()`.

    Creating the writer deletes any partial group left by an earlier, interrupted attempt, so
    a redone clip is byte-identical to one written in a single pass.

    In a local store the array documents and chunk files are written directly (`direct`,
    default): the same bytes zarr writes, without its per-call cost. URLs, or
    `direct=False`, go through zarr for everything.

    `rgb` is the rgb layout: "raw" (default; frames with a checksum each, read frame by frame)
    or "lz4" (Blosc chunks like the other image arrays: ~1.4-1.9x smaller, slower to read).

    `sparse`: the arrays that skip chunks (and rgb frames) entirely of the fill value (default
    SPARSE_ARRAYS: the masks of empty views); every chunk of the others is written, so that a
    reader can tell a missing chunk from data. Recorded in the clip's `sparse_arrays` attr.
    """

    def __init__(
        self,
        path: str | Path,
        clip_id: str,
        n_frames: int,
        height: int,
        width: int,
        attrs: Mapping[str, Any],
        chunk_frames: int | None = None,
        cname: str = "lz4",
        *,
        clevel: int = 5,
        rgb: str = "raw",
        direct: bool = True,
        sparse: Sequence[str] = SPARSE_ARRAYS,
    ) -> None:
        if rgb not in RGB_LAYOUTS:
            raise EgosynthError(f"{path}: rgb layout {rgb!r}: must be one of {RGB_LAYOUTS}")
        if any(name not in ARRAY_NAMES for name in sparse):
            raise EgosynthError(f"{path}: sparse arrays {list(sparse)}: not all in {ARRAY_NAMES}")
        self.sparse = tuple(n for n in ARRAY_NAMES if n in sparse)
        self.path, self.clip_id, self.n_frames = str(path), clip_id, n_frames
        self.chunk_frames = chunk_frames or default_chunk_frames(height, width)
        self.attrs = {
            "clip_id": clip_id,
            **attrs,
            "n_frames": n_frames,
            "height": height,
            "width": width,
            "chunk_frames": self.chunk_frames,
            "sparse_arrays": list(self.sparse),
            "schema_version": SCHEMA_VERSION,
        }
        # The token fences off a stray earlier writer: only the writer whose token is in the
        # group may mark it complete (it is dropped from the final attrs).
        self.token = uuid.uuid4().hex
        writing = {**self.attrs, "status": WRITING, "writer": self.token}
        layout = (n_frames, height, width, self.chunk_frames, cname, clevel, rgb)
        self.arrays: dict[str, zarr.Array] = {}  # zarr handles, opened when first needed
        self.direct: dict[str, _Direct | _Frames] = {}
        self._made: set[Path] = set()
        self._group: zarr.Group | None = None
        local = _local(self.path)
        self.folder = None if not direct or local is None else local / CLIPS / clip_id
        if self.folder is None:
            root = _open_root(self.path, "r+")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
                self._group = root[CLIPS].create_group(clip_id, overwrite=True, attributes=writing)
            self.arrays = _create_arrays(self._group, *layout)
            return
        # Local: the same files zarr would write (group and array documents), without its
        # per-call cost (~35 ms per clip here for the 13 nodes).
        root_doc = _read_json(local / "zarr.json")
        if root_doc is None:
            _open_root(self.path, "r+")  # raises the precise one-line error
        _check_root_attrs(self.path, (root_doc or {}).get("attributes"))
        if self.folder.exists():
            _SHARDS.forget(self.folder)
            shutil.rmtree(self.folder)  # an interrupted attempt: start from nothing
        self.folder.mkdir()
        _write_atomic(self.folder / "zarr.json", _group_doc(writing))
        for name, doc in _array_docs(*layout).items():
            (self.folder / name).mkdir()
            _write_atomic(self.folder / name / "zarr.json", doc)
            d = _direct_io(self.folder / name, json.loads(doc), name in self.sparse)
            if d is not None:
                self.direct[name] = d

    @property
    def group(self) -> zarr.Group:
        """The clip's zarr group (opened on first use when writing directly)."""
        if self._group is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
                self._group = zarr.open_group(
                    self.path, path=f"{CLIPS}/{self.clip_id}", mode="r+", use_consolidated=False
                )
        return self._group

    def _array(self, name: str) -> zarr.Array:
        if name not in self.arrays:
            self.arrays[name] = self.group[name]
        # zarr's default skips chunks of fill values: only sparse arrays may (runtime config)
        return self.arrays[name].with_config({"write_empty_chunks": name not in self.sparse})

    def _write(self, name: str, start: int, data: NDArray) -> None:
        """Rows [start, start + len(data)) of array `name`: directly when whole chunks of the
        exact shape, else through zarr (which also raises on bad shapes)."""
        d = self.direct.get(name)
        stop = start + len(data)
        cf = d.file_frames if d is not None else 0
        if (
            d is not None
            and data.shape[1:] == d.shape[1:]
            and start % cf == 0
            and (stop % cf == 0 or stop == d.shape[0])
            and stop <= d.shape[0]
        ):
            d.write(start, data, self._made)
        else:
            self._array(name)[start:stop] = data

    def write_frames(self, start: int, frames: Mapping[str, NDArray]) -> None:
        """Write stereo frames [start, start + n) of every image array; (n, 2, H, W, ...) each.

        Batches should start on chunk boundaries (multiples of `chunk_frames`) so that each
        chunk is written once.
        """
        for name, (dtype, _, _) in IMAGE_ARRAYS.items():
            self._write(name, start, np.asarray(frames[name]).astype(dtype, copy=False))

    def write_meta(self, arrays: Mapping[str, NDArray], intrinsics: NDArray) -> None:
        """Write the per-frame pose/gaze arrays (names of META_ARRAYS) and the (2, 3, 3) K."""
        for name, (dtype, _, _) in META_ARRAYS.items():
            data = np.asarray(arrays[name]).astype(dtype, copy=False)
            if data.shape[:1] != (self.n_frames,):
                raise EgosynthError(
                    f"{self.path}: clip {self.clip_id}/{name}: shape {data.shape}, expected "
                    f"{self.n_frames} frames"
                )
            self._write(name, 0, data)
        self._write("intrinsics", 0, np.asarray(intrinsics, np.float32))

    def complete(self, extra_attrs: Mapping[str, Any] | None = None) -> None:
        """Mark the clip complete: the LAST write, after every array is on disk."""
        done = {**self.attrs, **(extra_attrs or {}), "status": COMPLETE}
        if self.folder is not None:
            current = (_read_json(self.folder / "zarr.json") or {}).get("attributes") or {}
        else:
            current = zarr.open_group(self.group.store, path=self.group.path, mode="r").attrs
        if current.get("writer") != self.token:
            raise EgosynthError(
                f"{self.path}: clip {self.clip_id} was taken over by another writer; not marking "
                "it complete"
            )
        if self.folder is not None:
            _write_atomic(self.folder / "zarr.json", _group_doc(done))
        else:
            self.group.attrs.put(done)


# --------------------------------------------------------------------------- reader API
@dataclass(frozen=True)
class Clip:
    """One clip of a store. Arrays are lazy zarr arrays; `read` loads a time range.

    `folder` is the clip's folder in a local store (None for URLs): `read` then decodes the
    chunk files directly, checksums verified (raw frames once per version of their file, see
    `_ShardCache`), and nothing goes through zarr until `group` or `array` is asked for.
    """

    clip_id: str
    attrs: dict[str, Any]
    root: zarr.Group
    folder: Path | None = None
    _direct: dict[str, _Direct | _Frames | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _arrays: dict[str, zarr.Array] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @cached_property
    def group(self) -> zarr.Group:
        """The clip's zarr group (opened on first use)."""
        return self.root[f"{CLIPS}/{self.clip_id}"]

    @property
    def scene(self) -> str:
        return str(self.attrs["scene"])

    @property
    def n_frames(self) -> int:
        return self._size_attr("n_frames")

    def _size_attr(self, key: str) -> int:
        """A size attribute (n_frames, height, width): an integer >= 1, else a one-line error."""
        v = self.attrs.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise EgosynthError(f"clip {self.clip_id}: attr {key} = {v!r}: not an integer >= 1")
        return v

    @property
    def fps(self) -> float:
        return float(self.attrs["fps"])

    @property
    def complete(self) -> bool:
        return self.attrs.get("status") == COMPLETE

    @cached_property
    def sparse(self) -> tuple[str, ...]:
        """Arrays whose chunks of fill values may be absent (the clip's `sparse_arrays`; a
        clip written before that attr existed: every array). A missing chunk of any other
        array is an error on read."""
        names = self.attrs.get("sparse_arrays", list(ARRAY_NAMES))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EgosynthError(f"clip {self.clip_id}: attr sparse_arrays = {names!r}: not a list")
        return tuple(names)

    def expected_layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) array `name` must have, from the clip's attrs and the schema."""
        if name == "intrinsics":
            return (2, 3, 3), np.dtype("float32")
        n = self.n_frames
        if name in IMAGE_ARRAYS:
            dtype, tail, _ = IMAGE_ARRAYS[name]
            hw = self._size_attr("height"), self._size_attr("width")
            return (n, 2, *hw, *tail), np.dtype(dtype)
        dtype, tail, _ = META_ARRAYS[name]
        return (n, *tail), np.dtype(dtype)

    def _check_layout(self, name: str, shape: Sequence[int], dtype: Any) -> None:
        """A one-line error unless array `name` has the shape and dtype the attrs imply (an
        array shorter than n_frames would read fill values past its end)."""
        want, want_dtype = self.expected_layout(name)
        shape = tuple(shape)
        if shape[:1] != want[:1] and name != "intrinsics":
            raise EgosynthError(
                f"clip {self.clip_id}/{name}: {shape[0] if shape else 0} frames, the clip's "
                f"attr n_frames = {want[0]}"
            )
        if shape != want or np.dtype(dtype) != want_dtype:
            raise EgosynthError(
                f"clip {self.clip_id}/{name}: {np.dtype(dtype)} {shape}, the clip's attrs "
                f"say {want_dtype} {want}"
            )

    def _doc(self, name: str) -> dict[str, Any] | None:
        """Array `name`'s zarr.json document in a local store (None for URLs); a missing or
        corrupt one is a one-line error, never an array of fill values."""
        if name not in ARRAY_NAMES:
            raise EgosynthError(f"clip {self.clip_id}: unknown array {name!r} (have {ARRAY_NAMES})")
        if self.folder is None:
            return None
        md, why = _json_doc(self.folder / name / "zarr.json", "array")
        if md is None:
            why = why or f"array missing (no {name}/zarr.json)"
            raise EgosynthError(f"clip {self.clip_id}/{name}: {why}")
        try:
            shape, dtype = tuple(int(n) for n in md["shape"]), np.dtype(md["data_type"])
        except (KeyError, TypeError, ValueError):
            raise EgosynthError(
                f"clip {self.clip_id}/{name}: zarr.json has no valid shape or data_type"
            ) from None
        self._check_layout(name, shape, dtype)
        return md

    def array(self, name: str) -> zarr.Array:
        """The lazy zarr array `name` (one of ARRAY_NAMES); index it to read."""
        if name not in self._arrays:  # opening one costs a zarr metadata lookup: once
            self._doc(name)  # local: the array's own document, not a consolidated snapshot
            try:
                arr = self.group[name]
            except KeyError:
                raise EgosynthError(f"clip {self.clip_id}/{name}: array missing") from None
            except (ValueError, TypeError) as exc:  # metadata zarr cannot parse
                msg = str(exc).split("\n")[0]
                raise EgosynthError(f"clip {self.clip_id}/{name}: bad metadata ({msg})") from None
            if not isinstance(arr, zarr.Array):
                raise EgosynthError(f"clip {self.clip_id}/{name}: not an array")
            self._check_layout(name, arr.shape, arr.dtype)
            self._arrays[name] = arr
        return self._arrays[name]

    def chunk_frames(self, name: str) -> int:
        """Frames per chunk of array `name` along time (reads touch whole chunks; 1 for raw
        frames, zarr's inner chunks)."""
        d = self._direct_reader(name)
        return d.chunks[0] if d is not None else int(self.array(name).chunks[0])

    def codec(self, name: str) -> str:
        """How array `name` is stored, in a word: "raw" (frames with a checksum each) or the
        Blosc compressor's name (e.g. "lz4"), from the array's metadata."""
        arr = self.array(name)
        if arr.shards is not None:
            return "raw"
        blosc = [c for c in arr.compressors if isinstance(c, zarr.codecs.BloscCodec)]
        return blosc[0].cname.value if blosc else "other"

    def frame_addressable(self, name: str) -> bool:
        """Whether array `name` is stored as raw frames with a checksum each and read
        directly: reading any frames then costs those frames alone (one copy each out of the
        page cache), so a reader needs no cache of decoded chunks."""
        return isinstance(self._direct_reader(name), _Frames)

    def layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of array `name`, from its metadata."""
        d = self._direct_reader(name)
        if d is not None:
            return d.shape, d.dtype
        arr = self.array(name)
        return tuple(arr.shape), np.dtype(arr.dtype)

    def read_into(self, name: str, start: int, out: NDArray, step: int = 1) -> None:
        """Frames start, start + step, ... (len(out) of them) of per-frame array `name`,
        written into `out`.

        `out` must be C-contiguous with the array's trailing shape and dtype (e.g. one row of
        a batch buffer): whole chunks then decompress straight into it, and raw frames are
        read straight into their rows, with no copy.
        """
        shape, dtype = self.layout(name)
        if not isinstance(step, int) or step < 1:
            raise EgosynthError(f"clip {self.clip_id}/{name}: step {step!r}: must be >= 1")
        stop = start + (len(out) - 1) * step + 1 if len(out) else start
        if not 0 <= start <= stop <= self.n_frames:
            raise EgosynthError(
                f"clip {self.clip_id}: frame range [{start}, {stop}) outside [0, {self.n_frames})"
            )
        if out.shape[1:] != shape[1:] or out.dtype != dtype or not out.flags.c_contiguous:
            raise EgosynthError(
                f"clip {self.clip_id}/{name}: read_into needs a C-contiguous {dtype} buffer "
                f"of shape (n, {', '.join(map(str, shape[1:]))}), got {out.dtype} {out.shape}"
            )
        what = f"clip {self.clip_id}/{name}"
        d = self._direct_reader(name)
        if d is None:
            self._check_present(name, start, stop)
            out[...] = _read(self.array(name), slice(start, stop, step), what)
            return
        try:
            d.read(start, stop, out, step)
        except (_CorruptChunk, OSError) as exc:
            msg = str(exc).split("\n")[0]
            raise EgosynthError(f"{what}: corrupt or unreadable chunk ({msg})") from None

    def _direct_reader(self, name: str) -> _Direct | _Frames | None:
        """The direct chunk reader of `name`, or None where zarr must read (cached). A
        missing, corrupt or misshaped array is a one-line error here."""
        if name not in self._direct:
            md = self._doc(name)
            d = None
            if md is not None and self.folder is not None:
                d = _direct_io(self.folder / name, md, name in self.sparse)
            self._direct[name] = d
        return self._direct[name]

    def read(
        self, start: int = 0, stop: int | None = None, names: Sequence[str] | None = None
    ) -> dict[str, NDArray]:
        """Frames [start, stop) of the per-frame arrays `names` (default: all), plus intrinsics.

        Checksums are verified on every compressed chunk read, and on each raw frame's first
        read in this process (again after its file changes); a corrupt chunk raises
        EgosynthError naming the clip and array.
        """
        stop = self.n_frames if stop is None else stop
        if not 0 <= start <= stop <= self.n_frames:
            raise EgosynthError(
                f"clip {self.clip_id}: frame range [{start}, {stop}) outside [0, {self.n_frames})"
            )
        out = {}
        for name in names or ARRAY_NAMES:
            what = f"clip {self.clip_id}/{name}"
            d = self._direct_reader(name)
            if d is None:
                sel = slice(None) if name == "intrinsics" else slice(start, stop)
                lo, hi = (0, None) if name == "intrinsics" else (start, stop)
                self._check_present(name, lo, hi)
                out[name] = _read(self.array(name), sel, what)
                continue
            lo, hi = (0, d.shape[0]) if name == "intrinsics" else (start, stop)
            try:
                out[name] = d.read(lo, hi)
            except (_CorruptChunk, OSError) as exc:
                msg = str(exc).split("\n")[0]
                raise EgosynthError(f"{what}: corrupt or unreadable chunk ({msg})") from None
        return out

    def _check_present(self, name: str, start: int, stop: int | None) -> None:
        """Before zarr reads frames [start, stop) of a local array that is not sparse: every
        chunk file they lie in must be there (zarr would return fill values for it)."""
        if self.folder is None or name in self.sparse:
            return
        arr = self.array(name)
        missing = _absent_files(arr, self.folder / name, start, stop)
        if missing:
            raise EgosynthError(
                f"clip {self.clip_id}/{name}: corrupt or unreadable chunk ({missing[0]}: missing)"
            )


def _absent_files(
    arr: zarr.Array, folder: Path, start: int = 0, stop: int | None = None
) -> list[str]:
    """Keys of the chunk files (shards where sharded) of a local array that hold rows
    [start, stop) of axis 0 but are not regular files (default "/" keys; others: none)."""
    enc = arr.metadata.chunk_key_encoding
    if getattr(enc, "name", None) != "default" or getattr(enc, "separator", "/") != "/":
        return []
    grid = _file_grid(arr)
    size = (arr.shards or arr.chunks)[0]
    stop = arr.shape[0] if stop is None else stop
    out = []
    for t in range(start // size, min(-(-stop // size), grid[0])):
        for idx in np.ndindex(*grid[1:]):
            key = "c/" + "/".join(map(str, (t, *idx)))
            if not (folder / key).is_file():
                out.append(key)
    return out


def _read(arr: zarr.Array, sel: Any, what: str) -> NDArray:
    try:
        return arr[sel]
    except (ValueError, RuntimeError, OSError) as exc:
        msg = str(exc).split("\n")[0]
        raise EgosynthError(f"{what}: corrupt or unreadable chunk ({msg})") from None


class ClipStore:
    """Read access to an egosynth clip store (local path or fsspec URL).

    >>> store = ClipStore("outputs/demo.zarr")
    >>> for cid in store.clip_ids():            # complete clips only
    ...     clip = store.clip(cid)
    ...     window = clip.read(0, 8, ["rgb", "depth"])   # rgb (8, 2, H, W, 3)
    """

    def __init__(self, path: str | Path, consolidated: bool | None = None) -> None:
        """Open a store for reading.

        `consolidated`: None uses the consolidated metadata when present (one read for the
        whole tree; it is a snapshot taken when the last run finished); False lists the
        store itself (what `inspect` does, to show clips written since).
        """
        self.path = str(path)
        self.root = _open_root(path, "r", consolidated)

    @property
    def attrs(self) -> dict[str, Any]:
        return self.root.attrs.asdict()

    def clip_ids(self, include_incomplete: bool = False) -> list[str]:
        """Sorted ids of complete clips (or of every clip group, complete or not)."""
        clips = _clip_attrs(self.path, self.root)
        return sorted(
            c for c, a in clips.items() if include_incomplete or a.get("status") == COMPLETE
        )

    @property
    def identity(self) -> dict[str, Any]:
        """What tells this store from another with the same clip ids: its `store_id` (None
        for stores made before it existed) and config fingerprint. A trainer's checkpoint
        records it; resuming on a store of another identity is refused."""
        a = self.attrs
        return {"store_id": a.get("store_id"), "fingerprint": a.get("fingerprint")}

    def clip(self, clip_id: str, allow_incomplete: bool = False) -> Clip:
        """Open one clip lazily. Incomplete clips are refused unless `allow_incomplete`."""
        local = _local(self.path)
        if local is not None:  # one small file read; zarr's lookup costs ~1-2 ms
            folder = local / CLIPS / clip_id
            if not _plain_id(clip_id):
                raise EgosynthError(f"{self.path}: no clip {clip_id!r}")
            doc, why = _json_doc(folder / "zarr.json", "group")
            attrs = None if doc is None else doc.get("attributes", {})
            if why is None and doc is not None and not isinstance(attrs, dict):
                why = "zarr.json: attributes are not a JSON object"
            if why is not None:
                raise EgosynthError(f"{self.path}: clip {clip_id}: {why} (corrupt)")
            if doc is None:
                raise EgosynthError(f"{self.path}: no clip {clip_id!r}")
            clip = Clip(clip_id, dict(attrs), self.root, folder)
        else:
            try:
                group = self.root[f"{CLIPS}/{clip_id}"]
            except KeyError:
                raise EgosynthError(f"{self.path}: no clip {clip_id!r}") from None
            clip = Clip(clip_id, group.attrs.asdict(), self.root)
        if not clip.complete and not allow_incomplete:
            raise EgosynthError(f"{self.path}: clip {clip_id!r} is not complete")
        return clip

    def __iter__(self) -> Iterator[Clip]:
        return (self.clip(c) for c in self.clip_ids())

    def nbytes_stored(self, clip_id: str) -> int | None:
        """Bytes on disk of a clip group (local stores only; None for URLs)."""
        local = _local(self.path)
        if local is None or not _plain_id(clip_id):
            return None
        return sum(f.stat().st_size for f in (local / CLIPS / clip_id).rglob("*") if f.is_file())

    def listed_clips(self) -> dict[str, str | None]:
        """Every clip id the store names anywhere -> None, or why it is unusable: the clip
        folders (a folder without zarr.json is a writer's unfinished clip, left out), the
        root `index` and the consolidated metadata (snapshots of the last finished run)."""
        out: dict[str, str | None] = {}
        local = _local(self.path)
        if local is not None:
            bad: dict[str, str] = {}
            out.update(dict.fromkeys(_scan_groups(local / CLIPS, bad)))
            out.update({c: f"{why} (corrupt)" for c, why in bad.items()})
            doc, _ = _json_doc(local / "zarr.json")
            cons = ((doc or {}).get("consolidated_metadata") or {}).get("metadata") or {}
            index = ((doc or {}).get("attributes") or {}).get("index") or {}
        else:
            out.update(dict.fromkeys(self.clip_ids(include_incomplete=True)))
            cons, index = {}, self.attrs.get("index") or {}
        named = {
            k.split("/")[1]: "consolidated metadata"
            for k in cons
            if k.count("/") == 1 and k.startswith(f"{CLIPS}/")
        }
        if isinstance(index, dict):
            named.update(dict.fromkeys(index, "root index"))
        for cid, where in named.items():
            if cid in out:
                continue
            ok = _plain_id(cid) and local is not None and (local / CLIPS / cid).is_dir()
            out[cid] = None if ok else f"listed in the {where} but has no clip folder"
        return dict(sorted(out.items()))

    def validate(
        self, on_chunk: Callable[[], None] | None = None, clip_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Check every clip the store names (`listed_clips`), or `clip_ids`: its group and
        array documents, every array's shape and dtype against the clip's attrs, and every
        chunk file that must exist (all but the all-fill chunks of sparse arrays): present,
        a regular file, of the right size, its checksums right.

        Returns one line per problem (empty = valid). `on_chunk` is called after each chunk
        file (for a progress bar); `n_chunks` gives the total.
        """
        listed = self.listed_clips() if clip_ids is None else dict.fromkeys(clip_ids)
        index = self.attrs.get("index") if isinstance(self.attrs.get("index"), dict) else {}
        problems = []
        for cid, why in listed.items():
            if why is not None:
                problems.append(f"{self.path}: clip {cid}: {why}")
                continue
            try:
                clip = self.clip(cid, allow_incomplete=True)
            except EgosynthError as exc:
                problems.append(str(exc))
                continue
            if not clip.complete:
                problems.append(f"clip {cid}: status {clip.attrs.get('status')!r}, not complete")
                continue
            summary = index.get(cid)
            if isinstance(summary, dict) and summary.get("n_frames") != clip.attrs.get("n_frames"):
                problems.append(
                    f"clip {cid}: attr n_frames = {clip.attrs.get('n_frames')!r}, the root "
                    f"index says {summary.get('n_frames')!r}"
                )
            for name in ARRAY_NAMES:
                problems += self._validate_array(clip, name, on_chunk)
        return problems

    def _validate_array(
        self, clip: Clip, name: str, on_chunk: Callable[[], None] | None
    ) -> list[str]:
        """Problems of one array of a complete clip (see `validate`)."""
        what = f"{self.path}/{CLIPS}/{clip.clip_id}/{name}"
        try:
            d = clip._direct_reader(name)
            arr = clip.array(name) if d is None else None
        except EgosynthError as exc:
            return [str(exc)]
        problems = []
        if d is not None:  # the chunk files egosynth wrote, read as the readers read them
            for c in range(-(-d.shape[0] // d.file_frames)):
                lo, hi = c * d.file_frames, min((c + 1) * d.file_frames, d.shape[0])
                path = d.folder / d.key(c)
                if path.exists() and not path.is_file():
                    problems.append(f"{what}/{d.key(c)}: not a file")
                else:
                    try:
                        d.read(lo, hi)
                    except (_CorruptChunk, OSError) as exc:
                        problems.append(f"{what}/{str(exc).splitlines()[0]}")
                if on_chunk:
                    on_chunk()
            return problems
        assert arr is not None
        missing = set()
        if clip.folder is not None and name not in clip.sparse:
            missing = set(_absent_files(arr, clip.folder / name))
            problems += [f"{what}/{key}: missing" for key in sorted(missing)]
        for sel, key in _chunk_selections(arr):
            if f"c/{key}" not in missing:
                try:
                    _read(arr, sel, f"{what}/c/{key}")
                except EgosynthError as exc:
                    problems.append(str(exc))
            if on_chunk:
                on_chunk()
        return problems

    def n_chunks(self, clip_ids: Sequence[str] | None = None) -> int:
        """Chunk files `validate` reads (of the arrays whose layout can be read)."""
        listed = self.listed_clips() if clip_ids is None else dict.fromkeys(clip_ids)
        total = 0
        for cid, why in listed.items():
            try:
                clip = self.clip(cid, allow_incomplete=True)
                if why is not None or not clip.complete:
                    continue
                for name in ARRAY_NAMES:
                    d = clip._direct_reader(name)
                    if d is not None:
                        total += -(-d.shape[0] // d.file_frames)
                    else:
                        total += math.prod(_file_grid(clip.array(name)))
            except EgosynthError:
                continue
        return total


def _plain_id(clip_id: str) -> bool:
    """Whether a clip id names a folder directly under clips/ (never a path outside it)."""
    return clip_id not in ("", ".", "..") and "/" not in clip_id and "\\" not in clip_id


def _file_grid(arr: zarr.Array) -> tuple[int, ...]:
    """Chunk files per axis: shards where the array is sharded, else chunks."""
    size = arr.shards or arr.chunks
    return tuple(-(-s // c) for s, c in zip(arr.shape, size, strict=True))


def _chunk_selections(arr: zarr.Array) -> Iterator[tuple[tuple[slice, ...], str]]:
    """(selection, key) for every chunk file of an array (a shard: all its frames), C order."""
    size = arr.shards or arr.chunks
    for idx in np.ndindex(*_file_grid(arr)):
        sel = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, size, arr.shape, strict=True)
        )
        yield sel, "/".join(map(str, idx))
