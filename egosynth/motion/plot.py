"""Top-down maps of trajectories: floor, obstacles, objects, paths and gaze rays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from egosynth.config import SceneConfig
from egosynth.motion.trajectory import Trajectory


def plot_scene_trajectories(
    scene: SceneConfig, trajs: list[Trajectory], out: Path, clearance: float = 0.25
) -> None:
    """Write a PNG map of `trajs` in `scene`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon as MplPolygon

    fig, ax = plt.subplots(figsize=(7, 7), dpi=110)
    ax.add_patch(MplPolygon(scene.floor, closed=True, fc="#f2efe6", ec="k", lw=1.5))
    for o in scene.obstacles:
        ax.add_patch(MplPolygon(o.polygon, closed=True, fc="#9a8f80", ec="k", lw=0.8))
    for o in scene.objects:
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.array(o.extents[:2]) / 2
        R = o.world_from_box()[:2, :2]
        ax.add_patch(MplPolygon(corners @ R.T + o.center[:2], fc="#e07b39", ec="k", lw=0.6))
        ax.annotate(o.category, o.center[:2], fontsize=7, ha="center", va="center")
    colors = plt.cm.tab10(np.arange(len(trajs)) % 10)
    for c, tr in zip(colors, trajs, strict=True):
        xy = tr.head_to_world[:, :2, 3]
        ax.plot(xy[:, 0], xy[:, 1], "-", color=c, lw=1.6)
        ax.plot(*xy[0], "o", color=c, ms=6)
        step = max(1, len(tr) // 25)
        for i in range(0, len(tr), step):
            tip = tr.fixation_point[i, :2]
            ray = tip - xy[i]
            ray *= min(1.0, 0.8 / max(np.linalg.norm(ray), 1e-9))
            ls = "-" if tr.fixation_object[i] >= 0 else ":"
            ax.plot(
                [xy[i, 0], xy[i, 0] + ray[0]],
                [xy[i, 1], xy[i, 1] + ray[1]],
                ls,
                color=c,
                lw=0.7,
                alpha=0.8,
            )
    ax.set_aspect("equal")
    ax.autoscale_view()
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(f"{scene.name}: {len(trajs)} clip(s); o = start, solid rays = object fixations")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
