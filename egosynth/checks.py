"""The ONE validation of command-line numbers and output paths, done before any work starts.

Numbers: `count`, `integer` and `real` are argparse `type=` factories. Each checks its domain
(NaN, inf, 0 and negative counts, absurd sizes) and says what is wrong in one line; the CLI's
parser prints that line alone (egosynth.cli).

Outputs: `output_file` / `output_dir` check, WITHOUT creating anything, that an output can be
written where asked: not an existing directory where a file is expected (or the reverse), a
parent chain that is (or can be made of) writable folders, and not one of the command's
inputs. `check_memory` refuses work whose estimated memory exceeds what the machine has.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from egosynth.errors import EgosynthError

# Large enough for any real use, small enough that planning the work cannot exhaust memory.
MAX_COUNT = 10_000_000


def count(minimum: int = 1, maximum: int = MAX_COUNT) -> Callable[[str], int]:
    """argparse type: an integer in [minimum, maximum] (written as a plain integer)."""
    return integer(minimum, maximum)


def integer(minimum: int | None = None, maximum: int | None = MAX_COUNT) -> Callable[[str], int]:
    """argparse type: a plain integer within [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} is more than the maximum {maximum:,}")
        return value

    parse.__name__ = "integer"
    return parse


def real(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    positive: bool = False,
    below: float | None = None,
) -> Callable[[str], float]:
    """argparse type: a finite number in [minimum, maximum] (> 0 with `positive`,
    < `below` when given). NaN and infinities are always refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"{value:g} is not positive")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{value:g} is less than {minimum:g}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value:g} is more than {maximum:g}")
        if below is not None and not value < below:
            raise argparse.ArgumentTypeError(f"{value:g} must be less than {below:g}")
        return value

    parse.__name__ = "number"
    return parse


# --------------------------------------------------------------------------- memory
def available_memory() -> int:
    """Bytes of memory this process may still use (MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def check_memory(nbytes: float, what: str, fraction: float = 0.8) -> None:
    """Refuse work estimated to need more than `fraction` of the memory available."""
    have = available_memory()
    if nbytes > fraction * have:
        raise EgosynthError(
            f"{what} needs about {human_bytes(nbytes)} of memory, more than the "
            f"{human_bytes(have)} available: refused before starting"
        )


# --------------------------------------------------------------------------- paths
def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: Path, folder: Path) -> bool:
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return real == root or root in real.parents


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of `path` must be a folder that a file can be made in."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: mkdir would fail
            raise EgosynthError(f"{flag} = {str(path)!r}: {parent} is a broken symlink")
        parent = parent.parent
    if not parent.is_dir():
        raise EgosynthError(f"{flag} = {str(path)!r}: {parent} is a file, not a folder")
    _try_write(parent, path, flag, f"in {parent}")


def _try_write(folder: Path, path: Path, flag: str, where: str) -> None:
    """Create and drop a temporary file in `folder`: os.access says yes to root even on a
    read-only mount, so try it."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise EgosynthError(
            f"{flag} = {str(path)!r}: cannot write {where} ({exc.strerror or exc})"
        ) from None


def _not_an_input(path: Path, inputs: Iterable[str | Path | None], flag: str) -> None:
    for given in inputs:
        if given is None or "://" in str(given):
            continue
        src = Path(given)
        if src.exists() and (_same(path, src) or (src.is_dir() and _inside(path, src))):
            raise EgosynthError(f"{flag} = {str(path)!r}: would overwrite the input {str(given)!r}")


def output_file(
    path: str | Path, flag: str = "--out", inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Check that a file can be written at `path`; nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise EgosynthError(f"{flag} = {str(path)!r}: is an existing directory, expected a file")
    if path.exists() and not path.is_file():
        raise EgosynthError(f"{flag} = {str(path)!r}: exists and is not a regular file")
    _not_an_input(path, inputs, flag)
    if path.exists():
        if not os.access(path, os.W_OK):
            raise EgosynthError(f"{flag} = {str(path)!r}: the file is not writable")
    _writable_parent(path, flag)
    return path


def output_dir(
    path: str | Path, flag: str = "--out", inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Check that `path` is, or can be made as, a writable folder; nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EgosynthError(f"{flag} = {str(path)!r}: is an existing file, expected a folder")
    _not_an_input(path, inputs, flag)
    if path.is_dir():
        _try_write(path, path, flag, "in it")
    else:
        _writable_parent(path, flag)
    return path


# --------------------------------------------------------------------------- network
def check_address(address: str | None, timeout: float = 3.0) -> None:
    """A `host:port` cluster address must accept a TCP connection within `timeout` seconds
    (Ray's own join waits minutes for a head that is not there). Other forms ("auto",
    "local") are left to Ray."""
    import socket

    if not address:
        return
    text = address.strip()
    hostport = text.split("://", 1)[1] if "://" in text else text
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not host:
        return
    try:
        port = int(port_text)
    except ValueError:
        raise EgosynthError(f"--address = {address!r}: the port is not a number") from None
    if not 0 < port < 65536:
        raise EgosynthError(f"--address = {address!r}: port {port} is out of range")
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise EgosynthError(
            f"--address = {address!r}: no Ray cluster answers there ({why}); start one with "
            "`ray start --head` or leave --address out to start a local one"
        ) from None
