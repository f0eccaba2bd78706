"""The mesh backend: exact depth, masks against analytic projections, ids, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.path import Path as MplPath
from scipy.spatial import ConvexHull

from egosynth.camera import (
    camera_rays,
    intrinsics_from_fov,
    look_at,
    pixel_centers,
    project,
    unproject,
)
from egosynth.config import REPO_ROOT, load_scene
from egosynth.labels import Label
from egosynth.render.base import Frames, Renderer
from egosynth.render.mesh import MeshRenderer
from egosynth.scenes.mesh import MeshBuilder
from egosynth.scenes.textures import Material

GREY = Material("solid", (0.5, 0.5, 0.5))
ROOM_0 = REPO_ROOT / "scene_configs" / "scenes" / "room_0.yaml"


def _box(extents, center, yaw_deg: float = 0.0) -> trimesh.Trimesh:
    T = trimesh.transformations.rotation_matrix(math.radians(yaw_deg), (0, 0, 1))
    T[:3, 3] = center
    return trimesh.creation.box(extents=extents, transform=T)


def _renderer(*pieces: tuple[trimesh.Trimesh, int, int], labels=()) -> MeshRenderer:
    b = MeshBuilder()
    for mesh, inst, part in pieces:
        b.add(mesh, GREY, instance=inst, part=part)
    return MeshRenderer(b.build(light=(0.0, 0.0, 5.0), labels=list(labels)))


def _yaw_pitch_pose(eye, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    y, p = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = np.array([math.cos(y) * math.cos(p), math.sin(y) * math.cos(p), math.sin(p)])
    return look_at(eye, np.asarray(eye) + fwd)


@settings(max_examples=15, deadline=None)
@given(
    dist=st.floats(0.5, 8.0),
    yaw=st.floats(-25.0, 25.0),
    pitch=st.floats(-25.0, 25.0),
    y0=st.floats(-1.0, 1.0),
    z0=st.floats(0.2, 2.0),
)
def test_depth_of_a_plane_is_exact(dist: float, yaw: float, pitch: float, y0: float, z0: float):
    # a wall whose face is the plane x = dist, seen from (0, y0, z0) looking roughly along +x
    r = _renderer((_box((0.2, 40.0, 40.0), (dist + 0.1, 0.0, 0.0)), 0, 0))
    w, h = 48, 32
    K = intrinsics_from_fov(w, h, 60.0)
    T = _yaw_pitch_pose((0.0, y0, z0), yaw, pitch)
    fr = r.render(T[None], K, w, h)
    d_world = camera_rays(K, w, h) @ T[:3, :3].T  # unit z in the camera frame
    expected = dist / d_world[..., 0]  # ray parameter to x = dist IS the z-depth
    assert np.all(fr.depth[0] > 0)
    assert np.max(np.abs(fr.depth[0] - expected)) <= 1e-3
    assert fr.depth.dtype == np.float32 and np.all(fr.accumulation == 1.0)


def test_fronto_parallel_box_depth_is_its_distance() -> None:
    r = _renderer((_box((0.6, 0.6, 0.6), (2.8, 0.0, 1.0)), 1, 0))
    w, h = 64, 48
    K = intrinsics_from_fov(w, h, 60.0)
    T = look_at((0.0, 0.0, 1.0), (1.0, 0.0, 1.0))
    fr = r.render(T[None], K, w, h)
    face = fr.instance[0] == 1
    assert face.sum() > 50
    np.testing.assert_allclose(fr.depth[0][face], 2.5, atol=1e-3)  # front face at x = 2.5
    assert np.all(fr.depth[0][~face] == 0) and np.all(fr.rgb[0][~face] == 0)


def _silhouette(corners: np.ndarray, K: np.ndarray, T: np.ndarray, w: int, h: int) -> np.ndarray:
    """Pixels whose centres fall inside the convex hull of a box's projected corners."""
    uv, z = project(corners, K, T)
    assert np.all(z > 0)
    hull = uv[ConvexHull(uv).vertices]
    inside = MplPath(hull).contains_points(pixel_centers(w, h).reshape(-1, 2))
    return inside.reshape(h, w)


@settings(max_examples=12, deadline=None)
@given(
    ext=st.tuples(st.floats(0.2, 1.0), st.floats(0.2, 1.0), st.floats(0.2, 1.0)),
    yaw=st.floats(-180.0, 180.0),
    dist=st.floats(1.5, 4.0),
    azim=st.floats(-180.0, 180.0),
    eye_h=st.floats(0.8, 1.6),
)
def test_instance_mask_matches_analytic_projection(ext, yaw, dist, azim, eye_h) -> None:
    center = np.array([0.0, 0.0, ext[2] / 2])
    r = _renderer((_box(ext, center, yaw), 1, 0))
    a = math.radians(azim)
    eye = np.array([dist * math.cos(a), dist * math.sin(a), eye_h])
    T = look_at(eye, center)
    w, h = 96, 72
    K = intrinsics_from_fov(w, h, 70.0)
    fr = r.render(T[None], K, w, h)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    corners = center + (signs * np.asarray(ext) / 2) @ rot.T
    expected = _silhouette(corners, K, T, w, h)
    got = fr.instance[0] == 1
    iou = (got & expected).sum() / (got | expected).sum()
    assert iou >= 0.99


