"""`egosynth scenes onboard`: a user's imported nerfstudio run -> an annotated scene.

Registered into the `scenes` group by egosynth.commands.scenes. Light at import time: the
NeRF (nerfstudio, torch) is opened only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from egosynth.checks import real


def register_onboard(sub: argparse._SubParsersAction) -> None:
    o = sub.add_parser(
        "onboard",
        help="Infer up axis, floor, metric scale, walkable region and objects of a bundle",
        description="Onboard an imported nerfstudio run (docs/bundles.md, 'Bring your own "
        "scene'): gravity from the capture cameras refined by the NeRF's floor plane, metric "
        "scale from what you know, the walkable floor and obstacles from an occupancy slice, "
        "and objects lifted from instance masks of a few capture views. Writes the bundle's "
        "annotations, world_from_scene, masks.json/npz, onboard.json, a scene config and "
        "pictures. Nothing is written when an input is wrong.",
    )
    o.add_argument("bundle", type=Path, help="bundle folder (from `egosynth scenes import`)")
    o.add_argument(
        "--masks",
        type=Path,
        required=True,
        help="folder of instance-id PNGs named after capture images, or COCO JSON",
    )
    o.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="label table JSON: [{instance_id, name, category, parts}]",
    )
    o.add_argument("--parts", type=Path, default=None, help="folder of part-id PNGs (optional)")
    scale = o.add_mutually_exclusive_group(required=True)
    scale.add_argument(
        "--camera-height",
        type=real(positive=True),
        default=None,
        metavar="M",
        help="the capture was held about M metres above the floor",
    )
    scale.add_argument(
        "--scale",
        type=real(positive=True),
        default=None,
        metavar="S",
        help="metres per unit of the run's frame",
    )
    scale.add_argument(
        "--scale-from-distance",
        nargs=3,
        default=None,
        metavar=("P1", "P2", "METRES"),
        help="two points METRES apart: 'x,y,z' in the run's frame or "
        "'IMAGE:u,v' (a pixel of a capture image)",
    )
    o.add_argument("--name", default=None, help="scene name (default: the bundle folder's)")
    o.add_argument(
        "--scene-out",
        type=Path,
        default=None,
        help="scene config to write (default <bundle>.yaml beside the bundle)",
    )
    o.add_argument(
        "--pictures",
        type=Path,
        default=None,
        help="folder for onboard_map.png and onboard_views.png (default: the bundle)",
    )
    o.add_argument(
        "--mode",
        choices=["full", "guided", "baked"],
        default=None,
        help="NeRF render mode for depth (default: baked when the bundle is baked)",
    )
    o.add_argument("--device", default=None)
    o.set_defaults(func=run_onboard)


def _point(text: str, flag: str) -> tuple[str, tuple[float, ...]] | None:
    """('xyz', (x, y, z)) or ('IMAGE', (u, v)); None when unparsable."""
    head, _, tail = text.rpartition(":")
    try:
        nums = tuple(float(v) for v in (tail if head else text).split(","))
    except ValueError:
        return None
    if head and len(nums) == 2:
        return head, nums
    if not head and len(nums) == 3:
        return "xyz", nums
    return None


def run_onboard(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from egosynth.camera import unproject
    from egosynth.checks import output_file
    from egosynth.errors import EgosynthError
    from egosynth.nerf.bundle import read_bundle
    from egosynth.nerf.cameras import read_cameras
    from egosynth.onboard.masks import read_user_labels
    from egosynth.onboard.picture import mask_views_picture, top_down
    from egosynth.onboard.pipeline import ScaleSpec, onboard, write_onboarded

    bundle = read_bundle(args.bundle)
    cams = read_cameras(bundle.root)
    if cams is None:
        raise EgosynthError(
            f"{bundle.root}: no capture cameras (cameras.json): re-import the run with "
            "`egosynth scenes import <run> --out <bundle> --data <its data folder>`"
        )
    labels = read_user_labels(args.masks, args.labels, cams, args.parts)  # checked first
    name = args.name or bundle.root.name
    scene_out = output_file(args.scene_out or bundle.root.parent / f"{name}.yaml", "--scene-out")
    pictures = args.pictures or bundle.root
    map_png = output_file(pictures / "onboard_map.png", "--pictures")
    views_png = output_file(pictures / "onboard_views.png", "--pictures")
    points = None
    if args.scale_from_distance:
        p1, p2, metres = args.scale_from_distance
        points = [_point(p1, "P1"), _point(p2, "P2")]
        for text, p in zip((p1, p2), points, strict=True):
            if p is None or (p[0] != "xyz" and cams.index(Path(p[0]).stem) is None):
                raise EgosynthError(
                    f"--scale-from-distance: point {text!r}: expected 'x,y,z' or 'IMAGE:u,v' "
                    "naming a capture image"
                )
        try:
            metres = float(metres)
        except ValueError:
            raise EgosynthError(
                f"--scale-from-distance: METRES = {metres!r}: not a number"
            ) from None

    from egosynth.render.nerf import NerfRenderer

    renderer = NerfRenderer(
        bundle, world_from_scene=np.eye(4), objects=[], device=args.device, mode=args.mode
    )
    rgb_cache: dict[bytes, np.ndarray] = {}

    def depth_fn(c2s, K, w, h):
        fr = renderer.render(c2s, K, w, h)
        if len(c2s) == 1:  # a labelled view: keep its colours for the picture
            rgb_cache[np.asarray(c2s).tobytes()] = fr.rgb[0]
        return fr.depth

    spec = ScaleSpec(camera_height_m=args.camera_height, scale=args.scale)
    if points is not None:
        xyz = []
        for kind, nums in points:
            if kind == "xyz":
                xyz.append(np.array(nums))
                continue
            v = cams.index(Path(kind).stem)
            w, h = (int(x) for x in cams.sizes[v])
            z = depth_fn(cams.cam_to_scene[v : v + 1], cams.K[v : v + 1], w, h)[0]
            j, i = int(nums[0]), int(nums[1])
            if not (0 <= i < h and 0 <= j < w) or z[i, j] <= 0:
                raise EgosynthError(f"--scale-from-distance: {kind}:{nums}: no surface there")
            xyz.append(unproject(np.array(nums), z[i, j], cams.K[v], cams.cam_to_scene[v]))
        spec = ScaleSpec(distance=(xyz[0], xyz[1], metres))

    bars: dict[str, tqdm] = {}

    def progress(what: str, done: int, total: int) -> None:
        bar = bars.get(what) or bars.setdefault(what, tqdm(total=total, desc=what, unit="view"))
        bar.update(done - bar.n)

    try:
        result = onboard(depth_fn, cams, labels, spec, name, progress)
    finally:
        for b in bars.values():
            b.close()
    # Pictures first (they only read the result), then the bundle's files and the config.
    cam_xy = (
        cams.cam_to_scene[:, :3, 3] @ result.world_from_scene.matrix()[:3, :3].T
        + result.world_from_scene.matrix()[:3, 3]
    )[:, :2]
    top_down(result, cam_xy, map_png)
    views = result.views
    rgbs = [rgb_cache[cams.cam_to_scene[lv.view : lv.view + 1].tobytes()] for lv in labels.views]
    index = {o.name: k for k, o in enumerate(result.objects, start=1)}
    user_to_object = {
        lab.instance_id: index[lab.name] for lab in labels.labels if lab.name in index
    }
    mask_views_picture(result, views, rgbs, user_to_object, views_png)
    write_onboarded(bundle.root, result, scene_out)
    r = result.report
    print(f"onboarded {bundle.root}")
    print(f"  up (scene frame)   {r['up_in_scene']}  floor plane from {r['floor_inliers']} points")
    print(
        f"  scale              {r['scale_m_per_unit']:.5g} m/unit ({r['scale_from']}; "
        f"cameras {r['mean_camera_height_m']:.2f} m above the floor)"
    )
    print(f"  walkable floor     {r['walkable_m2']:.1f} m2, {r['obstacles']} obstacles")
    unseen = f", not seen in any mask: {r['objects_unseen']}" if r["objects_unseen"] else ""
    print(
        f"  objects            {len(r['objects_lifted'])} lifted from "
        f"{len(r['labelled_views'])} views{unseen}"
    )
    print(f"  wrote              annotations.json, masks.json/npz, onboard.json, {scene_out}")
    print(f"  pictures           {map_png}, {views_png}")
    return 0
