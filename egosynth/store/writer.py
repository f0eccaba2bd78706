"""Writing clip stores: the driver's side (`prepare_store`, `finalize_store`, the write lock)
and the worker's (`ClipWriter`, one writer per clip group).

Concurrency: each clip group has exactly ONE writer (one clip = one worker); the root metadata
is written only by the driver (at the start, and once at the end with the index and the
consolidated metadata). A clip is visible to readers only once its `status` is "complete".
Local chunk files are written by egosynth's fast path (egosynth.store._fast) unless its switch
is off; URLs and odd-shaped batches always go through zarr.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.storage
from numpy.typing import NDArray

from egosynth import __version__
from egosynth.errors import EgosynthError
from egosynth.store import _fast
from egosynth.store._common import (
    clip_attrs,
    group_doc,
    local_path,
    open_root,
    read_json,
    root_attrs,
    write_atomic,
)
from egosynth.store.schema import (
    ARRAY_NAMES,
    CLIPS,
    COMPLETE,
    FORMAT,
    IMAGE_ARRAYS,
    INCOMPLETE,
    INDEX_KEYS,
    INTERRUPTED,
    INTRINSICS,
    INTRINSICS_DIMS,
    INTRINSICS_DTYPE,
    INTRINSICS_SHAPE,
    META_ARRAYS,
    RENDERING,
    RGB_LAYOUTS,
    SCHEMA_VERSION,
    SPARSE_ARRAYS,
    WRITING,
    check_root_attrs,
    default_chunk_frames,
)


def compressors(cname: str = "lz4", clevel: int = 5) -> list[Any]:
    """Blosc (byte-shuffled) then a crc32c checksum over the compressed bytes of each chunk."""
    return [
        zarr.codecs.BloscCodec(cname=cname, clevel=clevel, shuffle="shuffle"),
        zarr.codecs.Crc32cCodec(),
    ]


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
    local = local_path(path)
    if local is not None and local.exists():
        if not local.is_dir() or (any(local.iterdir()) and not (local / "zarr.json").is_file()):
            raise EgosynthError(f"{path}: exists and is not a Zarr store; refusing to touch it")
    old = root_attrs(path)
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
            write_atomic(local / "zarr.json", group_doc(base))
            if not (local / CLIPS / "zarr.json").is_file():
                write_atomic(local / CLIPS / "zarr.json", group_doc({}))
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


def _remove_store(path: str | Path) -> None:
    local = local_path(path)
    if local is not None:
        _fast.SHARDS.forget(local)
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
    root = open_root(path, "r+")
    index: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    for cid, a in sorted(clip_attrs(path, root, bad={}).items()):
        if a.get("status") != COMPLETE:
            continue
        index[cid] = {k: a[k] for k in INDEX_KEYS}
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
    for cid, a in clip_attrs(path, open_root(path, "r+"), bad={}).items():
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
    arrays[INTRINSICS] = group.create_array(
        INTRINSICS,
        shape=INTRINSICS_SHAPE,
        chunks=INTRINSICS_SHAPE,
        dtype=INTRINSICS_DTYPE,
        compressors=comp,
        fill_value=0,
        dimension_names=INTRINSICS_DIMS,
    )
    return arrays


_ARRAY_DOCS: dict[tuple[int, int, int, int, str, int, str], dict[str, bytes]] = {}


def _array_docs(
    n_frames: int, height: int, width: int, tc: int, cname: str, clevel: int, rgb: str
) -> dict[str, bytes]:
    """name -> the zarr.json bytes of every array of a clip group, exactly as zarr writes them.

    zarr makes them once per layout in a memory store; each clip then writes them as plain
    files (creating 12 arrays through zarr took ~35 ms per clip here, the files < 2 ms).
    A fast-path piece: used only while `_fast.enabled()`.
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

    In a local store the array documents and chunk files are written directly (`direct`;
    default: the fast-path switch, `egosynth.store._fast.enabled()`): the same bytes zarr
    writes, without its per-call cost. URLs, or `direct=False`, go through zarr for
    everything.

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
        direct: bool | None = None,
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
        self.direct: dict[str, _fast.Direct | _fast.Frames] = {}
        self._made: set[Path] = set()
        self._group: zarr.Group | None = None
        local = local_path(self.path)
        direct = _fast.enabled() if direct is None else direct
        self.folder = None if not direct or local is None else local / CLIPS / clip_id
        if self.folder is None:
            if local is not None:  # maps of the files about to be deleted would keep them
                _fast.SHARDS.forget(local / CLIPS / clip_id)
            root = open_root(self.path, "r+")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*onsolidated metadata.*")
                self._group = root[CLIPS].create_group(clip_id, overwrite=True, attributes=writing)
            self.arrays = _create_arrays(self._group, *layout)
            return
        # Local: the same files zarr would write (group and array documents), without its
        # per-call cost (~35 ms per clip here for the 13 nodes).
        root_doc = read_json(local / "zarr.json")
        if root_doc is None:
            open_root(self.path, "r+")  # raises the precise one-line error
        check_root_attrs(self.path, (root_doc or {}).get("attributes"))
        if self.folder.exists():
            _fast.SHARDS.forget(self.folder)
            shutil.rmtree(self.folder)  # an interrupted attempt: start from nothing
        self.folder.mkdir()
        write_atomic(self.folder / "zarr.json", group_doc(writing))
        for name, doc in _array_docs(*layout).items():
            (self.folder / name).mkdir()
            write_atomic(self.folder / name / "zarr.json", doc)
            d = _fast.direct_io(self.folder / name, json.loads(doc), name in self.sparse)
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
        self._write(INTRINSICS, 0, np.asarray(intrinsics, INTRINSICS_DTYPE))

    def complete(self, extra_attrs: Mapping[str, Any] | None = None) -> None:
        """Mark the clip complete: the LAST write, after every array is on disk."""
        done = {**self.attrs, **(extra_attrs or {}), "status": COMPLETE}
        if self.folder is not None:
            current = (read_json(self.folder / "zarr.json") or {}).get("attributes") or {}
        else:
            current = zarr.open_group(self.group.store, path=self.group.path, mode="r").attrs
        if current.get("writer") != self.token:
            raise EgosynthError(
                f"{self.path}: clip {self.clip_id} was taken over by another writer; not marking "
                "it complete"
            )
        if self.folder is not None:
            write_atomic(self.folder / "zarr.json", group_doc(done))
        else:
            self.group.attrs.put(done)
