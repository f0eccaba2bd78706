"""The ONE reading path for every file egosynth reads: configs, JSON metadata, weights.

Every reader here turns what can go wrong with a file a user hands over into ONE line that
names the file (and the key or field): missing, a directory, a symlink loop, a FIFO or
device (never opened, so nothing hangs), too large, empty, binary, not UTF-8 (UTF-16 with a
BOM included), truncated or invalid YAML/JSON, a YAML key given twice, a YAML alias bomb, a
pickle that names anything but tensors. `ReadError` is an `EgosynthError`: the CLI prints it
without a traceback.

    check_regular(path)       stat first: a regular file or a one-line error, nothing opened
    check_inside(root, path)  a file of a folder (a bundle) that must not leave the folder
    read_bytes / read_text    bytes / UTF-8 text of a regular file, size-capped
    read_yaml(path)           YAML (safe types only, duplicate keys refused, expansion bounded)
    read_json(path)           JSON (duplicate keys refused)
    read_image(path)          an image file as an array (capture frames, masks)
    torch_load(path, allow)   torch's weights-only loader; refusals never advise unsafe loading

Light to import: yaml and json only; torch is imported by `torch_load` when it runs.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from egosynth.errors import EgosynthError

MAX_TEXT_BYTES = 64 * 1024 * 1024  # a config or metadata file larger than this is not one
MAX_YAML_NODES = 1_000_000  # nodes after alias expansion: a bomb stops here, a real file never
_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


class ReadError(EgosynthError):
    """A file could not be read as what it should be; the message names the file."""


def check_regular(path: str | Path, what: str = "file") -> os.stat_result:
    """stat `path` (following symlinks) and require a regular file; nothing is opened."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReadError(f"{path}: {what} is a symlink loop") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ReadError(f"{path}: {what} not found") from None
        raise ReadError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS.items() if test(st.st_mode)), "not a regular file")
        raise ReadError(f"{path}: {what} is {kind}, not a regular file")
    return st


def resolve(path: str | Path, what: str = "file") -> Path:
    """`Path(path).resolve()`, a symlink loop becoming a one-line ReadError."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # pathlib raises RuntimeError on a loop
        raise ReadError(f"{path}: {what} is a symlink loop") from None


def check_inside(root: str | Path, path: str | Path, what: str = "file") -> Path:
    """`path` resolved, refused (without opening it) if a symlink takes it out of `root`."""
    real_root = Path(os.path.realpath(root))
    try:
        real = Path(os.path.realpath(path, strict=False))
    except OSError:  # a symlink loop: check_regular names it
        return Path(path)
    if real != real_root and real_root not in real.parents:
        raise ReadError(
            f"{path}: {what} is a symlink to {real}, outside {real_root}: refused (files of a "
            "bundle must be inside it)"
        )
    return real


def read_bytes(path: str | Path, what: str = "file", max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (see `check_regular`), refused above `max_bytes`."""
    st = check_regular(path, what)
    if max_bytes is not None and st.st_size > max_bytes:
        raise ReadError(
            f"{path}: {what} is {st.st_size / 1e6:.1f} MB, more than the {max_bytes / 1e6:.0f} MB "
            "such a file can be"
        )
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, open does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ReadError(f"{path}: {what} is not a regular file")
            return f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as exc:
        raise ReadError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def decode_text(path: str | Path, data: bytes, what: str = "file") -> str:
    """UTF-8 text (a UTF-8 BOM is dropped); anything else is a one-line error."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise ReadError(f"{path}: {what} is {name} text (it starts with a BOM): save as UTF-8")
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise ReadError(f"{path}: {what} is binary, not text (a NUL byte at offset {at})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReadError(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """UTF-8 text of a regular file of at most `max_bytes`."""
    return decode_text(path, read_bytes(path, what, max_bytes), what)


# --------------------------------------------------------------------------- YAML
class _YamlProblem(yaml.YAMLError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message


def _line(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}" if mark is not None else "?"


class StrictSafeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (plain data only) that refuses duplicate keys and alias bombs."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _bound_size(node)
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then overriding keys is how merges are meant
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if first is not None:
                    raise _YamlProblem(
                        _line(key_node), f"key {key!r} given twice (first at {_line(first)})"
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _bound_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES nodes, or that refers to
    itself (both would make every consumer of the data walk without end)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise _YamlProblem(_line(node), "an alias refers to its own anchor (recursive data)")
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_YAML_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > MAX_YAML_NODES:
                    break
        on_path.discard(key)
        if total > MAX_YAML_NODES:
            raise _YamlProblem(
                _line(node),
                f"aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)",
            )
        sizes[key] = total
        return total

    size(root)


def parse_yaml(text: str, path: str | Path) -> Any:
    """YAML text -> plain data (never Python objects); one-line ReadError on any problem."""
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # a SafeLoader subclass
    except _YamlProblem as exc:
        raise ReadError(f"{path}: {exc.where}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ReadError(f"{path}: {where}: invalid YAML ({problem})") from None
    except RecursionError:
        raise ReadError(f"{path}: YAML nested too deeply") from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read and parse a YAML file through the safe, strict loader."""
    return parse_yaml(read_text(path, what), path)