def test_part_ids_and_labels() -> None:
    body = _box((0.8, 0.4, 0.4), (0.0, 0.0, 0.3))
    head = _box((0.25, 0.25, 0.25), (0.5, 0.0, 0.55))
    labels = [Label(1, "dog_0", "dog", {1: "torso", 2: "head"})]
    r = _renderer((body, 1, 1), (head, 1, 2), labels=labels)
    assert isinstance(r, Renderer) and r.labels() == labels
    w, h = 80, 60
    K = intrinsics_from_fov(w, h, 60.0)
    T = look_at((3.0, -0.5, 1.0), (0.2, 0.0, 0.4))
    fr = r.render(T[None], K, w, h)
    assert set(np.unique(fr.part)) == {0, 1, 2}
    assert np.array_equal(fr.part[0] > 0, fr.instance[0] == 1)
    # head pixels unproject into the head's box, torso pixels into the body's
    uv = pixel_centers(w, h)
    for pid, mesh in ((1, body), (2, head)):
        sel = fr.part[0] == pid
        pts = unproject(uv[sel], fr.depth[0][sel], K, T)
        lo, hi = mesh.bounds
        assert np.all((pts >= lo - 1e-6) & (pts <= hi + 1e-6))


def test_chunking_does_not_change_frames() -> None:
    scene = load_scene(ROOM_0)
    big = MeshRenderer.from_scene(scene)
    small = MeshRenderer(big.mesh, chunk_rays=997)
    K = intrinsics_from_fov(64, 48, 90.0)
    T = np.stack([look_at((2.0, 2.0, 1.5), (4.0, 3.0, 0.3)), look_at((3.0, 4.0, 0.9), (1, 1, 1))])
    a, b = big.render(T, K, 64, 48), small.render(T, K, 64, 48)
    for name in ("rgb", "depth", "instance", "part", "accumulation"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def _room_views(scene, n: int = 4) -> np.ndarray:
    xs = [o.center for o in scene.objects]
    x0, y0 = np.min(scene.floor, axis=0) + 0.6
    x1, y1 = np.max(scene.floor, axis=0) - 0.6
    corners = [(x0, y0), (x1, y1), (x0, y1), (x1, y0)]
    return np.stack([look_at((*corners[i % 4], 1.5), xs[i % len(xs)]) for i in range(n)])


def test_generated_room_renders_deterministically_with_consistent_annotations() -> None:
    from egosynth.scenes.procedural import _cached_mesh

    scene = load_scene(ROOM_0)
    w, h = 96, 72
    K = intrinsics_from_fov(w, h, 90.0)
    T = _room_views(scene)
    a = MeshRenderer.from_scene(scene).render(T, K, w, h)
    _cached_mesh.cache_clear()  # rebuild the mesh from the YAML settings from scratch
    b = MeshRenderer.from_scene(scene).render(T, K, w, h)
    for name in ("rgb", "depth", "instance", "part"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    assert isinstance(a, Frames) and a.rgb.shape == (4, h, w, 3)
    assert np.all(a.depth > 0)  # closed room: every ray hits something
    assert a.instance.max() <= len(scene.objects) and a.instance.max() > 0
    # pixels of object i unproject inside its annotated box, part pixels inside their part box
    labels = MeshRenderer.from_scene(scene).labels()
    uv = pixel_centers(w, h)
    for v in range(len(T)):
        for i, obj in enumerate(scene.objects, start=1):
            sel = a.instance[v] == i
            if sel.sum() == 0:
                continue
            pts = unproject(uv[sel], a.depth[v][sel], K, T[v])
            assert obj.contains(pts, margin=2e-3).all(), obj.name
            for pid, pname in labels[i - 1].parts.items():
                psel = a.part[v][sel] == pid
                part = next(p for p in obj.parts if p.name == pname)
                assert part.contains(pts[psel], margin=2e-3).all(), (obj.name, pname)


def test_renderer_accepts_per_camera_intrinsics() -> None:
    r = _renderer((_box((0.2, 40.0, 40.0), (3.1, 0.0, 0.0)), 0, 0))
    K1, K2 = intrinsics_from_fov(32, 24, 60.0), intrinsics_from_fov(32, 24, 90.0)
    T = look_at((0.0, 0.0, 0.0), (1.0, 0.0, 0.0))
    fr = r.render(np.stack([T, T]), np.stack([K1, K2]), 32, 24)
    np.testing.assert_allclose(fr.depth, 3.0, atol=1e-6)  # fronto-parallel: constant depth
    with pytest.raises(ValueError):
        r.render(np.stack([T, T]), np.stack([K1, K2, K2]), 32, 24)


def test_renderer_pickles_and_renders_the_same() -> None:
    import pickle

    r = MeshRenderer.from_scene(load_scene(ROOM_0))
    r2 = pickle.loads(pickle.dumps(r))
    K = intrinsics_from_fov(32, 24, 90.0)
    T = _room_views(load_scene(ROOM_0), 2)
    a, b = r.render(T, K, 32, 24), r2.render(T, K, 32, 24)
    assert a.rgb.tobytes() == b.rgb.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    assert r2.labels() == r.labels()
