"""The store's fast path: egosynth reads and writes local chunk files itself, without zarr.

Private to egosynth.store, and behind ONE switch: `enabled()` (the environment variable
EGOSYNTH_STORE_FAST, read once at import; "0", "false", "no" or "off" turn it off). Off, every
chunk goes through plain zarr, which stays the reference: the bytes here are the ones zarr reads
and writes (tests/test_store.py checks byte equality both ways, and the store and loader tests
run once more with the switch off; tests/conftest.py).

Why: zarr-python spends ~1-3 ms of bookkeeping per chunk read or written while the work itself
(file I/O, crc32c, lz4) is ~0.1-0.3 ms. Only arrays whose metadata says they use exactly the
layouts below qualify (`direct_io`); anything else (fsspec URLs, other codecs, other shard
layouts) goes through zarr even with the switch on.

Pieces (what each speeds up; docs/store.md, "How egosynth reads and writes local stores"):

* `Direct`: Blosc+crc32c chunk files of depth, masks (and lz4 rgb), read into the caller's
  buffer and written from it;
* `Frames`: raw rgb frames in zarr's sharding layout, each frame read straight into its batch
  row out of a memory map;
* `ShardCache` (`SHARDS`): per shard file version, where its frames lie, which frames' crc32c
  already matched, and maps of the last files read;
* the writer's array documents made once per layout (egosynth.store.writer, `_array_docs`).
"""

from __future__ import annotations

import math
import mmap
import os
import resource
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import crc32c  # takes any buffer, releases the GIL; the same CRC as zarr's codec
import numcodecs
import numcodecs.blosc
import numpy as np
from numpy.typing import NDArray

from egosynth.buffers import empty_aligned
from egosynth.store._common import write_atomic