# --------------------------------------------------------------------------- JSON
def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _YamlProblem("", f"key {k!r} given twice")
        out[k] = v
    return out


def parse_json(text: str, path: str | Path, what: str = "JSON file") -> Any:
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except json.JSONDecodeError as exc:
        raise ReadError(
            f"{path}: {what} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except _YamlProblem as exc:
        raise ReadError(f"{path}: {exc.message}") from None
    except RecursionError:
        raise ReadError(f"{path}: JSON nested too deeply") from None


def read_json(path: str | Path, what: str = "JSON file", max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """Read and parse a JSON file (duplicate keys refused)."""
    return parse_json(read_text(path, what, max_bytes), path, what)


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ReadError(f"{path}: expected a JSON object at the top level, got a {kind}")
    return data


# --------------------------------------------------------------------------- images
MAX_IMAGE_BYTES = 1 << 30


def read_image(path: str | Path, what: str = "image") -> Any:
    """An image file (PNG, JPEG, ...) as a numpy array; undecodable files are one line."""
    import imageio.v3 as iio

    data = read_bytes(path, what, MAX_IMAGE_BYTES)
    if not data:
        raise ReadError(f"{path}: {what} is empty")
    try:
        return iio.imread(data, extension=Path(path).suffix or None)
    except Exception as exc:  # every plugin raises its own types
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        raise ReadError(
            f"{path}: {what} is not a readable image ({first[:120] or type(exc).__name__})"
        ) from None


# --------------------------------------------------------------------------- torch
def torch_load(
    path: str | Path, what: str = "weights file", allow: list[Any] | None = None, **kw: Any
) -> Any:
    """`torch.load(weights_only=True)` with `allow` as the only permitted globals.

    A pickle naming anything else is refused before anything of it runs; the message says
    what was refused and why, and never suggests loading it unsafely.
    """
    import pickle
    import re
    import zipfile

    import torch

    check_regular(path, what)
    if os.stat(path).st_size == 0:
        raise ReadError(f"{path}: {what} is empty")
    kw.setdefault("map_location", "cpu")
    try:
        with torch.serialization.safe_globals(list(allow or [])):
            return torch.load(path, weights_only=True, **kw)
    except pickle.UnpicklingError as exc:
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        named = f"it names the Python object {m.group(1)}" if m else "it holds Python objects"
        raise ReadError(
            f"{path}: refused to load the {what}: {named}; egosynth's weights-only loader "
            "accepts only tensors and plain data (unpickling objects can run code from a file)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        if not first or "weights_only" in first or len(first) > 200:
            first = type(exc).__name__
        raise ReadError(f"{path}: not a readable torch {what} ({first})") from None
