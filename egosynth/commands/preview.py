"""`egosynth preview`: Write a video preview of clips from a store."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "preview", "Write a video preview of clips from a store", "issue 5")
