"""`egosynth demo`: Run the embedded default end to end on this machine."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "demo", "Run the embedded default end to end on this machine", "issue 9")
