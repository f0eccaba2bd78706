"""The store's write lock: one render driver per local store at a time (docs/store.md,
"Writing rules")."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from egosynth.errors import EgosynthError
from egosynth.store._common import local_path


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
    local = local_path(path)
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
