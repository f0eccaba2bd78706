"""Captures in nerfstudio's format: files, poses, photo-consistency, nerfstudio's own parser."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import shapely

from egosynth.camera import (
    intrinsics_from_fov,
    look_at,
    opencv_to_opengl,
    pixel_centers,
    project,
    unproject,
)
from egosynth.config import REPO_ROOT, load_scene
from egosynth.motion.floorplan import FloorPlan
from egosynth.scenes.capture import (
    Capture,
    CaptureSettings,
    read_capture,
    sample_views,
    write_capture,
)

ROOM_1 = REPO_ROOT / "scene_configs" / "scenes" / "room_1.yaml"
SETTINGS = CaptureSettings(n_views=24, width=96, height=72, seed=3)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    out = tmp_path_factory.mktemp("capture")
    write_capture(load_scene(ROOM_1), out, SETTINGS)
    return read_capture(out)


def test_capture_files_and_intrinsics(capture: Capture) -> None:
    meta = json.loads((capture.root / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and len(meta["frames"]) == SETTINGS.n_views
    assert (meta["w"], meta["h"]) == (96, 72)
    assert meta["fl_x"] == pytest.approx(48.0) and meta["cx"] == pytest.approx(48.0)  # 90° hfov
    for fr in meta["frames"]:
        assert iio.imread(capture.root / fr["file_path"]).shape == (72, 96, 3)
        assert iio.imread(capture.root / fr["depth_file_path"]).dtype == np.uint16
        assert iio.imread(capture.root / fr["instance_file_path"]).dtype == np.uint16
        assert iio.imread(capture.root / fr["part_file_path"]).dtype == np.uint8
    scene = load_scene(capture.root / "scene.yaml")  # annotations travel with the capture
    assert scene.name == "room_1"
    labels = json.loads((capture.root / "labels.json").read_text())
    assert [lab["name"] for lab in labels] == [o.name for o in scene.objects]


def test_written_poses_are_opengl_of_the_sampled_views(capture: Capture) -> None:
    c2w, K = sample_views(load_scene(ROOM_1), SETTINGS)
    meta = json.loads((capture.root / "transforms.json").read_text())
    gl = np.array([f["transform_matrix"] for f in meta["frames"]])
    np.testing.assert_allclose(gl, opencv_to_opengl(c2w), atol=1e-8)
    np.testing.assert_allclose(capture.cam_to_world, c2w, atol=1e-8)
    np.testing.assert_allclose(capture.K, K)


def test_views_spread_over_walkable_floor_at_eye_heights() -> None:
    scene = load_scene(ROOM_1)
    s = replace(SETTINGS, n_views=60)
    c2w, _ = sample_views(scene, s)
    eyes = c2w[:, :3, 3]
    assert np.all((eyes[:, 2] >= 0.8) & (eyes[:, 2] <= 1.6))
    plan = FloorPlan(scene.floor, [o.polygon for o in scene.obstacles], clearance=0.0)
    assert plan.walkable(eyes[:, :2]).all()
    assert np.all(plan.distance_to_blocked(eyes[:, :2]) >= s.clearance_m - 1e-6)
    # coverage: every point of a 0.5 m grid over the region walkers use has a view within 1.2 m
    walkers = FloorPlan(scene.floor, [o.polygon for o in scene.obstacles], s.clearance_m)
    x1, y1 = np.max(scene.floor, axis=0)
    grid = np.stack(np.meshgrid(np.arange(0.25, x1, 0.5), np.arange(0.25, y1, 0.5)), -1)
    grid = grid.reshape(-1, 2)
    grid = grid[shapely.contains_xy(walkers.plan_region, grid[:, 0], grid[:, 1])]
    nearest = np.min(np.linalg.norm(grid[:, None] - eyes[None, :, :2], axis=-1), axis=1)
    assert len(grid) > 10 and np.all(nearest < 1.2)
    # looking around: view directions cover all compass quadrants
    fwd = c2w[:, :3, 2]
    quadrant = (np.arctan2(fwd[:, 1], fwd[:, 0]) // (np.pi / 2)).astype(int)
    assert len(set(quadrant)) == 4


def _bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0, w - 1.001)
    y = np.clip(uv[:, 1] - 0.5, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    im = img.astype(float).reshape(h, w, -1)
    top = im[y0, x0] * (1 - fx) + im[y0, x0 + 1] * fx
    bot = im[y0 + 1, x0] * (1 - fx) + im[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _warp(cap: Capture, a: int, b: int, T_b: np.ndarray) -> tuple[float, float, int]:
    """Warp view a into view b with a's depth: (geometric agreement, colour error, n)."""
    w, h = cap.width, cap.height
    uv = pixel_centers(w, h).reshape(-1, 2)
    da = cap.depth(a).reshape(-1)
    pts = unproject(uv[da > 0], da[da > 0], cap.K, cap.cam_to_world[a])
    rgb_a = cap.rgb(a).reshape(-1, 3)[da > 0].astype(float)
    uvb, zb = project(pts, cap.K, T_b)
    inb = (zb > 0.1) & np.all((uvb >= 1) & (uvb < np.array([w, h]) - 1), axis=1)
    if inb.sum() < 200:
        return 0.0, np.inf, int(inb.sum())
    db = _bilinear(cap.depth(b), uvb[inb])[:, 0]
    agree = np.abs(db - zb[inb]) < 0.02 * zb[inb] + 0.01  # visible in b, not occluded
    err = np.abs(_bilinear(cap.rgb(b), uvb[inb][agree]) - rgb_a[inb][agree]).mean(axis=1)
    return float(agree.mean()), float(np.median(err)), int(inb.sum())


