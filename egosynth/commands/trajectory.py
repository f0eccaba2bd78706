"""`egosynth trajectory`: write a scene set's clip trajectories as plain numpy arrays."""

from __future__ import annotations

import argparse
from pathlib import Path

from egosynth.checks import count
from egosynth.config import DEFAULT_SCENE_SET


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trajectory",
        help="Generate the egocentric trajectories of a scene set (npz, optional map PNG)",
        description="Generate the stereo eye trajectories of every clip of a scene set and "
        "write them as plain numpy arrays: eye_to_world (clips, T, 2, 4, 4) OpenCV "
        "camera-to-world in metres, head_to_world (clips, T, 4, 4), time (clips, T), "
        "fixation_point (clips, T, 3), fixation_object (clips, T).",
    )
    p.add_argument("scene_set", nargs="?", type=Path, default=DEFAULT_SCENE_SET)
    p.add_argument("--out", type=Path, required=True, help="output .npz file")
    p.add_argument(
        "--clips", type=count(), default=None, help="clips per scene (default: the set's)"
    )
    p.add_argument("--plot", action="store_true", help="also draw a top-down map PNG per scene")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from egosynth.checks import output_file
    from egosynth.config import load_scene_set
    from egosynth.errors import EgosynthError
    from egosynth.plan import check_plan, clip_trajectory, plan_clips

    if args.out.is_dir():
        output_file(args.out)  # refused: a directory where the .npz file should go
    out = args.out if args.out.suffix == ".npz" else args.out.with_suffix(".npz")
    output_file(out, inputs=[args.scene_set])
    sset = load_scene_set(args.scene_set)
    check_plan(sset, args.clips, clips_in_memory=0)  # every trajectory is held, then stacked
    plans = plan_clips(sset, args.clips)
    trajs = [clip_trajectory(sset, p) for p in plans]
    arrays = {k: np.stack([t.arrays()[k] for t in trajs]) for k in trajs[0].arrays()}
    arrays["clip_id"] = np.array([p.clip_id for p in plans])
    arrays["scene"] = np.array([p.scene for p in plans])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **arrays)
    except OSError as exc:
        raise EgosynthError(f"{out}: cannot write ({exc.strerror})") from None
    print(f"wrote {len(plans)} trajectories x {len(trajs[0])} frames to {out}")
    if args.plot:
        from egosynth.motion.plot import plot_scene_trajectories

        for si, scene in enumerate(sset.scene_configs):
            idx = [i for i, p in enumerate(plans) if p.scene_index == si]
            png = out.with_name(f"{out.stem}_{scene.name}.png")
            plot_scene_trajectories(scene, [trajs[i] for i in idx], png, sset.motion.clearance_m)
            print(f"wrote {png}")
    return 0
