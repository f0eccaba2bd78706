"""`egosynth scenes onboard`: the steps, from a bundle's NeRF and capture cameras to annotations.

The NeRF is reached only through a depth callback (scene-frame poses in, z-depth in scene units
out), so the same steps run on mesh ground truth in tests. Files are written only at the very
end, after every input was checked and every step succeeded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import pixel_centers, unproject
from egosynth.config import Part, SceneConfig, SceneObject, Similarity
from egosynth.errors import EgosynthError
from egosynth.nerf.cameras import CaptureCameras
from egosynth.nerf.lifted import LiftedMasks
from egosynth.onboard.floor import BODY_HEIGHT_M, FloorMap, floor_map
from egosynth.onboard.frame import (
    DepthFn,
    FloorPlane,
    fit_floor,
    scale_from_camera_height,
    scale_from_distance,
    transform_poses,
    up_from_cameras,
    wall_yaw,
    world_from_scene,
)
from egosynth.onboard.lift import MaskView, lift
from egosynth.onboard.masks import UserLabels

# Rays of the geometry pass (depth at every capture camera, downsampled to fit): ~40 s of
# nerfacto on 2 CPU cores, a few seconds baked; enough for a 5 cm floor grid.
GEOMETRY_RAYS = 150_000
REPORT = "onboard.json"


@dataclass(frozen=True)
class ScaleSpec:
    """What the user knows about metric scale (exactly one is set)."""

    camera_height_m: float | None = None
    scale: float | None = None
    distance: tuple[NDArray[np.float64], NDArray[np.float64], float] | None = None  # scene pts

    def how(self) -> str:
        if self.scale is not None:
            return f"--scale {self.scale:g}"
        if self.distance is not None:
            return f"--scale-from-distance ({self.distance[2]:g} m)"
        return f"--camera-height {self.camera_height_m:g}"


@dataclass
class Onboarded:
    """Everything onboarding inferred, in plain data (world metres unless said otherwise)."""

    world_from_scene: Similarity
    floor_plane: FloorPlane  # scene frame
    floor: FloorMap
    objects: list[SceneObject]
    masks: LiftedMasks
    report: dict[str, Any] = field(default_factory=dict)
    points_world: NDArray[np.float64] | None = None  # geometry pass, for pictures
    views: list[MaskView] = field(default_factory=list)  # the labelled views, world metres


def _downsample(cams: CaptureCameras, budget: int) -> tuple[int, int, NDArray[np.float64], int]:
    """(width, height, K (N,3,3), factor) for depth at all cameras within `budget` rays."""
    w, h = (int(x) for x in cams.sizes[0])
    f = max(1, math.ceil(math.sqrt(len(cams) * w * h / budget)))
    K = cams.K.copy()
    K[:, :2] /= f
    return max(1, w // f), max(1, h // f), K, f


def geometry_points(
    depth_fn: DepthFn, cams: CaptureCameras, budget: int = GEOMETRY_RAYS, batch: int = 16,
    progress: Callable[[int], None] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:  # fmt: skip
    """Surface points (scene frame) seen by every capture camera at reduced resolution, and
    the centre of the camera that saw each (the rays' origins, for free-space carving)."""
    if len({tuple(s) for s in cams.sizes.tolist()}) > 1:
        raise EgosynthError("onboard: capture images of different sizes are not supported")
    w, h, K, _ = _downsample(cams, budget)
    uv = pixel_centers(w, h)
    out, origins = [], []
    for s in range(0, len(cams), batch):
        sl = slice(s, s + batch)
        depth = np.asarray(depth_fn(cams.cam_to_scene[sl], K[sl], w, h), np.float64)
        for z, k, T in zip(depth, K[sl], cams.cam_to_scene[sl], strict=True):
            out.append(unproject(uv[z > 0], z[z > 0], k, T))
            origins.append(np.broadcast_to(T[:3, 3], out[-1].shape))
        if progress:
            progress(len(depth))
    return np.concatenate(out), np.concatenate(origins)


def resolve_scale(spec: ScaleSpec, plane: FloorPlane) -> float:
    if spec.scale is not None:
        if not spec.scale > 0:
            raise EgosynthError(f"--scale = {spec.scale}: must be positive")
        return float(spec.scale)
    if spec.distance is not None:
        return scale_from_distance(*spec.distance)
    if spec.camera_height_m is None:
        raise EgosynthError(
            "metric scale unknown: give --camera-height M, --scale S or --scale-from-distance"
        )
    return scale_from_camera_height(plane, spec.camera_height_m)


def _apply(W: Similarity, points: NDArray) -> NDArray[np.float64]:
    T = W.matrix()
    return np.asarray(points, np.float64) @ T[:3, :3].T + T[:3, 3]


def estimate_world(
    points: NDArray[np.float64], cams: CaptureCameras, spec: ScaleSpec
) -> tuple[Similarity, FloorPlane, float]:
    """world_from_scene: gravity +Z, floor z = 0, metres, walls along x/y, floor corner at 0."""
    up = up_from_cameras(cams.cam_to_scene)
    plane = fit_floor(points, cams.cam_to_scene, up)
    scale = resolve_scale(spec, plane)
    W0 = world_from_scene(plane, scale)
    pw = _apply(W0, points)
    body = pw[(pw[:, 2] > 0.3) & (pw[:, 2] < BODY_HEIGHT_M)]
    yaw = wall_yaw(body[:, :2], 0.05)
    W1 = world_from_scene(plane, scale, yaw)
    pw = _apply(W1, points)
    on_floor = pw[np.abs(pw[:, 2]) < 0.03, :2]
    corner = np.round(np.percentile(on_floor, 0.5, axis=0), 2)
    W = world_from_scene(plane, scale, yaw, (float(corner[0]), float(corner[1])))
    return W, plane, yaw


def _box(points: NDArray[np.float64]) -> tuple[tuple, tuple, float]:
    """(centre, extents, yaw_deg) of the upright minimum-area box around world points."""
    from shapely.geometry import MultiPoint

    rect = MultiPoint([tuple(p) for p in points[:, :2]]).minimum_rotated_rectangle
    xy = np.asarray(rect.exterior.coords)[:4] if rect.geom_type == "Polygon" else None
    z0, z1 = float(points[:, 2].min()), float(points[:, 2].max())
    if xy is None:  # degenerate (a line or a point)
        c = points[:, :2].mean(axis=0)
        ext = np.maximum(np.ptp(points[:, :2], axis=0), 0.01)
        return (*c, (z0 + z1) / 2), (*ext, max(z1 - z0, 0.01)), 0.0
    e0, e1 = xy[1] - xy[0], xy[2] - xy[1]
    yaw = math.degrees(math.atan2(e0[1], e0[0]))
    c = xy.mean(axis=0)
    ext = (max(float(np.linalg.norm(e0)), 0.01), max(float(np.linalg.norm(e1)), 0.01))
    return (float(c[0]), float(c[1]), (z0 + z1) / 2), (*ext, max(z1 - z0, 0.01)), yaw


def _r(v: tuple) -> tuple:
    return tuple(round(float(x), 4) for x in v)


def boxes_from_masks(masks: LiftedMasks, labels: UserLabels) -> list[SceneObject]:
    """An oriented box per lifted object (and per part): for the motion model and for editing."""
    by_name = {lab.name: lab for lab in labels.labels}
    objects = []
    for g in masks.objects:
        lab = by_name[g.name]
        ijk = np.argwhere(g.occupancy)
        pts = g.origin + (ijk + 0.5) * masks.voxel
        center, ext, yaw = _box(pts)
        parts = []
        local = g.part[g.occupancy]
        for j, pname in enumerate(lab.parts[p] for p in sorted(lab.parts)):
            sel = local == j + 1
            pc, pe, py = _box(pts[sel]) if sel.sum() >= 4 else (center, ext, yaw)
            parts.append(Part(name=pname, center=_r(pc), extents=_r(pe), yaw_deg=round(py, 2)))
        objects.append(
            SceneObject(
                name=g.name,
                category=lab.category,
                center=_r(center),
                extents=_r(ext),
                yaw_deg=round(yaw, 2),
                parts=parts,
            )
        )
    return objects


def mask_views(
    depth_fn: DepthFn,
    cams: CaptureCameras,
    labels: UserLabels,
    W: Similarity,
    progress: Callable[[int], None] | None = None,
) -> list[MaskView]:
    """The labelled views in world metres, with the NeRF's depth at the masks' resolution."""
    T = W.matrix()
    out = []
    for lv in labels.views:
        if progress:
            progress(len(out))
        w, h = (int(x) for x in cams.sizes[lv.view])
        c2s = cams.cam_to_scene[lv.view : lv.view + 1]
        z = np.asarray(depth_fn(c2s, cams.K[lv.view : lv.view + 1], w, h), np.float64)[0]
        c2w = transform_poses(T, c2s)[0]
        out.append(MaskView(c2w, cams.K[lv.view], z * W.scale, lv.instance, lv.part))
    return out


def onboard(
    depth_fn: DepthFn,
    cams: CaptureCameras,
    labels: UserLabels,
    spec: ScaleSpec,
    name: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> Onboarded:
    """Infer world frame, floor, obstacles and objects (no files touched)."""
    step = progress or (lambda what, done, total: None)
    n_geo = len(cams)
    done = [0]

    def geo(n: int) -> None:
        done[0] += n
        step("geometry", done[0], n_geo)

    points, origins = geometry_points(depth_fn, cams, progress=geo)
    W, plane, yaw = estimate_world(points, cams, spec)
    pw = _apply(W, points)
    fmap = floor_map(pw, _apply(W, origins))
    n_masks = len(labels.views)
    views = mask_views(depth_fn, cams, labels, W, lambda k: step("mask depth", k, n_masks))
    step("mask depth", n_masks, n_masks)
    names = {lab.instance_id: lab.name for lab in labels.labels}
    part_index = {
        pid: (lab.instance_id, j + 1)
        for lab in labels.labels
        for j, pid in enumerate(sorted(lab.parts))
    }
    masks = lift(views, names, W.matrix(), part_index)
    objects = boxes_from_masks(masks, labels)
    report = {
        "name": name,
        "up_in_scene": [round(float(x), 6) for x in plane.up],
        "floor_offset_scene": plane.offset,
        "floor_inliers": plane.inliers,
        "scale_m_per_unit": W.scale,
        "scale_from": spec.how(),
        "mean_camera_height_m": float(np.mean(plane.camera_heights) * W.scale),
        "wall_yaw_deg": math.degrees(yaw),
        "geometry_points": len(points),
        "labelled_views": [cams.names[v.view] for v in labels.views],
        "objects_lifted": masks.names(),
        "objects_unseen": [lab.name for lab in labels.labels if lab.name not in masks.names()],
        "walkable_m2": float(fmap.walkable.sum() * fmap.cell**2),
        "obstacles": len(fmap.obstacles),
    }
    return Onboarded(W, plane, fmap, objects, masks, report, pw, views)


def scene_config(result: Onboarded, name: str, bundle: Path) -> SceneConfig:
    """The onboarded scene as a validated SceneConfig (backend nerf)."""
    from egosynth.config import validate

    data = {
        "name": name,
        "backend": "nerf",
        "bundle": str(bundle),
        "floor": [list(p) for p in result.floor.floor],
        "obstacles": [{"polygon": [list(p) for p in poly], "height": h}
                      for poly, h in result.floor.obstacles],
        "objects": [o.model_dump(mode="json") for o in result.objects],
    }  # fmt: skip
    return validate(SceneConfig, data, Path(f"<onboarded {name}>"))


def write_onboarded(root: Path, result: Onboarded, scene_yaml: Path) -> SceneConfig:
    """Write annotations, world_from_scene, lifted masks, report and scene config."""
    from egosynth.nerf.bundle import ANNOTATIONS, BUNDLE_JSON, _annotations_dict, read_bundle
    from egosynth.nerf.lifted import write_masks

    bundle = read_bundle(root)
    name = result.report["name"]
    scene = scene_config(result, name, root)  # validated before anything is written
    meta = bundle.meta
    meta.world_from_scene = result.world_from_scene
    write_masks(root, result.masks)
    (root / ANNOTATIONS).write_text(json.dumps(_annotations_dict(scene), indent=1) + "\n")
    (root / BUNDLE_JSON).write_text(json.dumps(meta.to_json(), indent=1) + "\n")
    (root / REPORT).write_text(json.dumps(result.report, indent=1) + "\n")
    rel = Path(_relpath(root, scene_yaml.parent))
    data = {"name": name, "backend": "nerf", "bundle": str(rel)}
    body = scene.model_dump(mode="json", include={"floor", "obstacles", "objects"})
    header = (
        f"# {name}: onboarded by `egosynth scenes onboard` (edit freely; masks.npz in the "
        "bundle labels the objects it names, boxes label the rest)\n"
    )
    scene_yaml.write_text(header + _yaml({**data, **body}))
    return scene


def _yaml(data: dict[str, Any]) -> str:
    """YAML with points and vectors on one line each ([x, y, z]), the rest in block style."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def seq(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flat = all(isinstance(v, (int, float)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)

    Dumper.add_representer(list, seq)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False)


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())
