"""The `egosynth` command.

Each subcommand lives in `egosynth/commands/<name>.py` and exposes `register(subparsers)`.
Command modules import nothing heavy at module level (torch, nerfstudio, ray, zarr are
imported inside the function that runs), so `egosynth --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from egosynth import __version__
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egosynth",
        description="Synthetic egocentric stereo video from NeRF scenes, and learning from it.",
    )
    parser.add_argument("--version", action="version", version=f"egosynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        importlib.import_module(f"egosynth.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EgosynthError as exc:
        print(f"egosynth {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"egosynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
