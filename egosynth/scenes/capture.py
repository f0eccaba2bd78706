"""Multi-view captures of a scene in nerfstudio's data format, to fit NeRFs on.

Views are spread over the walkable floor (the same free space the walkers use, so the NeRF is
conditioned where egocentric paths go) at eye heights from toddler to adult, looking around
and at objects. A capture folder holds:

    transforms.json        nerfstudio format: OPENCV pinhole intrinsics, per-frame OpenGL
                           camera-to-world `transform_matrix`, `depth_file_path`
    images/frame_00000.png rgb
    depth/frame_00000.png  z-depth in millimetres, uint16 (0 = no surface)
    instance/…png          instance ids, uint16 (0 = background)   [masks]
    part/…png              part ids, uint8 (0 = no part)            [masks]
    scene.yaml             the scene's annotations as an egosynth scene config
    labels.json            the label table (instance id -> object, part id -> part)

Instance and part images are NOT nerfstudio's `mask_path` (which marks pixels to ignore).
Poses are converted from egosynth's OpenCV convention only through egosynth.camera.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import intrinsics_from_fov, look_at, opencv_to_opengl, opengl_to_opencv
from egosynth.errors import EgosynthError

if TYPE_CHECKING:
    from egosynth.config import SceneConfig
    from egosynth.render.base import Renderer

DEPTH_SCALE_M = 1e-3  # depth PNGs store millimetres (nerfstudio's default depth_unit_scale_factor)


@dataclass(frozen=True)
class CaptureSettings:
    """How to spread the views of a capture."""

    n_views: int = 200
    width: int = 256
    height: int = 192
    hfov_deg: float = 90.0
    eye_height_m: tuple[float, float] = (0.8, 1.6)  # toddler to adult eye level
    pitch_deg: tuple[float, float] = (-35.0, 15.0)  # looking-around views
    object_fraction: float = 0.5  # views aimed at an object (with jitter)
    clearance_m: float = 0.3  # views keep this far from walls and obstacles
    seed: int = 0
    depth: bool = True
    masks: bool = True
    batch: int = 8  # views rendered per renderer call

    def check(self) -> None:
        if self.n_views < 1:
            raise EgosynthError(f"capture: n_views must be >= 1, got {self.n_views}")
        if self.width < 8 or self.height < 8:
            raise EgosynthError(f"capture: image size too small: {self.width}x{self.height}")
        if not 0.0 < self.hfov_deg < 180.0:
            raise EgosynthError(f"capture: hfov_deg must be in (0, 180), got {self.hfov_deg}")
        lo, hi = self.eye_height_m
        if not 0.0 < lo <= hi:
            raise EgosynthError(f"capture: eye_height_m must be 0 < min <= max, got {lo}, {hi}")


def _spread(points: NDArray[np.float64], n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """n of `points` chosen by farthest-point sampling: even coverage of the floor."""
    chosen = [int(rng.integers(len(points)))]
    d = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(1, min(n, len(points))):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(points - points[i], axis=1))
    return points[chosen]


def sample_views(
    scene: SceneConfig, settings: CaptureSettings
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(cam_to_world (N, 4, 4) OpenCV, K (3, 3)) of a capture of `scene`."""
    from egosynth.motion.floorplan import FloorPlan

    settings.check()
    rng = np.random.default_rng(settings.seed)
    plan = FloorPlan(scene.floor, [o.polygon for o in scene.obstacles], settings.clearance_m)
    n = settings.n_views
    cand = np.array([plan.sample_point(rng) for _ in range(max(8 * n, 400))])
    xy = _spread(cand, n, rng)
    if len(xy) < n:  # fewer distinct candidates than views: reuse positions
        xy = xy[rng.integers(len(xy), size=n)]
    lo, hi = settings.eye_height_m
    z = lo + (hi - lo) * (rng.permutation(n) + rng.random(n)) / n  # stratified heights
    centers = np.array([o.center for o in scene.objects]).reshape(-1, 3)
    poses = []
    for i in range(n):
        eye = np.array([xy[i, 0], xy[i, 1], z[i]])
        aim_object = len(centers) > 0 and rng.random() < settings.object_fraction
        if aim_object:
            target = centers[int(rng.integers(len(centers)))] + rng.normal(0.0, 0.15, 3)
            if np.linalg.norm(target[:2] - eye[:2]) < 0.3:  # right above it: look around
                aim_object = False
        if not aim_object:
            yaw = rng.uniform(-math.pi, math.pi)
            pitch = math.radians(rng.uniform(*settings.pitch_deg))
            target = eye + np.array(
                [math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)]
            )
        poses.append(look_at(eye, target))
    K = intrinsics_from_fov(settings.width, settings.height, settings.hfov_deg)
    return np.array(poses), K


