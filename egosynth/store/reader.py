"""Reading clip stores: `ClipStore` (a local path or an fsspec URL) and its `Clip`s.

Local chunk files are read by egosynth's fast path (egosynth.store._fast) unless its switch
is off; URLs, other codecs and other layouts always go through zarr. Either way checksums are
verified and a corrupt or missing chunk is a one-line `EgosynthError` naming the clip, array
and chunk key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
from numpy.typing import NDArray

from egosynth.errors import EgosynthError
from egosynth.store import _fast
from egosynth.store._common import (
    clip_attrs,
    json_doc,
    local_path,
    open_root,
    plain_id,
    scan_groups,
)
from egosynth.store.schema import (
    ARRAY_NAMES,
    CLIPS,
    COMPLETE,
    IMAGE_ARRAYS,
    INTRINSICS,
    ClipMeta,
    LabelTable,
    array_dtype,
    array_shape,
    size_attr,
)


@dataclass(frozen=True)
class Clip:
    """One clip of a store. Arrays are lazy zarr arrays; `read` loads a time range.

    `attrs` is the clip group's attributes as stored; `meta` the same, typed and checked.
    `folder` is the clip's folder in a local store (None for URLs): with the fast path on
    (`direct`), `read` then decodes the chunk files itself, checksums verified (raw frames
    once per version of their file, see `_fast.ShardCache`), and nothing goes through zarr
    until `group` or `array` is asked for.
    """

    clip_id: str
    attrs: dict[str, Any]
    root: zarr.Group
    folder: Path | None = None
    _direct: dict[str, _fast.Direct | _fast.Frames | None] = field(
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
        return size_attr(self.attrs, key, f"clip {self.clip_id}")

    @cached_property
    def meta(self) -> ClipMeta:
        """The clip's attributes, typed (a malformed one is a one-line error)."""
        return ClipMeta.from_attrs(self.attrs, self.clip_id)

    @cached_property
    def labels(self) -> LabelTable:
        """The clip's label table (empty when it records none)."""
        return LabelTable.from_json(self.attrs.get("labels"), f"clip {self.clip_id}")

    @property
    def direct(self) -> bool:
        """Whether this clip's chunks are read by egosynth's own reader where their layout
        allows (a local store, fast path on): reads then cost little per call."""
        return self.folder is not None and _fast.enabled()

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
        if name == INTRINSICS:
            return array_shape(name, 0, 0, 0), np.dtype(array_dtype(name))
        n = self.n_frames
        hw = (
            (self._size_attr("height"), self._size_attr("width"))
            if name in IMAGE_ARRAYS
            else (0, 0)
        )
        return array_shape(name, n, *hw), np.dtype(array_dtype(name))

    def _check_layout(self, name: str, shape: Sequence[int], dtype: Any) -> None:
        """A one-line error unless array `name` has the shape and dtype the attrs imply (an
        array shorter than n_frames would read fill values past its end)."""
        want, want_dtype = self.expected_layout(name)
        shape = tuple(shape)
        if shape[:1] != want[:1] and name != INTRINSICS:
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
        md, why = json_doc(self.folder / name / "zarr.json", "array")
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
        return isinstance(self._direct_reader(name), _fast.Frames)

    def steady_files(self) -> AbstractContextManager[None]:
        """A scope for many reads at once (one batch's windows): within it, this thread looks
        each raw-frame chunk file up once instead of before every read (a file rewritten
        meanwhile is seen in the next scope). Costs nothing where reads go through zarr."""
        return _fast.steady_files()

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
        except (_fast.CorruptChunk, OSError) as exc:
            msg = str(exc).split("\n")[0]
            raise EgosynthError(f"{what}: corrupt or unreadable chunk ({msg})") from None

    def _direct_reader(self, name: str) -> _fast.Direct | _fast.Frames | None:
        """The direct chunk reader of `name`, or None where zarr must read (cached; always
        None with the fast path off). A missing, corrupt or misshaped array is a one-line
        error here."""
        if name not in self._direct:
            md = self._doc(name)
            d = None
            if md is not None and self.folder is not None and _fast.enabled():
                d = _fast.direct_io(self.folder / name, md, name in self.sparse)
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
                sel = slice(None) if name == INTRINSICS else slice(start, stop)
                lo, hi = (0, None) if name == INTRINSICS else (start, stop)
                self._check_present(name, lo, hi)
                out[name] = _read(self.array(name), sel, what)
                continue
            lo, hi = (0, d.shape[0]) if name == INTRINSICS else (start, stop)
            try:
                out[name] = d.read(lo, hi)
            except (_fast.CorruptChunk, OSError) as exc:
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


