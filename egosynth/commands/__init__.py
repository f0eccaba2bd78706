"""Subcommands of the `egosynth` CLI: one module each, light to import."""

from __future__ import annotations

import argparse

from egosynth.errors import NotBuiltError


def not_built(name: str, issue: str):
    """Handler for a subcommand that is planned but not implemented yet."""

    def run(args: argparse.Namespace) -> int:
        raise NotBuiltError(f"'{name}' is not built yet (tracked in {issue})")

    return run


def add_stub(sub: argparse._SubParsersAction, name: str, help_text: str, issue: str) -> None:
    """Register a planned subcommand that fails with one clear line."""
    p = sub.add_parser(name, help=f"{help_text} [not built yet]", description=help_text)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=not_built(name, issue))
