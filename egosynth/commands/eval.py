"""`egosynth eval`: Evaluate human alignment (ClickMe, synthetic twin)."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "eval", "Evaluate human alignment (ClickMe, synthetic twin)", "issue 8")