# The switch: read here, once, and nowhere else (tests set ENABLED; see tests/conftest.py).
SWITCH = "EGOSYNTH_STORE_FAST"
ENABLED = os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether local chunk files are read and written by egosynth itself (else by zarr)."""
    return ENABLED


_CRC_BYTES = 4
_BLOSC_HEADER = 16
_BLOSC_MEMCPYED = 0x02  # Blosc header flag: the bytes after the header are the data, stored
_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_NO_FRAME = 2**64 - 1  # shard index entry of a frame never written (it reads as the fill value)


def _crc(data: Any) -> bytes:
    """The 4 bytes zarr's crc32c codec appends: crc32c of `data` (any buffer), little-endian."""
    return crc32c.crc32c(data).to_bytes(_CRC_BYTES, "little")


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """A file's version as far as a reader can tell: inode, size, mtime and ctime."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def write_chunk(path: Path, parts: Sequence[Any], made: set[Path]) -> None:
    """Write the buffers `parts`, in order, as the chunk file `path` (atomically), creating its
    folder unless this writer already did (`made`)."""
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.add(path.parent)
    write_atomic(path, b"".join(memoryview(p).cast("B") for p in parts))


def _chunk_key(ndim: int, c: int) -> str:
    """Key of time chunk `c` of an array chunked along time only (default encoding, "/")."""
    return f"c/{c}" + "/0" * (ndim - 1)


class CorruptChunk(Exception):
    """A chunk file whose checksum or size does not match (message: key and reason)."""


@dataclass(frozen=True)
class Direct:
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
    ) -> Direct | None:
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
                    raise CorruptChunk(f"{key}: {size} bytes, too short for a chunk")
                head = f.read(_BLOSC_HEADER)
                stored = bool(head[2] & _BLOSC_MEMCPYED)
                stored = stored and size == _BLOSC_HEADER + dst.nbytes + _CRC_BYTES
                if stored:
                    view = memoryview(dst).cast("B")
                    if f.readinto(view) != len(view):
                        raise CorruptChunk(f"{key}: ends early")
                    checksum = crc32c.crc32c(view, crc32c.crc32c(head))
                else:
                    f.seek(0)
                    body = f.read(size - _CRC_BYTES)
                    checksum = crc32c.crc32c(body)
                crc = f.read(_CRC_BYTES)
        except FileNotFoundError:
            if not self.sparse:
                raise CorruptChunk(f"{key}: missing (this array stores every chunk)") from None
            dst[...] = self.fill
            return
        if checksum != int.from_bytes(crc, "little"):
            raise CorruptChunk(f"{key}: checksum mismatch")
        nbytes = int.from_bytes(head[4:8], "little")  # Blosc header: uncompressed size
        if nbytes != dst.nbytes:
            raise CorruptChunk(f"{key}: holds {nbytes} bytes, expected {dst.nbytes}")
        if stored:
            return
        try:
            numcodecs.blosc.decompress(body, dst)
        except (RuntimeError, ValueError) as exc:
            raise CorruptChunk(f"{key}: {exc}") from None

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
            write_chunk(path, [payload, _crc(payload)], made)


@dataclass
class ShardState:
    """One version of one shard file, as a `Frames` reader found it."""

    stamp: tuple[int, int, int, int]  # inode, size, mtime, ctime of the file
    offsets: list[int] | None  # per frame (-1: not stored); None: back to back from 0
    checked: int = 0  # bit i set: frame i's checksum matched
    data: NDArray[np.uint8] | None = None  # the whole file mapped read-only, while mapped


class ShardCache:
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
        self.limits = states, maps if maps is not None else map_limit()
        self.clear()

    def clear(self) -> None:
        """Forget everything (also run in a forked child: the parent's lock may be held)."""
        self._states: OrderedDict[str, ShardState] = OrderedDict()
        self._mapped: OrderedDict[str, ShardState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, stamp: tuple[int, int, int, int]) -> ShardState | None:
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

    def put(self, path: str, state: ShardState) -> None:
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


def map_limit() -> int:
    """Shard maps a process keeps: Python's mmap holds a file descriptor per map, so a quarter
    of the open-file limit, at most 1024 (~1 GiB of the page cache mapped)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 4))


SHARDS = ShardCache()
_SCOPE = threading.local()  # .found: {shard path: (state, map) or None (absent)} in a scope


def _after_fork_in_child() -> None:
    SHARDS.clear()
    _SCOPE.found = None  # a fork from inside a scope: the child starts outside any


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def steady_files() -> Iterator[None]:
    """Within: each shard file this thread reads is looked up (stat, `SHARDS`) once, not
    before every read; a file replaced meanwhile is seen in the next scope.

    For the reads that make one batch (a clip's windows, milliseconds): a window at stride 1
    touches ~2 shard files and the lookup cost ~5 us each, against ~45 us to copy the window.
    """
    if getattr(_SCOPE, "found", None) is not None:  # nested: the outer scope holds
        yield
        return
    _SCOPE.found = {}
    try:
        yield
    finally:
        _SCOPE.found = None


@dataclass(frozen=True)
class Frames:
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
    ) -> Frames | None:
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
        if out is None:  # page-aligned: the frame copies avoid a slow memcpy case (buffers.py)
            out = empty_aligned((len(frames), *self.shape[1:]), self.dtype)
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
        unless already checked in the same version of the file (see `ShardCache`)."""
        key = self.key(s)
        path = f"{self.folder}/{key}"
        found = getattr(_SCOPE, "found", None)
        mapped = False if found is None else found.get(path, False)
        if mapped is False:  # no scope, or not looked up in this one yet
            mapped = self._lookup(path, key)
            if found is not None:
                found[path] = mapped
        if mapped is None:
            out[...] = self.fill
            return
        state, data = mapped
        first = frames.start - s * self.shard
        local = range(first, first + len(frames) * frames.step, frames.step)
        self._copy_frames(state, data, key, local, out)

    def _lookup(self, path: str, key: str) -> tuple[ShardState, NDArray[np.uint8]] | None:
        """The current version of a shard file and its map; None: absent (frames of fill)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not self.sparse:
                raise CorruptChunk(f"{key}: missing (this array stores every frame)") from None
            return None
        state = SHARDS.get(path, _stamp(st))
        data = None if state is None else state.data
        if data is None:
            state, data = self._map(path, key, state)
        return state, data

    def _map(
        self, path: str, key: str, known: ShardState | None
    ) -> tuple[ShardState, NDArray[np.uint8]]:
        """Map a shard file; a version not `known` has its index checked first."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size < self.index_bytes:
                raise CorruptChunk(
                    f"{key}: {st.st_size} bytes, too short for a shard of {self.shard}"
                )
            data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        state = known if known is not None and known.stamp == _stamp(st) else None
        if state is None:
            state = ShardState(_stamp(st), self._offsets(data, key))
        state.data = data
        SHARDS.put(path, state)
        return state, data

    def _offsets(self, data: NDArray[np.uint8], key: str) -> list[int] | None:
        """Byte offset of each frame in the shard (-1: not stored), from its index after
        checking the index's checksum and every entry; None when the frames lie back to back
        from offset 0 (as egosynth writes them)."""
        n = self.index_bytes
        raw = data[len(data) - n :]
        if crc32c.crc32c(raw[:-_CRC_BYTES]) != int.from_bytes(raw[-_CRC_BYTES:], "little"):
            raise CorruptChunk(f"{key}: index checksum mismatch")
        step = self.frame_bytes + _CRC_BYTES
        offsets = []
        entries = raw[:-_CRC_BYTES].view("<u8").reshape(-1, 2).tolist()
        for i, (offset, nbytes) in enumerate(entries):
            if offset == _NO_FRAME:
                offsets.append(-1)
            elif nbytes != step or offset + nbytes > len(data) - n:
                raise CorruptChunk(f"{key}: frame {i} of the shard has {nbytes} bytes at {offset}")
            else:
                offsets.append(offset)
        return None if offsets == list(range(0, self.shard * step, step)) else offsets

    def _copy_frames(
        self, state: ShardState, src: NDArray[np.uint8], key: str, local: range, out: NDArray
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
                raise CorruptChunk(f"{key}: frame {f} of the shard is missing")
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

    def _at(self, state: ShardState, local: range) -> list[int]:
        """Byte offset in the shard of each frame of `local` (-1: not stored)."""
        step = self.frame_bytes + _CRC_BYTES
        return [f * step if state.offsets is None else state.offsets[f] for f in local]

    def _check(
        self, state: ShardState, src: NDArray[np.uint8], key: str, local: range, at: list[int]
    ) -> None:
        """Check the crc32c of frames `local` (at byte offsets `at`) not checked yet."""
        fb = self.frame_bytes
        for f, a in zip(local, at, strict=True):
            if a < 0 or state.checked >> f & 1:
                continue
            if crc32c.crc32c(src[a : a + fb]) != int.from_bytes(src[a + fb : a + fb + 4], "little"):
                raise CorruptChunk(f"{key}: checksum mismatch in frame {f} of the shard")
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
            write_chunk(path, [*parts, index, _crc(index)], made)


def _default_keys(md: Mapping[str, Any]) -> bool:
    """Whether an array's chunk keys are zarr's default encoding with "/"."""
    cke = md["chunk_key_encoding"]
    sep = (cke.get("configuration") or {}).get("separator", "/")
    return cke["name"] == "default" and sep == "/"


def direct_io(folder: Path, md: Mapping[str, Any], sparse: bool = True) -> Direct | Frames | None:
    """The direct chunk reader/writer of an array's zarr.json document, or None (use zarr).
    `sparse`: whether chunks of fill values may be absent (else a missing one is an error)."""
    return Direct.from_metadata(folder, md, sparse) or Frames.from_metadata(folder, md, sparse)
