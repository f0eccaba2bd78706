"""Mesh backend speed: rays/s for a 256x256 stereo frame with rgb, depth, instance and part ids.

Measured side by side in one run: Embree's first-hit query alone, the query plus the exact
float64 depth, and the full frame (plus textures and shading). Prints rays/s and the ratio of
each stage to Embree alone.

    .venv/bin/python benchmarks/bench_mesh.py [--scene scene_configs/scenes/room_0.yaml]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from egosynth.camera import camera_rays, intrinsics_from_fov, look_at
from egosynth.config import REPO_ROOT, load_scene
from egosynth.render.mesh import MeshRenderer


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` runs (the least disturbed by other load on the machine)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scene", type=Path, default=REPO_ROOT / "scene_configs/scenes/room_0.yaml")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    scene = load_scene(args.scene)
    r = MeshRenderer.from_scene(scene)
    w = h = args.size
    K = intrinsics_from_fov(w, h, 90.0)
    target = np.array(scene.objects[0].center)
    x0, y0 = np.min(scene.floor, axis=0)
    x1, y1 = np.max(scene.floor, axis=0)
    head = np.array([(x0 + x1) / 2, (y0 + y1) / 2, 1.6])
    T = look_at(head, target)
    eyes = np.stack([T, T])
    eyes[0, :3, 3] -= 0.0315 * T[:3, 0]  # adult IPD 63 mm along the camera x axis
    eyes[1, :3, 3] += 0.0315 * T[:3, 0]
    n_rays = 2 * w * h

    d = np.concatenate([camera_rays(K, w, h).reshape(-1, 3) @ e[:3, :3].T for e in eyes])
    o = np.repeat(eyes[:, :3, 3], w * h, axis=0)
    r.render(eyes, K, w, h)  # warm up: builds the Embree BVH

    t_embree = _best(lambda: r._intersector.intersects_first(o, d), args.repeats)
    t_cast = _best(lambda: r.cast(o, d), args.repeats)
    t_full = _best(lambda: r.render(eyes, K, w, h), args.repeats)

    print(f"scene {scene.name}: {r.mesh.n_faces} triangles, {len(r.mesh.materials)} materials")
    print(f"stereo frame {w}x{h} x 2 eyes = {n_rays} rays, best of {args.repeats}")
    print(f"{'stage':<36}{'ms':>9}{'M rays/s':>11}{'x embree':>10}")
    for name, t in (
        ("embree first hit (float32)", t_embree),
        ("+ exact float64 depth", t_cast),
        ("full frame: rgb, depth, ids", t_full),
    ):
        print(f"{name:<36}{t * 1e3:>9.1f}{n_rays / t / 1e6:>11.2f}{t / t_embree:>10.2f}")


if __name__ == "__main__":
    main()
