"""The capture cameras of a bundle (cameras.json): what onboarding needs from the run.

A nerfstudio run trains on the images of a data folder (its transforms.json: per-frame
`file_path` and OpenGL camera-to-world `transform_matrix` in the data frame). A bundle keeps,
for every image, its name, size, pinhole intrinsics and OpenCV camera-to-scene pose (the data
frame is the bundle's scene frame), so `egosynth scenes onboard` can estimate gravity from the
cameras, render the NeRF's depth at the capture views and match 2D masks to them. Plain JSON;
no image is copied. Lens distortion is recorded but not modelled (nerfacto ignores it too
when rendering new views).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import opengl_to_opencv
from egosynth.errors import EgosynthError

CAMERAS = "cameras.json"
FORMAT = "egosynth-capture-cameras"
_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


@dataclass
class CaptureCameras:
    """The capture views, in the bundle's scene frame (OpenCV axes)."""

    names: list[str]  # image paths as transforms.json gives them (images/frame_00000.png)
    cam_to_scene: NDArray[np.float64]  # (N, 4, 4)
    K: NDArray[np.float64]  # (N, 3, 3)
    sizes: NDArray[np.int64]  # (N, 2) width, height

    def __len__(self) -> int:
        return len(self.names)

    def index(self, stem: str) -> int | None:
        """The view whose image file is named `stem` (without folder and extension)."""
        for i, n in enumerate(self.names):
            if Path(n).stem == stem:
                return i
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": 1,
            "frame": "OpenCV camera-to-scene (the run's data frame), scene units",
            "frames": [
                {
                    "image": n,
                    "width": int(s[0]),
                    "height": int(s[1]),
                    "K": k.tolist(),
                    "cam_to_scene": T.tolist(),
                }
                for n, T, k, s in zip(
                    self.names, self.cam_to_scene, self.K, self.sizes, strict=True
                )
            ],
        }


def _frame_value(meta: dict, frame: dict, key: str, path: Path) -> float:
    value = frame.get(key, meta.get(key))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise EgosynthError(f"{path}: field '{key}' = {value!r}: needed for every frame")
    return float(value)


def cameras_from_transforms(path: Path) -> CaptureCameras:
    """Read a nerfstudio transforms.json (global or per-frame pinhole intrinsics)."""
    from egosynth.readers import read_json_object

    meta = read_json_object(path, "transforms file")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise EgosynthError(f"{path}: field 'frames' = {frames!r:.40}: no frames")
    names, poses, Ks, sizes = [], [], [], []
    for i, f in enumerate(frames):
        if not isinstance(f, dict) or "file_path" not in f or "transform_matrix" not in f:
            raise EgosynthError(f"{path}: field 'frames.{i}': needs file_path and transform_matrix")
        fx, fy, cx, cy, w, h = (_frame_value(meta, f, k, path) for k in _INTRINSICS)
        T = np.asarray(f["transform_matrix"], float)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise EgosynthError(f"{path}: field 'frames.{i}.transform_matrix': not a 4x4 matrix")
        names.append(str(f["file_path"]))
        poses.append(opengl_to_opencv(T))
        Ks.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        sizes.append([int(w), int(h)])
    return CaptureCameras(names, np.array(poses), np.array(Ks, float), np.array(sizes))


def find_transforms(data: str | None, run: Path) -> Path | None:
    """The run's transforms.json: its recorded data path, as given or relative to the run."""
    if not data:
        return None
    p = Path(data)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, *(a / p for a in run.parents)]
    for c in candidates:
        t = c if c.suffix == ".json" else c / "transforms.json"
        if t.is_file():
            return t
    return None


def write_cameras(root: Path, cams: CaptureCameras) -> None:
    (root / CAMERAS).write_text(json.dumps(cams.to_json(), indent=1) + "\n")


def read_cameras(root: Path) -> CaptureCameras | None:
    """A bundle's cameras.json, or None when the import found no capture to record."""
    from egosynth.readers import read_json_object

    path = root / CAMERAS
    if not path.exists():
        return None
    data = read_json_object(path, "capture cameras file")
    if data.get("format") != FORMAT:
        raise EgosynthError(f"{path}: field 'format' = {data.get('format')!r}: not a {FORMAT}")
    try:
        frames = data["frames"]
        cams = CaptureCameras(
            names=[str(f["image"]) for f in frames],
            cam_to_scene=np.array([f["cam_to_scene"] for f in frames], float).reshape(-1, 4, 4),
            K=np.array([f["K"] for f in frames], float).reshape(-1, 3, 3),
            sizes=np.array([[f["width"], f["height"]] for f in frames], np.int64),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EgosynthError(f"{path}: field 'frames' unreadable ({exc!r:.80})") from None
    if not len(cams) or not np.all(np.isfinite(cams.cam_to_scene)):
        raise EgosynthError(f"{path}: field 'frames': empty or not finite")
    return cams
