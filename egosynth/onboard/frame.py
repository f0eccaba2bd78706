"""Gravity, floor and metric scale of a scene in an arbitrary (COLMAP-like) frame.

- Up: people hold cameras level (no roll), so every capture camera's x axis is horizontal and
  gravity is the direction most orthogonal to all of them (the smallest eigenvector of their
  scatter); the cameras' mean up vector only picks its sign. The plain mean up vector is
  biased by the capture's mean pitch (it tilts with the views), the x axes are not.
- Floor: the dominant horizontal plane below the cameras in the NeRF's geometry: the peak of the
  height histogram of surface points, then a least-squares plane through the points near it,
  whose normal refines the up axis.
- Scale: from what the user knows (camera height, a known scale, or a known distance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from egosynth.config import Similarity
from egosynth.errors import EgosynthError

# Scene-frame OpenCV poses (N, 4, 4), intrinsics (N, 3, 3), width, height -> z-depth (N, H, W)
# in scene units, 0 where nothing was hit: how onboarding sees the NeRF (or, in tests, a mesh).
DepthFn = Callable[[NDArray[np.float64], NDArray[np.float64], int, int], NDArray[np.floating]]

# Points within this fraction of the cameras' height above the floor peak count as floor when
# fitting the plane (1.5 % of ~1.2 m: ~2 cm, about a NeRF surface's fuzz at room scale).
FLOOR_BAND = 0.015
FLOOR_ITERATIONS = 4
# A floor plane tilted more than this from the cameras' gravity is not the floor.
MAX_FLOOR_TILT_DEG = 10.0


def up_from_cameras(cam_to_scene: NDArray[np.floating]) -> NDArray[np.float64]:
    """Unit up vector in the scene frame from level-held OpenCV cameras (N, 4, 4)."""
    R = np.asarray(cam_to_scene, np.float64)[:, :3, :3]
    x, down = R[:, :, 0], R[:, :, 1]
    mean_up = -down.mean(axis=0)
    if len(R) < 3:  # too few x axes to span the horizontal plane
        return mean_up / np.linalg.norm(mean_up)
    w, v = np.linalg.eigh(x.T @ x)
    up = v[:, 0]
    if w[1] < 1e-3 * len(R):  # x axes all parallel: the plane is not determined by them
        up = mean_up
    up = up / np.linalg.norm(up)
    return up if up @ mean_up >= 0 else -up


@dataclass(frozen=True)
class FloorPlane:
    """The floor plane {p : up . p = offset} in the scene frame, and the cameras above it."""

    up: NDArray[np.float64]
    offset: float
    camera_heights: NDArray[np.float64]  # scene units above the plane
    inliers: int

    def height(self, points: NDArray[np.floating]) -> NDArray[np.float64]:
        return np.asarray(points, np.float64) @ self.up - self.offset


def _tilt_deg(a: NDArray, b: NDArray) -> float:
    return math.degrees(math.acos(float(np.clip(a @ b, -1.0, 1.0))))


def fit_floor(
    points: NDArray[np.floating], cam_to_scene: NDArray[np.floating], up: NDArray[np.floating]
) -> FloorPlane:
    """The dominant horizontal plane below the cameras, refining `up` (scene units)."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    cams = np.asarray(cam_to_scene, np.float64)[:, :3, 3]
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    cam_h = cams @ up
    below = pts[pts @ up < cam_h.min()]
    if len(below) < 100:
        raise EgosynthError(
            f"floor: only {len(below)} surface points below the capture cameras; "
            "the NeRF shows no floor"
        )
    # Height histogram at ~1 % of the camera height: the floor is its highest peak.
    spread = float(np.median(cam_h) - np.percentile(below @ up, 1))
    h = below @ up
    bins = np.arange(h.min(), h.max() + spread * 0.01, spread * 0.01)
    counts, edges = np.histogram(h, bins=max(bins.size, 2))
    peak = int(np.argmax(counts))
    offset = float(0.5 * (edges[peak] + edges[peak + 1]))
    band = spread * FLOOR_BAND
    inl = np.zeros(len(below), bool)
    for _ in range(FLOOR_ITERATIONS):  # least-squares plane through the band, band re-centred
        inl = np.abs(below @ up - offset) < band
        if inl.sum() < 50:
            break
        q = below[inl]
        c = q.mean(axis=0)
        _, _, vt = np.linalg.svd(q - c, full_matrices=False)
        n = vt[2] if vt[2] @ up >= 0 else -vt[2]
        if _tilt_deg(n, up) > MAX_FLOOR_TILT_DEG:
            break  # a wall or ramp got in: keep the cameras' up
        up, offset = n, float(c @ n)
    heights = cams @ up - offset
    if not np.all(heights > 0):
        raise EgosynthError(
            f"floor: {int((heights <= 0).sum())} capture cameras lie below the fitted floor plane"
        )
    return FloorPlane(up=up, offset=offset, camera_heights=heights, inliers=int(inl.sum()))


