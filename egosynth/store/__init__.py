"""The Zarr clip store: the ONE package that imports zarr (format: docs/store.md).

* `egosynth.store.schema`: array names, dtypes, dims, typed clip metadata (`ClipMeta`) and
  the label table (`LabelTable`); pure Python, imported without zarr;
* `egosynth.store.writer`: `prepare_store`, `ClipWriter`, `finalize_store` (with the write
  lock of `egosynth.store._lock`);
* `egosynth.store.reader`: `ClipStore`, `Clip`;
* `egosynth.store._fast` (private): egosynth's own chunk I/O for local stores, behind one
  switch (EGOSYNTH_STORE_FAST=0 sends everything through plain zarr).

Every public name is importable from here; the writer's and reader's load zarr on first use
only, so `from egosynth.store import ARRAY_NAMES` (or anything of the schema) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from egosynth.store.schema import (
    ARRAY_NAMES,
    CLIP_ARRAYS,
    CLIPS,
    COMPLETE,
    EYED_FRAME_ARRAYS,
    FINISHED,
    FORMAT,
    FRAME_ARRAYS,
    IMAGE_ARRAYS,
    INCOMPLETE,
    INTERRUPTED,
    INTRINSICS,
    INTRINSICS_DIMS,
    MAX_CHUNK_FRAMES,
    META_ARRAYS,
    POSE,
    RENDERING,
    RGB_LAYOUTS,
    SCHEMA_VERSION,
    SPARSE_ARRAYS,
    TARGET_CHUNK_BYTES,
    WRITING,
    ClipMeta,
    LabelTable,
    default_chunk_frames,
)

if TYPE_CHECKING:
    from egosynth.store._lock import writer_lock
    from egosynth.store.reader import Clip, ClipStore
    from egosynth.store.writer import (
        ClipWriter,
        complete_clip_ids,
        compressors,
        finalize_store,
        finalized_on_exit,
        prepare_store,
    )

# name -> the submodule that defines it, imported on first access (PEP 562)
_LAZY = {
    "Clip": "egosynth.store.reader",
    "ClipStore": "egosynth.store.reader",
    "ClipWriter": "egosynth.store.writer",
    "complete_clip_ids": "egosynth.store.writer",
    "compressors": "egosynth.store.writer",
    "finalize_store": "egosynth.store.writer",
    "finalized_on_exit": "egosynth.store.writer",
    "prepare_store": "egosynth.store.writer",
    "writer_lock": "egosynth.store._lock",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'egosynth.store' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ARRAY_NAMES",
    "CLIPS",
    "CLIP_ARRAYS",
    "COMPLETE",
    "EYED_FRAME_ARRAYS",
    "FINISHED",
    "FORMAT",
    "FRAME_ARRAYS",
    "IMAGE_ARRAYS",
    "INCOMPLETE",
    "INTERRUPTED",
    "INTRINSICS",
    "INTRINSICS_DIMS",
    "MAX_CHUNK_FRAMES",
    "META_ARRAYS",
    "POSE",
    "RENDERING",
    "RGB_LAYOUTS",
    "SCHEMA_VERSION",
    "SPARSE_ARRAYS",
    "TARGET_CHUNK_BYTES",
    "WRITING",
    "Clip",
    "ClipMeta",
    "ClipStore",
    "ClipWriter",
    "LabelTable",
    "complete_clip_ids",
    "compressors",
    "default_chunk_frames",
    "finalize_store",
    "finalized_on_exit",
    "prepare_store",
    "writer_lock",
]
