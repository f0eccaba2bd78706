"""The `egosynth` command.

Each subcommand lives in `egosynth/commands/<name>.py` and exposes `register(subparsers)`.
Command modules import nothing heavy at module level (torch, nerfstudio, ray, zarr are
imported inside the function that runs), so `egosynth --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

from egosynth import __version__, quiet
from egosynth.errors import EgosynthError

# Order is the order shown in --help.
COMMANDS = (
    "render",
    "trajectory",
    "scenes",
    "inspect",
    "preview",
    "train",
    "eval",
    "pipeline",
    "demo",
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _add_verbose(parser: argparse.ArgumentParser, top: bool) -> None:
    """--verbose on every (sub)command; SUPPRESS below the top keeps the top's value."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help=f"show every warning, third-party ones too (or {quiet.ENV}=1)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_verbose(child, False)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="egosynth",
        description="Synthetic egocentric stereo video from NeRF scenes, and learning from it.",
    )
    parser.add_argument("--version", action="version", version=f"egosynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        importlib.import_module(f"egosynth.commands.{name}").register(sub)
    _add_verbose(parser, True)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill` stopping the job), raised like Ctrl-C so that every
    clean-up Ctrl-C gets (a render marks its store "interrupted") runs for it too."""


# Set when SIGTERM arrived: code that catches the KeyboardInterrupt a signal handler raises and
# raises a plain one instead (Ray's wait/get do: a signal during ray.wait surfaces as
# KeyboardInterrupt) must not turn "terminated" into "interrupted".
_SIGTERM_SEEN = threading.Event()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs in the main thread, SIGTERM raises Terminated there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: object) -> NoReturn:
        _SIGTERM_SEEN.set()
        raise Terminated

    before = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet.install(True if args.verbose else None)
    _SIGTERM_SEEN.clear()
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except EgosynthError as exc:
        print(f"egosynth {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated) or _SIGTERM_SEEN.is_set():
            print(f"egosynth {args.command}: terminated", file=sys.stderr)
            return 143  # 128 + SIGTERM, as a shell reports it
        print(f"egosynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
