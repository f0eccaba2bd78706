"""`egosynth pipeline`: Run a declarative render-train-eval pipeline."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "pipeline", "Run a declarative render-train-eval pipeline", "issue 9")
