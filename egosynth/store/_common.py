"""What the store's writer and reader share: local paths, atomic files, zarr.json documents,
opening the root and listing clip groups.

Metadata documents of LOCAL stores are read as files here, in both settings of the fast-path
switch (egosynth.store._fast): that is how a half-written clip is skipped silently and a
corrupt document is reported in one line, where zarr would warn or fail obscurely. Chunk
data is what the switch governs.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zarr

from egosynth.errors import EgosynthError
from egosynth.store.schema import CLIPS, check_root_attrs


def local_path(path: str | Path) -> Path | None:
    """The local filesystem path of a store, or None for an fsspec URL."""
    s = str(path)
    if "://" in s and not s.startswith("file://"):
        return None
    return Path(s.removeprefix("file://"))


def plain_id(clip_id: str) -> bool:
    """Whether a clip id names a folder directly under clips/ (never a path outside it)."""
    return clip_id not in ("", ".", "..") and "/" not in clip_id and "\\" not in clip_id


def open_root(path: str | Path, mode: str = "r", consolidated: bool | None = None) -> zarr.Group:
    """Open the root group; readers use consolidated metadata when the driver wrote it."""
    local = local_path(path)
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
    check_root_attrs(path, root.attrs.asdict())
    return root


def root_attrs(path: str | Path) -> dict[str, Any] | None:
    """Root attrs of an existing Zarr store at `path`, or None when there is none."""
    local = local_path(path)
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


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file then rename, like zarr's LocalStore: a reader never sees half a file."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def group_doc(attrs: Mapping[str, Any]) -> bytes:
    """A group's zarr.json with `attrs`, exactly the bytes zarr writes (made without I/O)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    doc = GroupMetadata(attributes=dict(attrs), zarr_format=3)
    return doc.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


def read_json(path: Path) -> dict[str, Any] | None:
    """A zarr.json document, or None when there is none (or it is not a JSON object)."""
    doc, _ = json_doc(path)
    return doc


def json_doc(path: Path, node: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
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


def scan_groups(folder: Path, bad: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
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
        doc, why = json_doc(Path(entry.path) / "zarr.json", "group")  # None: being created
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


def clip_attrs(
    path: str | Path, root: zarr.Group, bad: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """clip id -> attributes of every clip group (complete or not) of an open store; a
    corrupt clip group is an error, or goes into `bad` when given (see `scan_groups`)."""
    local = local_path(path)
    if local is not None and root.metadata.consolidated_metadata is None:
        return scan_groups(local / CLIPS, bad)
    if CLIPS not in root:
        return {}
    clips = root[CLIPS]
    with warnings.catch_warnings():
        # A remote store being written: unfinished objects are skipped, not worth a warning.
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        return {cid: group.attrs.asdict() for cid, group in clips.groups()}
