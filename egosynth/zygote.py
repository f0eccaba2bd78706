"""Pipeline stages in warm processes: one helper imports once, then forks each stage.

A pipeline stage is one `egosynth <command> ...` run. A fresh Python per stage spends ~5 s of
a small CPU before the stage does anything (torch + torchvision alone take ~4.8 s to import
here, and a 2-step baseline then trains in 0.4 s); the science pipeline's 86 stages would spend
~7 CPU-minutes starting up. So `run_pipeline` starts one helper per run (the "zygote", after
Android's process of that name): it imports torch and egosynth's modules once, in the run's
environment and working directory, and forks one child per stage. To the stage the child is
a fresh process: its own log file (or the terminal), default signal handlers, fresh random
state, `egosynth.cli.main` as its entry point with `python -m egosynth.cli`'s exit codes, and
an interpreter's exit (threads joined, atexit handlers run) less the module teardown.

Only where `os.fork` is safe (Linux); elsewhere, or with `warm=False`, a stage is a fresh
`python -m egosynth.cli` process. Nothing runs in the helper but imports, which is what makes
forking safe: no Python thread starts (tests/test_pipeline.py checks), the only native ones are
OpenBLAS's pool, which its own fork handler rebuilds in the child (as in every fork of a numpy
process, DataLoader workers included), and CUDA is never initialised (torch.cuda is lazy; a
stage initialises it in its own process).

Protocol, one JSON object per line: pipeline -> helper `{"id", "argv", "log"}`;
helper -> pipeline `{"id", "pid"}` once forked and `{"id", "rc"}` once exited.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import NoReturn

# What stages import, by command; the helper imports those of the commands a run will start,
# once. Optional extras may be missing (a core-only install has no torch): an ImportError only
# means less is shared. Commands not listed (render, scenes, ...) share only the base: they run
# long, or start their own workers (Ray), and importing torch for them would cost more than
# it saves.
BASE = ("egosynth.cli", "numpy", "zarr", "egosynth.store", "egosynth.data")
_TORCH = ("torch", "torchvision")
PRELOAD = {
    # lightly: what egosynth.train.losses imports when a loss is built (~2 s: timm, wandb)
    "train": (*_TORCH, "egosynth.train.loop", "egosynth.data.torch", "lightly.loss"),
    "eval": (*_TORCH, "egosynth.eval.baseline", "egosynth.eval.twin", "egosynth.eval.evaluate",
             "egosynth.eval.summary", "scipy.stats"),
}  # fmt: skip


def preload_for(commands: set[str]) -> list[str]:
    """The modules worth importing once for stages running these commands."""
    return list(dict.fromkeys([*BASE, *(m for c in sorted(commands) for m in PRELOAD.get(c, ()))]))


def available() -> bool:
    """Whether stages can be forked from a warm helper on this platform."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


class Zygote:
    """The pipeline's side: start the helper, hand it stages, collect pids and exit codes."""

    def __init__(self, preload: list[str]) -> None:
        cmd_r, self._cmd = os.pipe()
        self._reply, reply_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "egosynth.zygote", str(cmd_r), str(reply_w), *preload],
            pass_fds=(cmd_r, reply_w),
            stdin=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(reply_w)
        self._buf = b""
        self._next = 0
        self.pids: dict[int, int] = {}
        self.codes: dict[int, int] = {}
        self._dead = False

    def launch(self, argv: list[str], log: Path | None) -> WarmStage:
        job = self._next
        self._next += 1
        line = json.dumps({"id": job, "argv": argv, "log": str(log) if log else None})
        try:
            os.write(self._cmd, line.encode() + b"\n")
        except OSError:  # the helper is gone: the stage fails like one that could not start
            self.codes[job] = 1
        return WarmStage(self, job)

    def collect(self, timeout: float = 0.0) -> None:
        """Read whatever the helper has reported (waiting up to `timeout` seconds)."""
        while not self._dead:
            ready, _, _ = select.select([self._reply], [], [], timeout)
            if not ready:
                return
            chunk = os.read(self._reply, 65536)
            if not chunk:  # the helper exited: stages it never reported failed with it
                self._dead = True
                for job in range(self._next):
                    self.codes.setdefault(job, 1)
                return
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for msg in map(json.loads, lines):
                if "pid" in msg:
                    self.pids[msg["id"]] = msg["pid"]
                else:
                    self.codes[msg["id"]] = msg["rc"]
            timeout = 0.0

    def close(self) -> None:
        """No more stages: the helper exits once its running stages have."""
        with contextlib.suppress(OSError):
            os.close(self._cmd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        with contextlib.suppress(OSError):
            os.close(self._reply)


class WarmStage:
    """One forked stage, with the part of `subprocess.Popen`'s interface the pipeline uses."""

    def __init__(self, zygote: Zygote, job: int) -> None:
        self._z, self._job = zygote, job

    @property
    def returncode(self) -> int | None:
        return self._z.codes.get(self._job)

    def poll(self) -> int | None:
        self._z.collect()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        while self.poll() is None and self._job not in self._z.pids:
            self._z.collect(timeout=0.1)  # forked but not reported yet
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._z.pids[self._job], signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


# --- the helper's side ------------------------------------------------------------------------


def _preload(modules: list[str]) -> None:
    from egosynth import quiet

    quiet.install(None)  # what main does first: third-party import-time warnings stay quiet
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _send(fd: int, msg: dict) -> None:
    with contextlib.suppress(OSError):  # the pipeline is gone: nobody to tell
        os.write(fd, json.dumps(msg).encode() + b"\n")


def _become_stage(job: dict, cmd_fd: int, reply_fd: int) -> None:
    """In the forked child: look like a fresh `python -m egosynth.cli` process, then run."""
    os.close(cmd_fd)
    os.close(reply_fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if job["log"]:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    import random

    random.seed()  # a fresh process draws fresh entropy; forks would share the helper's state
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    sys.argv = ["egosynth", *job["argv"]]
    _exit(_run(job["argv"]))


def _run(argv: list[str]) -> int:
    """`egosynth.cli.main`, with the exit codes `python -m egosynth.cli` would give."""
    try:
        from egosynth.cli import main

        return main(argv)
    except SystemExit as exc:  # argparse: --help, usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _exit(rc: int) -> NoReturn:
    """Exit as an interpreter does, less the module teardown: non-daemon threads are joined,
    atexit handlers run and stdio is flushed, then `os._exit` (as multiprocessing's children
    do). Tearing down torch's module graph costs ~1.5 s a stage and changes nothing on disk."""
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]  # what interpreter exit calls
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(rc)


def serve(cmd_fd: int, reply_fd: int, modules: list[str]) -> None:
    """Fork a stage per command line until the pipeline closes the pipe, reaping them all."""
    # Ctrl-C reaches the stages directly (one process group); the helper stays to report them
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload(modules)
    children: dict[int, int] = {}
    buf, open_ = b"", True
    while open_ or children:
        if open_ and select.select([cmd_fd], [], [], 0.05)[0]:
            chunk = os.read(cmd_fd, 65536)
            open_ = bool(chunk)
            *lines, buf = (buf + chunk).split(b"\n")
            for job in map(json.loads, lines):
                pid = os.fork()
                if pid == 0:
                    try:  # the child never returns into this loop, whatever happens
                        _become_stage(job, cmd_fd, reply_fd)
                    finally:
                        os._exit(1)
                children[pid] = job["id"]
                _send(reply_fd, {"id": job["id"], "pid": pid})
        elif not open_:
            select.select([], [], [], 0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            _send(reply_fd, {"id": children.pop(pid), "rc": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
