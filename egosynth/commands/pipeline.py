"""`egosynth pipeline run <file>`: run a declarative render -> train -> eval pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="Run a declarative render-train-eval pipeline (finished stages are cached)",
        description="Run the stages of a pipeline YAML (see pipelines/) in dependency order. "
        "A stage whose inputs are unchanged and whose outputs exist is skipped on rerun.",
    )
    ps = p.add_subparsers(dest="action", metavar="<action>", required=True)
    r = ps.add_parser("run", help="run a pipeline")
    r.add_argument("file", type=Path)
    add_run_options(r)
    r.set_defaults(func=run)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--set, --force, --jobs and --cold: shared by `pipeline run` and `demo`."""
    import os

    from egosynth.checks import count

    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pipeline variable (repeatable), e.g. --set steps=20",
    )
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument(
        "--jobs",
        type=count(maximum=256),
        default=os.cpu_count() or 1,
        help="stages to run at once (default: CPU count); with more than 1, each "
        "stage's output goes to <workdir>/logs/<stage>.log",
    )
    p.add_argument(
        "--cold",
        action="store_true",
        help="start a fresh Python for every stage instead of forking it from one "
        "pre-imported helper (slower by ~5 s a stage; for debugging the helper)",
    )


def parse_overrides(items: list[str]) -> dict[str, str]:
    from egosynth.errors import EgosynthError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EgosynthError(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from egosynth.pipeline import run_pipeline

    results = run_pipeline(
        args.file, parse_overrides(args.set), force=args.force, jobs=args.jobs, warm=not args.cold
    )
    for r in results:
        print(f"  {r.name:<16} {r.status:<8} {r.seconds:7.1f} s  {', '.join(map(str, r.outputs))}")
    return 0
