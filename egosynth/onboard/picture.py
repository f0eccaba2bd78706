"""What onboarding inferred, shown: a top-down map and capture views with the lifted masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import pixel_centers, unproject
from egosynth.onboard.lift import MaskView
from egosynth.onboard.pipeline import Onboarded


def _colours(n: int) -> NDArray[np.uint8]:
    rng = np.random.default_rng(3)
    lut = rng.integers(60, 255, size=(max(n, 1) + 1, 3)).astype(np.uint8)
    lut[0] = 0
    return lut


def top_down(result: Onboarded, cam_xy: NDArray, path: Path) -> Path:
    """Floor polygon, obstacles, lifted objects (occupancy seen from above), cameras."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon as MplPolygon

    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    pw = result.points_world
    if pw is not None:
        sel = (pw[:, 2] > 0.06) & (pw[:, 2] < 1.8)
        ax.scatter(pw[sel, 0], pw[sel, 1], s=0.2, c="0.75", lw=0, label="NeRF surface, body height")
    ax.add_patch(MplPolygon(result.floor.floor, closed=True, fc="#dff0d8", ec="g", lw=1.2,
                            label="floor"))  # fmt: skip
    for i, (poly, _height) in enumerate(result.floor.obstacles):
        ax.add_patch(MplPolygon(poly, closed=True, fc="#f2b8b8", ec="r", lw=0.8,
                                label="obstacles" if i == 0 else None))  # fmt: skip
    lut = _colours(len(result.masks.objects)) / 255.0
    for k, g in enumerate(result.masks.objects, start=1):
        ijk = np.argwhere(g.occupancy)
        xy = g.origin[:2] + (ijk[:, :2] + 0.5) * result.masks.voxel
        ax.scatter(xy[:, 0], xy[:, 1], s=1.0, color=lut[k], lw=0)
        obj = result.objects[k - 1]
        ax.annotate(f"{obj.name} ({obj.category})", obj.center[:2], fontsize=7, ha="center")
    ax.scatter(cam_xy[:, 0], cam_xy[:, 1], s=4, c="b", marker="^", label="capture cameras")
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(f"{result.report['name']}: onboarded floor, obstacles and objects")
    ax.legend(loc="upper right", fontsize=6, markerscale=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def overlay(rgb: NDArray[np.uint8], ids: NDArray, lut: NDArray[np.uint8]) -> NDArray[np.uint8]:
    out = rgb.astype(np.float32)
    m = ids > 0
    out[m] = 0.45 * out[m] + 0.55 * lut[np.minimum(ids[m], len(lut) - 1)]
    return out.astype(np.uint8)


def mask_views_picture(
    result: Onboarded,
    views: list[MaskView],
    rgbs: list[NDArray[np.uint8]],
    user_to_object: dict[int, int],
    path: Path,
) -> Path:
    """Rows: labelled views; columns: rgb | the user's mask | the lifted masks re-rendered.

    `user_to_object` maps the user's instance ids to 1-based positions in result.objects, so
    an object has one colour in both columns.
    """
    import imageio.v3 as iio

    lut = _colours(len(result.objects))
    remap = np.zeros(max(user_to_object, default=0) + 1, np.int64)
    for uid, k in user_to_object.items():
        remap[uid] = k
    rows = []
    for v, rgb in list(zip(views, rgbs, strict=True))[:4]:
        h, w = v.depth.shape
        pts = unproject(pixel_centers(w, h), v.depth, v.K, v.cam_to_world)
        surface = (v.depth > 0) & (pts[..., 2] >= 0.02)
        ids, _ = result.masks.label(pts, surface, result.objects)
        rows.append(
            np.concatenate(
                [
                    rgb,
                    overlay(rgb, remap[np.minimum(v.instance, len(remap) - 1)], lut),
                    overlay(rgb, ids, lut),
                ],
                1,
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.concatenate(rows, 0)
    zoom = max(1, 768 // img.shape[1])  # small captures: nearest-neighbour up to ~768 px wide
    iio.imwrite(path, img.repeat(zoom, 0).repeat(zoom, 1))
    return path
