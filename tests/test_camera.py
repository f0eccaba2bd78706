"""Camera convention tests: golden values and round trips over the input space."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from egosynth import camera

finite = st.floats(-10, 10, allow_nan=False)


def random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, rng.uniform(-5, 5, 3)
    return T


def test_intrinsics_golden() -> None:
    K = camera.intrinsics_from_fov(200, 100, 90.0)
    assert np.allclose(K, [[100, 0, 100], [0, 100, 50], [0, 0, 1]])
    assert math.isclose(camera.vfov_deg(K, 100), 2 * math.degrees(math.atan(0.5)))


def test_point_straight_ahead_projects_to_principal_point() -> None:
    K = camera.intrinsics_from_fov(64, 48, 70.0)
    T = random_pose(3)
    ahead = T[:3, 3] + 4.2 * T[:3, 2]  # +z is forward in OpenCV
    uv, z = camera.project(ahead, K, T)
    assert np.allclose(uv, [32.0, 24.0]) and math.isclose(z, 4.2)


def test_opencv_axes_golden() -> None:
    """A point right of and below the optical axis lands right of and below the centre."""
    K = camera.intrinsics_from_fov(100, 100, 90.0)
    T = camera.look_at([0, 0, 1.5], [5, 0, 1.5])  # looking along +X, world +Z up
    uv, z = camera.project([5.0, -1.0, 1.0], K, T)  # -Y is to the right when facing +X
    assert uv[0] > 50 and uv[1] > 50 and math.isclose(z, 5.0)


@given(
    seed=st.integers(0, 10_000),
    uv=arrays(float, (7, 2), elements=st.floats(0, 64)),
    depth=arrays(float, 7, elements=st.floats(0.05, 50)),
)
def test_project_unproject_roundtrip(seed: int, uv: np.ndarray, depth: np.ndarray) -> None:
    K = camera.intrinsics_from_fov(64, 48, 60.0)
    T = random_pose(seed)
    p = camera.unproject(uv, depth, K, T)
    uv2, z2 = camera.project(p, K, T)
    assert np.allclose(uv2, uv, atol=1e-6) and np.allclose(z2, depth, rtol=1e-9)


@given(seed=st.integers(0, 10_000))
def test_opencv_opengl_roundtrip(seed: int) -> None:
    T = random_pose(seed)
    gl = camera.opencv_to_opengl(T)
    assert np.allclose(camera.opengl_to_opencv(gl), T)
    # OpenGL looks down -z: the same world direction as OpenCV's +z.
    assert np.allclose(-gl[:3, 2], T[:3, 2]) and np.allclose(-gl[:3, 1], T[:3, 1])


@given(seed=st.integers(0, 10_000))
def test_invert_pose(seed: int) -> None:
    T = random_pose(seed)
    assert np.allclose(camera.invert_pose(T) @ T, np.eye(4))


@settings(max_examples=30)
@given(depth=st.floats(0.1, 100), baseline=st.floats(0.01, 0.2), hfov=st.floats(20, 150))
def test_stereo_disparity_matches_projection(depth: float, baseline: float, hfov: float) -> None:
    """Disparity from depth equals the horizontal shift of a point between rectified eyes."""
    K = camera.intrinsics_from_fov(96, 64, hfov)
    left = camera.look_at([0, 0, 1], [0, 10, 1])
    right = left.copy()
    right[:3, 3] += baseline * left[:3, 0]  # right eye = left eye + baseline along image x
    point = left[:3, 3] + depth * left[:3, 2] + 0.3 * left[:3, 0]
    (ul, _), _ = camera.project(point, K, left)
    (ur, _), _ = camera.project(point, K, right)
    d = camera.disparity_from_depth(depth, K[0, 0], baseline)
    assert math.isclose(ul - ur, float(d), rel_tol=1e-9)
    assert math.isclose(float(camera.depth_from_disparity(d, K[0, 0], baseline)), depth)


def test_depth_distance_conversion() -> None:
    K = camera.intrinsics_from_fov(8, 6, 90.0)
    z = np.full((6, 8), 2.0)
    dist = camera.depth_to_distance(z, K)
    assert np.all(dist >= z) and np.allclose(camera.distance_to_depth(dist, K), z)
    rays = camera.camera_rays(K, 8, 6)
    assert np.allclose(dist, 2.0 * np.linalg.norm(rays, axis=-1))