def _read(arr: zarr.Array, sel: Any, what: str, locate: bool = True) -> NDArray:
    """`arr[sel]` through zarr; a failure is a one-line error naming the chunk file that
    failed (found by reading the selection's chunk files one by one, when `locate`)."""
    try:
        return arr[sel]
    except (ValueError, RuntimeError, OSError) as exc:
        msg = str(exc).split("\n")[0]
        key = _failing_key(arr, sel) if locate else None
        where = "" if key is None else f"{key}: "
        raise EgosynthError(f"{what}: corrupt or unreadable chunk ({where}{msg})") from None


def _failing_key(arr: zarr.Array, sel: Any) -> str | None:
    """The key of the first chunk file holding rows of the time selection `sel` (a slice, or
    all rows) that zarr cannot read, or None."""
    rows = range(*sel.indices(arr.shape[0])) if isinstance(sel, slice) and arr.shape else None
    for chunk_sel, key in _chunk_selections(arr):
        if rows is not None and chunk_sel:
            lo, hi = chunk_sel[0].start, chunk_sel[0].stop
            skip = max(0, -(-(lo - rows.start) // rows.step))  # steps to the first row >= lo
            if rows.start + skip * rows.step >= min(hi, rows.stop):
                continue  # no selected row in this chunk file
        try:
            arr[chunk_sel]
        except (ValueError, RuntimeError, OSError):
            return f"c/{key}"
    return None


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
        self.root = open_root(path, "r", consolidated)

    @property
    def attrs(self) -> dict[str, Any]:
        return self.root.attrs.asdict()

    def clip_ids(self, include_incomplete: bool = False) -> list[str]:
        """Sorted ids of complete clips (or of every clip group, complete or not)."""
        clips = clip_attrs(self.path, self.root)
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
        local = local_path(self.path)
        if local is not None:  # one small file read; zarr's lookup costs ~1-2 ms
            folder = local / CLIPS / clip_id
            if not plain_id(clip_id):
                raise EgosynthError(f"{self.path}: no clip {clip_id!r}")
            doc, why = json_doc(folder / "zarr.json", "group")
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
        local = local_path(self.path)
        if local is None or not plain_id(clip_id):
            return None
        return sum(f.stat().st_size for f in (local / CLIPS / clip_id).rglob("*") if f.is_file())

    def listed_clips(self) -> dict[str, str | None]:
        """Every clip id the store names anywhere -> None, or why it is unusable: the clip
        folders (a folder without zarr.json is a writer's unfinished clip, left out), the
        root `index` and the consolidated metadata (snapshots of the last finished run)."""
        out: dict[str, str | None] = {}
        local = local_path(self.path)
        if local is not None:
            bad: dict[str, str] = {}
            out.update(dict.fromkeys(scan_groups(local / CLIPS, bad)))
            out.update({c: f"{why} (corrupt)" for c, why in bad.items()})
            doc, _ = json_doc(local / "zarr.json")
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
            ok = plain_id(cid) and local is not None and (local / CLIPS / cid).is_dir()
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
                    except (_fast.CorruptChunk, OSError) as exc:
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
                    _read(arr, sel, f"{what}/c/{key}", locate=False)
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
