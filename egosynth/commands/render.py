"""`egosynth render`: render a scene set into a Zarr clip store with Ray workers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from egosynth.checks import count, real
from egosynth.config import DEFAULT_RENDER_SET


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="Render a scene set into a Zarr clip store with Ray workers",
        description="Plan the clips of a scene set (scenes x trajectories) and render them on "
        "Ray, one actor per device, into a Zarr clip store (docs/store.md). Re-running skips "
        "complete clips and redoes partial ones. Without --address (or RAY_ADDRESS) a local "
        "Ray cluster is started and stopped by the command.",
    )
    p.add_argument(
        "scene_set",
        nargs="?",
        type=Path,
        default=DEFAULT_RENDER_SET,
        help="scene set YAML (default: the committed NeRF bundles, demo_nerf.yaml)",
    )
    p.add_argument(
        "--out",
        type=str,
        default=None,
        help="output store: a path or fsspec URL (default: the set's `output`)",
    )
    p.add_argument(
        "--clips", type=count(), default=None, help="clips per scene (default: the set's)"
    )
    p.add_argument(
        "--seconds",
        type=real(positive=True, maximum=1e9),
        default=None,
        help="clip length in seconds (default: the set's clip_seconds)",
    )
    p.add_argument(
        "--workers",
        type=count(minimum=0, maximum=4096),
        default=None,
        help="number of Ray actors (default: one per GPU, else one per CPU); 0 renders in "
        "this process without Ray (small sets, debugging)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="auto: GPUs when the cluster has them, else CPUs",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store that was made from a different config",
    )
    p.add_argument(
        "--max-attempts",
        type=count(maximum=1000),
        default=3,
        help="attempts per clip before it is reported as failed",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from egosynth.checks import check_address, output_dir
    from egosynth.config import load_scene_set
    from egosynth.plan import check_plan
    from egosynth.scenes.procedural import parse_spec

    # Everything is checked before anything is touched: the store, the cluster, the plan.
    sset = load_scene_set(args.scene_set)
    if args.seconds is not None:
        sset = sset.model_copy(update={"clip_seconds": float(args.seconds)})
    out = args.out or str(sset.output)
    if "://" not in out:
        output_dir(out, "--out" if args.out else f"{args.scene_set}: output", [args.scene_set])
    check_plan(sset, args.clips)
    for scene in sset.scene_configs:  # named with its file here, not later by a worker
        if scene.procedural is not None:
            parse_spec(scene.procedural, scene.source)
    check_address(args.address or os.environ.get("RAY_ADDRESS") or None)

    from egosynth.orchestration import render_set

    rep = render_set(
        sset,
        out,
        clips_per_scene=args.clips,
        workers=args.workers,
        overwrite=args.overwrite,
        address=args.address,
        device=args.device,
        max_attempts=args.max_attempts,
        progress=not args.no_progress,
    )
    if not rep.done and not rep.failed:
        print(f"{out}: all {rep.planned} clips already complete; nothing to render")
        return 0
    rate = rep.frames / rep.seconds if rep.seconds else 0.0
    print(
        f"{out}: {len(rep.done)} clips rendered, {rep.skipped} already complete, "
        f"{len(rep.failed)} failed ({rep.frames} stereo frames, {rate:.1f} frames/s on "
        f"{rep.workers} {rep.device} workers, {rep.retries} retries, "
        f"{rep.actor_restarts} worker restarts)"
    )
    if rep.failed:
        for cid, err in sorted(rep.failed.items()):
            print(f"failed: {cid}: {err}", file=sys.stderr)
        return 1
    return 0
