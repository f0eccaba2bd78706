"""`egosynth inspect`: Summarise a clip store (and validate its checksums)."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "inspect", "Summarise a clip store (and validate its checksums)", "issue 5")
