"""Test scenes for onboarding: procedural ground truth moved into a COLMAP-like frame.

A phone capture reconstructed by COLMAP lives in a frame that is an arbitrary similarity of
the metric, gravity-aligned world: `world = s R colmap + t`. These helpers make such data from
a procedural room, so onboarding can be measured against the truth:

- `colmap_capture`: a capture folder whose poses (and depth units) are in that frame, to fit
  a NeRF on exactly as a user would (the honest path: a real fit on transformed poses);
- `reframe_bundle`: an already fitted bundle whose scene frame is composed with that
  similarity (exactly what fitting on transformed poses would give if the fit were identical;
  cheap, so tests and the second room use it).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import opencv_to_opengl, opengl_to_opencv
from egosynth.config import Similarity
from egosynth.nerf.cameras import CaptureCameras
from egosynth.onboard.frame import DepthFn, transform_poses
from egosynth.onboard.masks import UserLabels

if TYPE_CHECKING:
    from egosynth.render.base import Renderer


def random_similarity(seed: int) -> Similarity:
    """An arbitrary world_from_colmap: any rotation (up axis anywhere), scale 0.2-5, offset."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    R = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    scale = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
    t = rng.normal(0.0, 3.0, 3)
    return Similarity(scale=scale, rotation=tuple(map(tuple, R)), translation=tuple(t))


def colmap_capture(capture: Path, out: Path, world_from_colmap: Similarity) -> float:
    """Copy `capture` into `out` with every pose expressed in the COLMAP-like frame.

    Depth PNGs stay in millimetres of the world; the returned factor is the depth unit scale
    (PNG value -> COLMAP units) to fit with, as a phone's LiDAR depth would be rescaled.
    Instance/part images are kept beside it (they are the labels a user would draw); they are
    dropped from transforms.json so the fit never sees them.
    """
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(capture, out)
    meta = json.loads((capture / "transforms.json").read_text())
    gl = np.array([f["transform_matrix"] for f in meta["frames"]], float)
    colmap_from_world = np.linalg.inv(world_from_colmap.matrix())
    moved = opencv_to_opengl(transform_poses(colmap_from_world, opengl_to_opencv(gl)))
    for f, T in zip(meta["frames"], moved, strict=True):
        f["transform_matrix"] = T.round(12).tolist()
        f.pop("instance_file_path", None)
        f.pop("part_file_path", None)
    meta.pop("egosynth", None)  # a user's capture knows nothing of egosynth's world
    (out / "transforms.json").write_text(json.dumps(meta, indent=1) + "\n")
    for name in ("scene.yaml",):  # the truth must not sit inside the user's data
        (out / name).unlink(missing_ok=True)
    return 1e-3 / world_from_colmap.scale


def reframe_cameras(cams: CaptureCameras, world_from_colmap: Similarity) -> CaptureCameras:
    """Capture cameras of the true world expressed in the COLMAP-like frame."""
    colmap_from_world = np.linalg.inv(world_from_colmap.matrix())
    return CaptureCameras(
        names=list(cams.names),
        cam_to_scene=transform_poses(colmap_from_world, cams.cam_to_scene),
        K=cams.K.copy(),
        sizes=cams.sizes.copy(),
    )


def mesh_depth_fn(renderer: Renderer, world_from_colmap: Similarity) -> DepthFn:
    """A depth callback in the COLMAP-like frame answered by the mesh ground truth."""
    W = world_from_colmap.matrix()

    def depth(c2s: NDArray, K: NDArray, w: int, h: int) -> NDArray:
        frames = renderer.render(transform_poses(W, c2s), K, w, h)
        return frames.depth.astype(np.float64) / world_from_colmap.scale

    return depth


def choose_views(instance: list[NDArray], n: int = 10) -> list[int]:
    """The n views a labeller would pick: greedily, the most object pixels not yet labelled.

    Each object's pixels count with diminishing weight the more chosen views show it, so every
    object gets labelled in a few views (this looks at the masks, as a person picking views
    to label does, never at 3D ground truth).
    """
    chosen: list[int] = []
    seen: dict[int, int] = {}
    stats = [dict(zip(*np.unique(m, return_counts=True), strict=True)) for m in instance]
    for _ in range(min(n, len(instance))):

        def gain(i: int) -> float:
            return sum(
                math.sqrt(c) / (1 + seen.get(int(d), 0)) for d, c in stats[i].items() if d > 0
            )

        best = max((i for i in range(len(instance)) if i not in chosen), key=gain)
        chosen.append(best)
        for d in stats[best]:
            if d > 0:
                seen[int(d)] = seen.get(int(d), 0) + 1
    return chosen


def capture_labels(capture: Path, views: list[int], cams: CaptureCameras) -> UserLabels:
    """UserLabels from a procedural capture's own instance/part PNGs of `views` (the truth)."""
    from egosynth.onboard.masks import LabelledView, read_labels
    from egosynth.readers import read_image

    labels = read_labels(capture / "labels.json")
    out = UserLabels(labels)
    for v in views:
        name = Path(cams.names[v]).name
        inst = np.asarray(read_image(capture / "instance" / name)).astype(np.uint16)
        part = np.asarray(read_image(capture / "part" / name)).astype(np.uint16)
        out.views.append(LabelledView(v, capture / "instance" / name, inst, part))
        out.views[-1].part = part
    return out


def reframe_bundle(
    bundle: Path, out: Path, world_from_colmap: Similarity, cams: CaptureCameras
) -> Path:
    """Copy a fitted bundle so its scene frame is the COLMAP-like frame of `world_from_colmap`.

    The model (weights, bake) is untouched; only the data frame moves: nerfstudio's dataparser
    transform T and scale s become T' and s' with s' T' = s T S (what fitting on the moved
    poses gives when the fit is identical). world_from_scene is reset to identity and the
    annotations are dropped (a user's import has none); `cams` (true world) are recorded in the
    new frame as the import would.
    """
    from egosynth.nerf.bundle import ANNOTATIONS, BUNDLE_JSON, read_bundle
    from egosynth.nerf.cameras import write_cameras

    src = read_bundle(bundle)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src.root, out)
    meta = src.meta
    T = np.eye(4)
    T[:3, :] = np.asarray(meta.dataparser_transform)
    S = world_from_colmap.matrix()
    TS = T @ S
    sigma = world_from_colmap.scale
    T2 = TS.copy()
    T2[:3, :] /= sigma
    meta.dataparser_transform = T2[:3, :].tolist()
    meta.dataparser_scale = meta.dataparser_scale * sigma
    meta.world_from_scene = Similarity()
    meta.provenance = {**meta.provenance, "reframed_by": world_from_colmap.model_dump(mode="json")}
    (out / BUNDLE_JSON).write_text(json.dumps(meta.to_json(), indent=1) + "\n")
    (out / ANNOTATIONS).unlink(missing_ok=True)
    for name in ("masks.json", "masks.npz", "onboard.json"):
        (out / name).unlink(missing_ok=True)
    write_cameras(out, reframe_cameras(cams, world_from_colmap))
    return out