def transforms_json(
    c2w: NDArray[np.float64], K: NDArray[np.float64], settings: CaptureSettings
) -> dict:
    """nerfstudio's transforms.json for OpenCV poses `c2w` (converted to OpenGL here)."""
    frames = []
    for i, T in enumerate(opencv_to_opengl(c2w)):
        name = f"frame_{i:05d}.png"
        fr = {"file_path": f"images/{name}", "transform_matrix": T.round(9).tolist()}
        if settings.depth:
            fr["depth_file_path"] = f"depth/{name}"
        if settings.masks:
            fr["instance_file_path"] = f"instance/{name}"
            fr["part_file_path"] = f"part/{name}"
        frames.append(fr)
    return {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]),
        "fl_y": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "w": settings.width,
        "h": settings.height,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "frames": frames,
        "egosynth": {
            "depth": "z-depth in millimetres (uint16 PNG, 0 = none)",
            "pose_convention": "transform_matrix is OpenGL camera-to-world, world metres +Z up",
            "scene": "scene.yaml",
            "labels": "labels.json",
            "settings": asdict(settings),
        },
    }


def _write_png(path: Path, img: NDArray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, img, extension=".png")


def write_capture(
    scene: SceneConfig,
    out: Path,
    settings: CaptureSettings = CaptureSettings(),
    renderer: Renderer | None = None,
) -> Path:
    """Render and write a capture of `scene` into folder `out`; returns transforms.json."""
    from tqdm import tqdm

    from egosynth.render import open_renderer

    c2w, K = sample_views(scene, settings)
    renderer = renderer or open_renderer(scene)
    dirs = (
        ["images"]
        + (["depth"] if settings.depth else [])
        + (["instance", "part"] if settings.masks else [])
    )
    try:
        for d in dirs:
            (out / d).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EgosynthError(f"{out}: cannot create the capture folder ({exc.strerror})") from None
    w, h = settings.width, settings.height
    with tqdm(total=len(c2w), desc=f"capturing {scene.name}", unit="view") as bar:
        for s in range(0, len(c2w), settings.batch):
            fr = renderer.render(c2w[s : s + settings.batch], K, w, h)
            for j in range(len(fr)):
                name = f"frame_{s + j:05d}.png"
                _write_png(out / "images" / name, fr.rgb[j])
                if settings.depth:
                    mm = np.round(fr.depth[j].astype(np.float64) / DEPTH_SCALE_M)
                    _write_png(out / "depth" / name, np.clip(mm, 0, 65535).astype(np.uint16))
                if settings.masks:
                    _write_png(out / "instance" / name, fr.instance[j])
                    _write_png(out / "part" / name, fr.part[j])
            bar.update(len(fr))
    meta = transforms_json(c2w, K, settings)
    (out / "transforms.json").write_text(json.dumps(meta, indent=1) + "\n")
    labels = [
        {
            "instance_id": lab.instance_id,
            "name": lab.name,
            "category": lab.category,
            "parts": {str(k): v for k, v in lab.parts.items()},
        }
        for lab in renderer.labels()
    ]
    (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    _write_scene(scene, out / "scene.yaml")
    return out / "transforms.json"


def _write_scene(scene: SceneConfig, path: Path) -> None:
    """The scene's annotations beside the capture (the source file itself when there is one)."""
    import yaml

    if scene.source is not None and scene.source.is_file():
        path.write_bytes(scene.source.read_bytes())
        return
    data = scene.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@dataclass
class Capture:
    """A capture read back from disk, in egosynth's conventions (OpenCV poses, metres)."""

    cam_to_world: NDArray[np.float64]  # (N, 4, 4)
    K: NDArray[np.float64]  # (3, 3)
    width: int
    height: int
    root: Path
    frames: list[dict]

    def rgb(self, i: int) -> NDArray[np.uint8]:
        from egosynth.readers import read_image

        return read_image(self.root / self.frames[i]["file_path"], "capture image")

    def depth(self, i: int) -> NDArray[np.float64]:
        from egosynth.readers import read_image

        path = self.root / self.frames[i]["depth_file_path"]
        mm = read_image(path, "capture depth image").astype(np.float64)
        return mm * DEPTH_SCALE_M


def read_capture(root: Path) -> Capture:
    """Read transforms.json of a capture written by `write_capture` (or any nerfstudio
    pinhole capture with per-capture intrinsics)."""
    path = root / "transforms.json"
    from egosynth.readers import read_json_object

    meta = read_json_object(path, "capture transforms file")
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "frames"):
        if key not in meta:
            raise EgosynthError(f"{path}: {key} = None: missing (per-frame intrinsics unsupported)")
    K = np.array([[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1.0]])
    gl = np.array([f["transform_matrix"] for f in meta["frames"]], float)
    return Capture(opengl_to_opencv(gl), K, int(meta["w"]), int(meta["h"]), root, meta["frames"])
