"""`egosynth scenes fit | import | check`: NeRF scene bundles (issue 4; stubs for now).

Registered into the `scenes` subcommand group by egosynth.commands.scenes via
`register_nerf(subparsers)`. Keep this module light: nerfstudio is imported only inside
the functions that run.
"""

from __future__ import annotations

import argparse

from egosynth.commands import add_stub


def register_nerf(sub: argparse._SubParsersAction) -> None:
    """Add the NeRF-bundle subcommands to the `scenes` group."""
    add_stub(sub, "fit", "Fit a NeRF scene bundle on a capture", "issue 4")
    add_stub(sub, "import", "Import a nerfstudio output folder as a scene bundle", "issue 4")
    add_stub(sub, "check", "Check a NeRF scene bundle against its capture", "issue 4")
