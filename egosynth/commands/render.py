"""`egosynth render`: Render a scene set into a Zarr clip store with Ray workers."""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register(sub: argparse._SubParsersAction) -> None:
    add_stub(sub, "render", "Render a scene set into a Zarr clip store with Ray workers", "issue 5")
