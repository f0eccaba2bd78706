"""`egosynth train`: Train slow-feature / predictive-coding encoders on clips."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "train", "Train slow-feature / predictive-coding encoders on clips", "issue 7")
