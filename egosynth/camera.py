"""Camera geometry: the ONE place that knows egosynth's camera conventions.

Conventions (see docs/conventions.md):
- World frame: metres, right-handed, +Z up.
- Poses are 4x4 camera-to-world in the OpenCV convention: x right, y down, z forward.
  nerfstudio (and OpenGL) use x right, y up, z backward; convert with `opencv_to_opengl`.
- Intrinsics are pinhole K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels, with pixel
  (i, j)'s centre at continuous coordinate (i + 0.5, j + 0.5).
- Depth is z-depth in metres along the optical axis (not distance along the ray).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

# Flipping y and z turns OpenCV camera axes into OpenGL ones and back (it is an involution).
_CV_GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def intrinsics_from_fov(width: int, height: int, hfov_deg: float) -> NDArray[np.float64]:
    """Square-pixel pinhole intrinsics from a horizontal field of view.

    The principal point is the image centre (width/2, height/2) in continuous coordinates.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180), got {hfov_deg}")
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def vfov_deg(K: ArrayLike, height: int) -> float:
    """Vertical field of view in degrees of intrinsics `K` for an image `height` pixels tall."""
    return math.degrees(2.0 * math.atan(0.5 * height / float(np.asarray(K)[1, 1])))


def opencv_to_opengl(cam_to_world: ArrayLike) -> NDArray[np.float64]:
    """Camera-to-world (..., 4, 4): OpenCV axes -> OpenGL/nerfstudio axes."""
    return np.asarray(cam_to_world, dtype=np.float64) @ _CV_GL_FLIP


def opengl_to_opencv(cam_to_world: ArrayLike) -> NDArray[np.float64]:
    """Camera-to-world (..., 4, 4): OpenGL/nerfstudio axes -> OpenCV axes."""
    return np.asarray(cam_to_world, dtype=np.float64) @ _CV_GL_FLIP


def invert_pose(cam_to_world: ArrayLike) -> NDArray[np.float64]:
    """Inverse of rigid (..., 4, 4) transforms, without a general matrix inverse."""
    T = np.asarray(cam_to_world, dtype=np.float64)
    R, t = T[..., :3, :3], T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def project(
    points_world: ArrayLike, K: ArrayLike, cam_to_world: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Project world points (..., 3) into one camera.

    Returns (uv, z): continuous pixel coordinates (..., 2) and z-depth (..., ) in metres.
    Points behind the camera get z <= 0 and meaningless uv; callers mask them.
    """
    p = np.asarray(points_world, dtype=np.float64)
    w2c = invert_pose(cam_to_world)
    pc = p @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uvw = pc @ np.asarray(K, dtype=np.float64).T
        uv = uvw[..., :2] / uvw[..., 2:3]
    return uv, z


def unproject(
    uv: ArrayLike, depth: ArrayLike, K: ArrayLike, cam_to_world: ArrayLike
) -> NDArray[np.float64]:
    """Lift pixel coordinates (..., 2) with z-depth (...) in metres to world points (..., 3)."""
    uv = np.asarray(uv, dtype=np.float64)
    z = np.asarray(depth, dtype=np.float64)[..., None]
    K = np.asarray(K, dtype=np.float64)
    x = (uv[..., 0:1] - K[0, 2]) / K[0, 0]
    y = (uv[..., 1:2] - K[1, 2]) / K[1, 1]
    pc = np.concatenate([x, y, np.ones_like(x)], axis=-1) * z
    T = np.asarray(cam_to_world, dtype=np.float64)
    return pc @ T[:3, :3].T + T[:3, 3]


def pixel_centers(width: int, height: int) -> NDArray[np.float64]:
    """(H, W, 2) continuous (u, v) coordinates of pixel centres: (j + 0.5, i + 0.5)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([u, v], axis=-1)


def camera_rays(K: ArrayLike, width: int, height: int) -> NDArray[np.float64]:
    """(H, W, 3) ray directions in camera coordinates with unit z (so t along them = z-depth)."""
    uv = pixel_centers(width, height)
    K = np.asarray(K, dtype=np.float64)
    x = (uv[..., 0] - K[0, 2]) / K[0, 0]
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def depth_to_distance(depth: ArrayLike, K: ArrayLike) -> NDArray[np.float64]:
    """Convert z-depth images (..., H, W) to Euclidean distance along each pixel's ray."""
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape[-2:]
    norm = np.linalg.norm(camera_rays(K, w, h), axis=-1)
    return depth * norm


def distance_to_depth(distance: ArrayLike, K: ArrayLike) -> NDArray[np.float64]:
    """Inverse of `depth_to_distance`: Euclidean ray distance -> z-depth."""
    distance = np.asarray(distance, dtype=np.float64)
    h, w = distance.shape[-2:]
    norm = np.linalg.norm(camera_rays(K, w, h), axis=-1)
    return distance / norm


def disparity_from_depth(depth: ArrayLike, fx: float, baseline: float) -> NDArray[np.float64]:
    """Stereo disparity in pixels for rectified parallel cameras: d = fx * B / Z."""
    depth = np.asarray(depth, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(depth > 0, fx * baseline / depth, 0.0)


def depth_from_disparity(disparity: ArrayLike, fx: float, baseline: float) -> NDArray[np.float64]:
    """Inverse of `disparity_from_depth`: Z = fx * B / d (0 where d <= 0)."""
    d = np.asarray(disparity, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(d > 0, fx * baseline / d, 0.0)


def look_at(
    eye: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, 0.0, 1.0)
) -> NDArray[np.float64]:
    """OpenCV camera-to-world at `eye` looking at `target`, image x axis kept horizontal."""
    eye = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    n = np.linalg.norm(right)
    if n < 1e-9:  # looking straight up or down: any horizontal right axis will do
        right = np.array([1.0, 0.0, 0.0])
    else:
        right /= n
    down = np.cross(fwd, right)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, fwd, eye
    return T