def test_photo_consistency_of_warped_views(capture: Capture) -> None:
    n = len(capture.frames)
    pairs = []  # (a, b, geometric agreement, colour error) of overlapping views
    for a in range(n):
        for b in range(n):
            if a != b:
                agree, err, count = _warp(capture, a, b, capture.cam_to_world[b])
                if count >= 1500 and agree > 0.5:
                    pairs.append((a, b, agree, err))
    assert len(pairs) >= 10, "capture views should overlap"
    agree = np.array([p[2] for p in pairs])
    err = np.array([p[3] for p in pairs])
    # re-projected points land on the surface view b sees there, with the same colour
    assert np.max(agree) > 0.99 and np.median(agree) > 0.7  # below 1: occlusions
    assert np.median(err) < 3.0  # of 255; the rest is bilinear resampling of textures
    # a pose off by 2 degrees of yaw breaks it: the test can fail
    a, b = pairs[int(np.argmax(agree))][:2]
    T = capture.cam_to_world[b].copy()
    c, s = np.cos(np.radians(2.0)), np.sin(np.radians(2.0))
    T[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ T[:3, :3]
    good = _warp(capture, a, b, capture.cam_to_world[b])
    bad = _warp(capture, a, b, T)
    assert bad[1] > good[1] + 3.0 or bad[0] < good[0] - 0.2, (good, bad)


def test_close_views_warp_almost_exactly(tmp_path: Path) -> None:
    # two hand-placed eyes 20 cm apart looking at the same object: a strict consistency check
    from egosynth.render.mesh import MeshRenderer

    scene = load_scene(ROOM_1)
    target = np.array(scene.objects[0].center)
    eye = target + np.array([1.5, 0.0, 1.0])
    plan = FloorPlan(scene.floor, [o.polygon for o in scene.obstacles], 0.2)
    if not plan.walkable(eye[None, :2])[0]:
        eye = target + np.array([-1.5, 0.0, 1.0])
    T = np.stack([look_at(eye, target), look_at(eye + np.array([0.0, 0.2, 0.05]), target)])
    w, h = SETTINGS.width, SETTINGS.height
    K = intrinsics_from_fov(w, h, 90.0)
    fr = MeshRenderer.from_scene(scene).render(T, K, w, h)
    (tmp_path / "images").mkdir()
    (tmp_path / "depth").mkdir()
    frames = []
    for i in range(2):
        iio.imwrite(tmp_path / "images" / f"{i}.png", fr.rgb[i])
        mm = np.round(fr.depth[i] * 1000).astype(np.uint16)
        iio.imwrite(tmp_path / "depth" / f"{i}.png", mm)
        frames.append({"file_path": f"images/{i}.png", "depth_file_path": f"depth/{i}.png"})
    agree, err, count = _warp(Capture(T, K, w, h, tmp_path, frames), 0, 1, T[1])
    assert count > 3000 and agree > 0.9 and err < 4.0


@pytest.mark.nerf
def test_nerfstudio_dataparser_loads_the_capture(capture: Capture) -> None:
    import torch
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    parser = NerfstudioDataParserConfig(data=capture.root, eval_mode="all").setup()
    out = parser.get_dataparser_outputs("train")
    assert len(out.image_filenames) == SETTINGS.n_views
    assert [Path(p).name for p in out.image_filenames] == [
        Path(f["file_path"]).name for f in capture.frames
    ]
    cams = out.cameras
    assert torch.allclose(cams.fx.flatten(), torch.tensor(float(capture.K[0, 0])))
    assert int(cams.width[0]) == 96 and int(cams.height[0]) == 72
    assert len(out.metadata["depth_filenames"]) == SETTINGS.n_views
    # nerfstudio's poses are ours (OpenGL) after its own orient/centre/scale transform
    gl = torch.tensor(opencv_to_opengl(capture.cam_to_world), dtype=torch.float32)
    M = out.dataparser_transform  # (3, 4)
    expect_R = M[:, :3] @ gl[:, :3, :3]
    expect_t = (gl[:, :3, 3] @ M[:, :3].T + M[:, 3]) * out.dataparser_scale
    torch.testing.assert_close(cams.camera_to_worlds[:, :3, :3], expect_R, atol=1e-4, rtol=0)
    torch.testing.assert_close(cams.camera_to_worlds[:, :3, 3], expect_t, atol=1e-4, rtol=0)


def test_cli_capture_and_preview(tmp_path: Path) -> None:
    from egosynth.cli import main

    out = tmp_path / "cap"
    args = ["scenes", "capture", str(ROOM_1), "--out", str(out), "--views", "3"]
    assert main([*args, "--size", "32", "24", "--no-masks"]) == 0
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == 3 and not (out / "instance").exists()
    png = tmp_path / "sheet.png"
    assert (
        main(
            [
                "scenes",
                "preview",
                str(ROOM_1),
                "--out",
                str(png),
                "--views",
                "2",
                "--size",
                "40",
                "30",
            ]
        )
        == 0
    )
    assert iio.imread(png).shape == (2 * 30, 4 * 40, 3)  # rows: views; rgb|depth|inst|part


def test_same_seed_same_capture_bytes(tmp_path: Path) -> None:
    s = replace(SETTINGS, n_views=3, width=32, height=24)
    scene = load_scene(ROOM_1)
    for name in ("a", "b"):
        write_capture(scene, tmp_path / name, s)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 3 * 4 + 3  # 4 images per view + transforms, labels, scene
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
