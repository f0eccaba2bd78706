"""A tiny analytic scene written as a nerfstudio capture, for tests and smoke runs.

A red ball (radius 0.5 m, centre (0, 0, 0.5)) standing on a checkered floor (z = 0), seen by
cameras on a ring looking at it. Ray casting is analytic (numpy only), so the ground truth is
exact and the capture takes milliseconds. Poses are written in nerfstudio's OpenGL axes,
depth as z-depth in millimetres (16-bit PNG), the format `egosynth scenes capture` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import camera_rays, intrinsics_from_fov, look_at, opencv_to_opengl

BALL_CENTER = np.array([0.0, 0.0, 0.5])
BALL_RADIUS = 0.5
BALL_RGB = np.array([0.85, 0.15, 0.1])


def ring_poses(n: int, radius: float = 2.5, height: float = 1.2) -> NDArray[np.float64]:
    """OpenCV camera-to-world poses on a ring, all looking at the ball."""
    angles = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    eyes = np.stack([radius * np.cos(angles), radius * np.sin(angles), np.full(n, height)], -1)
    return np.stack([look_at(e, BALL_CENTER) for e in eyes])


def render_analytic(
    c2w: NDArray[np.float64], K: NDArray[np.float64], width: int, height: int
) -> tuple[NDArray[np.uint8], NDArray[np.float64], NDArray[np.bool_]]:
    """rgb (H,W,3) uint8, z-depth (H,W) metres (0 = sky) and ball mask for one OpenCV camera."""
    d_cam = camera_rays(K, width, height)  # unit z, so t along it is z-depth
    d = d_cam @ c2w[:3, :3].T
    o = c2w[:3, 3]
    # Ball: |o + t d - c|^2 = r^2
    oc = o - BALL_CENTER
    a = np.sum(d * d, -1)
    b = 2 * d @ oc
    c = oc @ oc - BALL_RADIUS**2
    disc = b * b - 4 * a * c
    t_ball = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    t_ball = np.where(t_ball > 0, t_ball, np.inf)
    # Floor z = 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d[..., 2] < 0, -o[2] / d[..., 2], np.inf)
    t = np.minimum(t_ball, t_floor)
    hit_ball = t_ball <= t_floor
    p = o + d * np.where(np.isfinite(t), t, 0.0)[..., None]
    checker = (np.floor(p[..., 0] * 2) + np.floor(p[..., 1] * 2)) % 2
    floor_rgb = np.where(checker[..., None] > 0, 0.8, 0.3) * np.ones(3)
    rgb = np.where(hit_ball[..., None], BALL_RGB, floor_rgb)
    sky = ~np.isfinite(t)
    rgb[sky] = (0.6, 0.7, 0.9)
    depth = np.where(sky, 0.0, t)
    return (rgb * 255).round().astype(np.uint8), depth, hit_ball & ~sky


def write_capture(folder: str | Path, n_views: int = 12, size: int = 32) -> Path:
    """Write a nerfstudio-format capture (transforms.json, images/, depth/) into `folder`."""
    import imageio.v3 as iio

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(exist_ok=True)
    K = intrinsics_from_fov(size, size, 60.0)
    frames = []
    for i, c2w in enumerate(ring_poses(n_views)):
        rgb, depth, _ = render_analytic(c2w, K, size, size)
        iio.imwrite(folder / "images" / f"frame_{i:04d}.png", rgb)
        iio.imwrite(
            folder / "depth" / f"frame_{i:04d}.png", np.round(depth * 1000).astype(np.uint16)
        )
        frames.append(
            {
                "file_path": f"images/frame_{i:04d}.png",
                "depth_file_path": f"depth/frame_{i:04d}.png",
                "transform_matrix": opencv_to_opengl(c2w).tolist(),
            }
        )
    meta = {
        "camera_model": "OPENCV",
        "fl_x": K[0, 0],
        "fl_y": K[1, 1],
        "cx": K[0, 2],
        "cy": K[1, 2],
        "w": size,
        "h": size,
        "frames": frames,
    }
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    return folder


# A deliberately tiny nerfacto for tests: a few seconds of fitting on a 2-core CPU.
TINY_SETTINGS = {
    "log2_hashmap_size": 12,
    "num_levels": 4,
    "max_res": 256,
    "hidden_dim": 16,
    "hidden_dim_color": 16,
    "num_proposal_samples_per_ray": [16, 8],
    "num_nerf_samples_per_ray": 8,
    "proposal_net_args_list": [
        {
            "hidden_dim": 8,
            "log2_hashmap_size": 10,
            "num_levels": 3,
            "max_res": 64,
            "use_linear": False,
        },
    ]
    * 2,
    "appearance_embed_dim": 4,
}


def tiny_fit(base: str | Path, iterations: int = 12) -> tuple[Path, Path]:
    """Capture the analytic scene and fit a tiny nerfacto on it under `base` (memoised on disk).

    Returns (capture folder, nerfstudio output dir). Several test modules share one fit per
    pytest session by passing the same session base folder.
    """
    from egosynth.nerf.fit import fit_capture

    base = Path(base)
    capture, runs = base / "capture", base / "runs"
    done = base / "fit.done"
    if not done.exists():
        write_capture(capture, n_views=8, size=32)
        fit_capture(capture, runs, iterations=iterations, overrides=TINY_SETTINGS, progress=False)
        done.write_text("ok\n")
    return capture, runs
