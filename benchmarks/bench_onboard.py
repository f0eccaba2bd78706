"""Onboarding measured against ground truth (issue 15; docs/bundles.md "Bring your own scene").

    python benchmarks/bench_onboard.py fit room_0     # capture, move to a COLMAP-like frame, fit
    python benchmarks/bench_onboard.py measure room_0 [--from fit|reframe]

`fit` does what a user does: a capture (the procedural room's mesh renderer stands in for a
phone), poses moved by an arbitrary similarity (COLMAP's frame), nerfstudio's own trainer on it
(cpu-small preset), then `scenes import`. `measure` onboards the imported bundle from <= 10
views' instance masks and prints the acceptance figures. `--from reframe` skips the fit: the
committed bundle's scene frame is composed with the similarity (exactly equivalent geometry).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "outputs" / "onboard"
SIMILARITY_SEED = {"room_0": 1500, "room_1": 1501}


def capture_path(room: str) -> Path:
    return OUT / f"{room}_capture"


def truth_capture_path(room: str, views: int) -> Path:
    """The procedural capture (true world, true masks); 200 views keep the first name."""
    return OUT / (f"{room}_truth_capture" if views == 200 else f"{room}_truth_capture_v{views}")


def run_fit(room: str, iterations: int | None, views: int) -> Path:
    """Capture, move, fit and import, as a user with a phone capture and ns-train would."""
    from egosynth.config import load_scene
    from egosynth.nerf.fit import fit_capture
    from egosynth.nerf.importer import import_run
    from egosynth.onboard.synthetic import colmap_capture, random_similarity
    from egosynth.scenes.capture import CaptureSettings, write_capture

    scene = load_scene(REPO / "scene_configs" / "scenes" / f"{room}.yaml")
    truth = truth_capture_path(room, views)
    if not (truth / "transforms.json").is_file():
        write_capture(scene, truth, CaptureSettings(n_views=views, width=128, height=96))
    S = random_similarity(SIMILARITY_SEED[room])
    user = capture_path(room)
    if not (user / "transforms.json").is_file():
        colmap_capture(truth, user, S)
    depth_scale = 1e-3 / S.scale
    run = fit_capture(user, OUT / "runs", "cpu-small", iterations, depth_unit_scale=depth_scale)
    return import_run(run, OUT / f"{room}_fit_bundle", provenance={"preset": "cpu-small"})


TRUTH_VIEWS = {"room_0": 200, "room_1": 800}  # the captures the committed bundles were fitted on
FIT_VIEWS = {"room_0": 200, "room_1": 400}  # the captures `fit` makes here
CAMERA_HEIGHT_M = 1.2  # the capture's eye heights are stratified over 0.8-1.6 m: mean 1.2 m


def truth_capture(room: str, views: int) -> Path:
    from egosynth.config import load_scene
    from egosynth.scenes.capture import CaptureSettings, write_capture

    path = truth_capture_path(room, views)
    if not (path / "transforms.json").is_file():
        scene = load_scene(REPO / "scene_configs" / "scenes" / f"{room}.yaml")
        write_capture(scene, path, CaptureSettings(n_views=views, width=128, height=96))
    return path


def user_masks(room: str, capture: Path, n_views: int) -> Path:
    """The <= n_views instance/part PNGs a user would draw (here: the capture's true masks)."""
    import shutil

    from egosynth.nerf.cameras import cameras_from_transforms
    from egosynth.onboard.synthetic import choose_views
    from egosynth.readers import read_image

    cams = cameras_from_transforms(capture / "transforms.json")
    names = [Path(n).name for n in cams.names]
    inst = [read_image(capture / "instance" / n) for n in names]
    out = OUT / f"{room}_user_masks"
    if out.exists():
        shutil.rmtree(out)
    for sub in ("instance", "part"):
        (out / sub).mkdir(parents=True)
    for v in choose_views(inst, n_views):
        for sub in ("instance", "part"):
            shutil.copy(capture / sub / names[v], out / sub / names[v])
    shutil.copy(capture / "labels.json", out / "labels.json")
    return out


def onboarded_bundle(room: str, source: str) -> tuple[Path, object]:
    from egosynth.nerf.cameras import cameras_from_transforms
    from egosynth.onboard.synthetic import random_similarity, reframe_bundle

    S = random_similarity(SIMILARITY_SEED[room])
    if source == "fit":
        bundle = OUT / f"{room}_fit_bundle"
        if not (bundle / "bundle.json").is_file():
            raise SystemExit(f"{bundle}: run `bench_onboard.py fit {room}` first")
        return bundle, S
    cams = cameras_from_transforms(truth_capture(room, TRUTH_VIEWS[room]) / "transforms.json")
    out = OUT / f"{room}_reframe_bundle"
    return reframe_bundle(REPO / "scene_bundles" / room, out, S, cams), S


def measure(room: str, source: str, n_views: int, frames: int) -> dict:
    import json
    import subprocess
    import time

    import numpy as np

    from egosynth.camera import pixel_centers, unproject
    from egosynth.config import load_scene
    from egosynth.motion import generate_trajectory
    from egosynth.motion.floorplan import FloorPlan
    from egosynth.nerf.check import egocentric_views, instance_ious
    from egosynth.onboard.evaluate import frame_errors, true_to_recovered, walkable_polygon
    from egosynth.onboard.frame import transform_poses
    from egosynth.render.mesh import MeshRenderer
    from egosynth.render.nerf import NerfRenderer, label_surface_points

    truth = load_scene(REPO / "scene_configs" / "scenes" / f"{room}.yaml")
    bundle, S = onboarded_bundle(room, source)
    views = (FIT_VIEWS if source == "fit" else TRUTH_VIEWS)[room]
    masks = user_masks(room, truth_capture(room, views), n_views)
    scene_yaml = bundle.parent / f"{bundle.name}.yaml"
    cmd = [sys.executable, "-m", "egosynth.cli", "scenes", "onboard", str(bundle),
           "--masks", str(masks / "instance"), "--parts", str(masks / "part"),
           "--labels", str(masks / "labels.json"), "--camera-height", str(CAMERA_HEIGHT_M),
           "--scene-out", str(scene_yaml)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    onboard_s = time.perf_counter() - t0
    rec = load_scene(scene_yaml)
    from egosynth.nerf.bundle import read_bundle

    W = read_bundle(bundle).meta.world_from_scene
    errs = frame_errors(W, S, truth, rec)
    # Held-out egocentric views (check's walker, seed 7777) in the true world, moved into the
    # recovered world for the NeRF; the mesh renders the truth at the true poses.
    c2w, K = egocentric_views(truth, frames, 128, 96)
    M = true_to_recovered(W, S)
    nerf = NerfRenderer.from_scene(rec, mode="full")
    got = nerf.render(transform_poses(M, c2w), K, 128, 96)
    want = MeshRenderer.from_scene(truth).render(c2w, K, 128, 96)
    # The same rendered surface labelled by the TRUE boxes (what true annotations give).
    uv = pixel_centers(128, 96)
    Minv = np.linalg.inv(M)
    box_inst, box_part = [], []
    for i in range(len(c2w)):
        surface = got.accumulation[i] > 0.5
        p = unproject(uv, got.depth[i], K, transform_poses(M, c2w[i : i + 1])[0])
        p = p @ Minv[:3, :3].T + Minv[:3, 3]
        a, b = label_surface_points(p, surface, list(truth.objects))
        box_inst.append(a)
        box_part.append(b)
    lifted = float(np.mean(instance_ious(got.instance, want.instance)))
    boxes = float(np.mean(instance_ious(np.array(box_inst), want.instance)))
    part = float(np.mean(instance_ious(got.part, want.part)))
    part_boxes = float(np.mean(instance_ious(np.array(box_part), want.part)))
    # A walker on the onboarded scene: inside the recovered walkable region, and (mapped to the
    # true world) how much of its path lies in the true one.
    traj = generate_trajectory(rec, truth_rig(), truth_motion(), 200, 10.0, 1)
    head = traj.head_to_world[:, :3, 3]
    plan = FloorPlan(rec.floor, [o.polygon for o in rec.obstacles], 0.0)
    inside_rec = float(np.mean(plan.walkable(head[:, :2])))
    head_true = head @ Minv[:3, :3].T + Minv[:3, 3]
    import shapely

    true_walk = walkable_polygon(truth.floor, [o.polygon for o in truth.obstacles])
    inside_true = float(np.mean(shapely.contains_xy(true_walk, head_true[:, 0], head_true[:, 1])))
    out = {
        "room": room, "source": source, "labelled_views": n_views, "onboard_s": onboard_s,
        **errs.as_dict(),
        "instance_miou": lifted, "instance_miou_true_boxes": boxes, "ratio": lifted / boxes,
        "part_iou": part, "part_iou_true_boxes": part_boxes,
        "held_out_views": len(c2w), "walker_in_recovered_region": inside_rec,
        "walker_in_true_region": inside_true,
    }  # fmt: skip
    (OUT / f"{room}_{source}_metrics.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def truth_rig():
    from egosynth.config import RigConfig

    return RigConfig()


def truth_motion():
    from egosynth.config import MotionConfig

    return MotionConfig()


def print_metrics(m: dict) -> None:
    print(f"\n{m['room']} ({m['source']}, {m['labelled_views']} labelled views, "
          f"onboard {m['onboard_s']:.0f} s)")  # fmt: skip
    rows = [
        ("up axis error", f"{m['up_error_deg']:.3f} deg", "<= 2"),
        ("floor height error", f"{m['floor_height_error_cm']:.2f} cm", "<= 3"),
        ("scale error", f"{m['scale_error_pct']:+.2f} %", "within 2"),
        ("walkable IoU", f"{m['walkable_iou']:.3f}", ">= 0.85"),
        ("instance mIoU (lifted)", f"{m['instance_miou']:.3f}", ">= 0.8"),
        ("instance mIoU (true boxes)", f"{m['instance_miou_true_boxes']:.3f}", ""),
        ("ratio lifted / true", f"{m['ratio']:.3f}", ">= 0.9"),
        ("part IoU (lifted)", f"{m['part_iou']:.3f}", "reported"),
        ("part IoU (true boxes)", f"{m['part_iou_true_boxes']:.3f}", ""),
        ("walker in recovered region", f"{100 * m['walker_in_recovered_region']:.1f} %", "100"),
        ("walker in true region", f"{100 * m['walker_in_true_region']:.1f} %", ""),
    ]
    for name, value, target in rows:
        print(f"  {name:28s} {value:>12s}   {target}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("room")
    f.add_argument("--iterations", type=int, default=None)
    m = sub.add_parser("measure")
    m.add_argument("rooms", nargs="+")
    m.add_argument("--from", dest="source", choices=["fit", "reframe"], default="reframe")
    m.add_argument("--views", type=int, default=10, help="labelled capture views (<= 10)")
    m.add_argument("--frames", type=int, default=6, help="held-out walker frames (x2 eyes)")
    args = p.parse_args()
    from egosynth.quiet import install as quiet_third_party

    quiet_third_party()  # nerfstudio's and torch's deprecation warnings: nothing a user can act on
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.cmd == "fit":
        print(run_fit(args.room, args.iterations, FIT_VIEWS[args.room]))
    else:
        results = [measure(r, args.source, args.views, args.frames) for r in args.rooms]
        for res in results:
            print_metrics(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