def level_rotation(up: NDArray[np.floating]) -> NDArray[np.float64]:
    """A rotation taking `up` to +Z (the smallest one)."""
    u = np.asarray(up, np.float64) / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(u, z), float(u @ z)
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


def wall_yaw(xy: NDArray[np.floating], cell: float) -> float:
    """The yaw (radians, in [0, pi/2)) that makes walls axis-aligned.

    Wall points pile up in few x (or y) bins when the walls are aligned with the axes: the
    angle minimising the histograms' entropy. Works for any rectilinear room; for others it
    is just a tidy orientation.
    """
    xy = np.asarray(xy, np.float64)
    if len(xy) < 10:
        return 0.0

    def entropy(theta: float) -> float:
        c, s = math.cos(theta), math.sin(theta)
        total = 0.0
        for axis in (xy @ [c, s], xy @ [-s, c]):
            n, _ = np.histogram(axis, bins=max(2, int(np.ptp(axis) / cell) + 1))
            p = n[n > 0] / len(axis)
            total -= float(np.sum(p * np.log(p)))
        return total

    coarse = np.radians(np.arange(0.0, 90.0, 1.0))
    best = float(coarse[int(np.argmin([entropy(t) for t in coarse]))])
    fine = best + np.radians(np.arange(-1.0, 1.0, 0.1))
    return float(fine[int(np.argmin([entropy(t) for t in fine]))]) % (math.pi / 2)


def world_from_scene(
    floor: FloorPlane, scale: float, yaw: float = 0.0, origin_xy: tuple[float, float] = (0, 0)
) -> Similarity:
    """The similarity scene -> world: up to +Z, floor to z = 0, `scale` metres per unit, yaw.

    `origin_xy` is the world point (metres, after levelling and yaw) that becomes (0, 0).
    """
    R0 = level_rotation(floor.up)
    c, s = math.cos(-yaw), math.sin(-yaw)
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    R = Rz @ R0
    t = np.array([-origin_xy[0], -origin_xy[1], -scale * floor.offset])
    return Similarity(scale=float(scale), rotation=tuple(map(tuple, R)), translation=tuple(t))


def scale_from_camera_height(floor: FloorPlane, metres: float) -> float:
    """Metres per scene unit when the capture was held at about `metres` above the floor."""
    if not metres > 0:
        raise EgosynthError(f"--camera-height = {metres}: must be a positive number of metres")
    return float(metres / np.mean(floor.camera_heights))


def scale_from_distance(p1: NDArray, p2: NDArray, metres: float) -> float:
    """Metres per scene unit from two scene points `metres` apart."""
    d = float(np.linalg.norm(np.asarray(p1, float) - np.asarray(p2, float)))
    if not d > 0 or not metres > 0:
        raise EgosynthError(
            f"--scale-from-distance: points {d:.3g} units apart and {metres} m: both must be > 0"
        )
    return metres / d


def transform_poses(
    T: NDArray[np.floating], cam_to_world: NDArray[np.floating]
) -> NDArray[np.float64]:
    """Apply the similarity T (4x4) to OpenCV poses (N, 4, 4), keeping rotations pure."""
    T = np.asarray(T, np.float64)
    s = float(np.cbrt(np.linalg.det(T[:3, :3])))
    out = np.einsum("ij,njk->nik", T, np.asarray(cam_to_world, np.float64))
    out[:, :3, :3] /= s
    return out
