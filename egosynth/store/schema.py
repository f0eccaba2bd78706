"""The clip store's schema: the ONE place that names its arrays, dtypes, dims and attributes.

Pure Python (no zarr, no numpy): the loader (egosynth.data), the trainer and the evaluation
import it to know what a store holds without importing the store's I/O. The format itself,
for readers that do not use egosynth, is docs/store.md.

Layout (schema version 1)::

    <name>.zarr/                  root attrs: format, schema_version, egosynth_version,
                                  fingerprint, set_config, scene_configs, store_status,
                                  and (written once by the driver at the end) index, labels
      clips/<clip_id>/            attrs: `ClipMeta` (scene, seed, fps, n_frames, width,
                                  height, rig, labels, ..., status: "complete" written last)
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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from egosynth.errors import EgosynthError
from egosynth.labels import Label

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
RGB_LAYOUTS = ("raw", "lz4")  # rgb stored as raw frames (default) or as Blosc-lz4 chunks
# What the root `index` (written by the driver at the end) holds of each complete clip.
INDEX_KEYS = ("scene", "n_frames", "fps", "width", "height", "seed")

# Per-frame image arrays: name -> (dtype, trailing shape after (T, 2, H, W), dimension names).
IMAGE_ARRAYS: dict[str, tuple[str, tuple[int, ...], tuple[str, ...]]] = {
    "rgb": ("uint8", (3,), ("time", "eye", "y", "x", "channel")),
    "depth": ("float16", (), ("time", "eye", "y", "x")),
    "instance": ("uint16", (), ("time", "eye", "y", "x")),
    "part": ("uint8", (), ("time", "eye", "y", "x")),
}
# Small per-clip arrays: name -> (dtype, shape after T, dimension names).
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
# The one array without a time axis: both eyes' pinhole K.
INTRINSICS = "intrinsics"
INTRINSICS_SHAPE = (2, 3, 3)
INTRINSICS_DTYPE = "float32"
INTRINSICS_DIMS = ("eye", "k_row", "k_col")
ARRAY_NAMES = (*IMAGE_ARRAYS, *META_ARRAYS, INTRINSICS)

# The same names grouped as a reader of windows needs them: per-frame arrays (time first),
# those with an eye axis right after time, and the per-clip ones.
FRAME_ARRAYS = (*IMAGE_ARRAYS, *META_ARRAYS)
EYED_FRAME_ARRAYS = tuple(
    n for n, (_, _, dims) in {**IMAGE_ARRAYS, **META_ARRAYS}.items() if dims[1:2] == ("eye",)
)
CLIP_ARRAYS = (INTRINSICS,)


def array_dtype(name: str) -> str:
    """The dtype (numpy name) of array `name`."""
    if name == INTRINSICS:
        return INTRINSICS_DTYPE
    if name in IMAGE_ARRAYS:
        return IMAGE_ARRAYS[name][0]
    if name in META_ARRAYS:
        return META_ARRAYS[name][0]
    raise EgosynthError(f"store: unknown array {name!r} (have {ARRAY_NAMES})")


def array_shape(name: str, n_frames: int, height: int, width: int) -> tuple[int, ...]:
    """The shape of array `name` in a clip of `n_frames` stereo frames of height x width."""
    if name == INTRINSICS:
        return INTRINSICS_SHAPE
    if name in IMAGE_ARRAYS:
        return (n_frames, 2, height, width, *IMAGE_ARRAYS[name][1])
    if name in META_ARRAYS:
        return (n_frames, *META_ARRAYS[name][1])
    raise EgosynthError(f"store: unknown array {name!r} (have {ARRAY_NAMES})")


def default_chunk_frames(height: int, width: int) -> int:
    """Frames per chunk so an rgb chunk is ~1 MiB, between 1 and MAX_CHUNK_FRAMES."""
    frame_bytes = 2 * height * width * 3
    return int(min(MAX_CHUNK_FRAMES, max(1, TARGET_CHUNK_BYTES // frame_bytes)))


def check_root_attrs(path: object, attrs: Mapping[str, Any] | None) -> None:
    """Refuse a root that is not an egosynth store of this schema version."""
    attrs = attrs or {}
    if attrs.get("format") != FORMAT:
        raise EgosynthError(f"{path}: not an egosynth clip store (root attr format != {FORMAT!r})")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise EgosynthError(
            f"{path}: schema_version = {attrs.get('schema_version')!r}, this egosynth reads "
            f"{SCHEMA_VERSION}"
        )


def size_attr(attrs: Mapping[str, Any], key: str, where: str) -> int:
    """A size attribute (n_frames, height, width): an integer >= 1, else a one-line error."""
    v = attrs.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EgosynthError(f"{where}: attr {key} = {v!r}: not an integer >= 1")
    return v


# --------------------------------------------------------------------------- label table
@dataclass(frozen=True)
class LabelTable:
    """A scene's label table as the store records it (clip attr `labels`, and per scene in
    the root attr `labels`): instance id -> object name and category, part id -> part name,
    and (when the scene declares one) the object's diagnostic part.

    On disk a JSON list ``[{instance_id, name, category, parts: {"<part id>": name},
    diagnostic_part?}]``; `from_json(t.to_json()) == t`, and `to_json` gives back what
    egosynth wrote (`diagnostic_part` only where set: older stores never have it).
    """

    labels: tuple[Label, ...] = ()

    @classmethod
    def from_labels(cls, labels: Sequence[Label]) -> LabelTable:
        return cls(tuple(labels))

    @classmethod
    def from_json(cls, data: Any, where: str = "labels") -> LabelTable:
        """Parse a stored label table; a malformed one is a one-line error naming `where`."""
        if data is None:
            return cls()
        if not isinstance(data, list):
            raise EgosynthError(f"{where}: labels = {data!r}: not a list")
        out = []
        for i, lab in enumerate(data):
            try:
                parts = lab.get("parts") or {}
                diag = lab.get("diagnostic_part")
                out.append(
                    Label(
                        instance_id=int(lab["instance_id"]),
                        name=str(lab.get("name", "")),
                        category=str(lab["category"]),
                        parts={int(k): str(v) for k, v in parts.items()},
                        diagnostic_part=None if diag is None else str(diag),
                    )
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                raise EgosynthError(
                    f"{where}: labels[{i}] = {lab!r}: needs instance_id and category"
                ) from None
        return cls(tuple(out))

    def to_json(self) -> list[dict[str, Any]]:
        """The JSON the store writes (part ids become string keys)."""
        out = []
        for lab in self.labels:
            d: dict[str, Any] = {
                "instance_id": lab.instance_id,
                "name": lab.name,
                "category": lab.category,
                "parts": {str(k): v for k, v in lab.parts.items()},
            }
            if lab.diagnostic_part is not None:
                d["diagnostic_part"] = lab.diagnostic_part
            out.append(d)
        return out

    def __iter__(self):
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def categories(self) -> list[str]:
        """The distinct object categories, sorted."""
        return sorted({lab.category for lab in self.labels})

    def category_of(self) -> dict[int, str]:
        """Instance id -> category."""
        return {lab.instance_id: lab.category for lab in self.labels}


# --------------------------------------------------------------------------- clip metadata
@dataclass(frozen=True)
class ClipMeta:
    """A clip group's attributes, typed (docs/store.md, "Attributes").

    `from_attrs(a).to_attrs() == a` for any attrs egosynth writes (`clip_id` always among
    them): keys it does not know are kept in `extra`, and optional keys absent from `a` stay
    absent. Sizes are checked
    (integers >= 1); `labels` is parsed as a `LabelTable`.
    """

    clip_id: str
    scene: str
    n_frames: int
    height: int
    width: int
    fps: float
    status: str | None = None
    seed: str | int | None = None  # egosynth writes a string: uint64 overflows JSON doubles
    scene_index: int | None = None
    clip_index: int | None = None
    chunk_frames: int | None = None
    rig: dict[str, Any] | None = None
    fingerprint: str | None = None
    labels: LabelTable | None = None
    sparse_arrays: tuple[str, ...] | None = None  # None: written before the attr existed
    schema_version: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def sparse(self) -> tuple[str, ...]:
        """Arrays whose chunks of fill values may be absent (every array for a clip written
        before `sparse_arrays` existed)."""
        return ARRAY_NAMES if self.sparse_arrays is None else self.sparse_arrays

    @property
    def label_table(self) -> LabelTable:
        """The clip's label table (empty when it has none)."""
        return self.labels if self.labels is not None else LabelTable()

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], clip_id: str | None = None) -> ClipMeta:
        """Parse a clip group's attrs; a missing or malformed key is a one-line error."""
        cid = attrs.get("clip_id", clip_id)
        if not isinstance(cid, str):
            raise EgosynthError(f"clip {clip_id}: attr clip_id = {cid!r}: not a string")
        where = f"clip {cid}"
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in attrs.items() if k not in known}
        if "scene" not in attrs:
            raise EgosynthError(f"{where}: attr scene missing")
        try:
            fps = float(attrs["fps"])
        except (KeyError, TypeError, ValueError):
            raise EgosynthError(f"{where}: attr fps = {attrs.get('fps')!r}: not a number") from None
        sparse = attrs.get("sparse_arrays")
        if sparse is not None and (
            not isinstance(sparse, list) or not all(isinstance(n, str) for n in sparse)
        ):
            raise EgosynthError(f"{where}: attr sparse_arrays = {sparse!r}: not a list")

        def opt(key: str, *kinds: type) -> Any:
            v = attrs.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, kinds):
                what = " or ".join(_KIND_NAMES[k] for k in kinds)
                raise EgosynthError(f"{where}: attr {key} = {v!r}: not {what}")
            return v

        return cls(
            clip_id=cid,
            scene=str(attrs["scene"]),
            n_frames=size_attr(attrs, "n_frames", where),
            height=size_attr(attrs, "height", where),
            width=size_attr(attrs, "width", where),
            fps=fps,
            status=opt("status", str),
            seed=opt("seed", str, int),
            scene_index=opt("scene_index", int),
            clip_index=opt("clip_index", int),
            chunk_frames=opt("chunk_frames", int),
            rig=opt("rig", dict),
            fingerprint=opt("fingerprint", str),
            labels=None if "labels" not in attrs else LabelTable.from_json(attrs["labels"], where),
            sparse_arrays=None if sparse is None else tuple(sparse),
            schema_version=opt("schema_version", int),
            extra=extra,
        )

    def to_attrs(self) -> dict[str, Any]:
        """The attrs dict (as `from_attrs` read it, or as a writer would write it)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name == "labels":
                v = v.to_json()
            elif f.name == "sparse_arrays":
                v = list(v)
            out[f.name] = v
        out.update(self.extra)
        return out


_KIND_NAMES = {str: "a string", int: "an integer", dict: "an object"}
