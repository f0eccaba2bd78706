"""`egosynth scenes`: Generate, capture, fit, import, check and preview scenes."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "scenes", "Generate, capture, fit, import, check and preview scenes", "issues 3 and 4")
