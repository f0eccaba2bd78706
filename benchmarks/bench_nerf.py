"""Benchmark: egosynth's NeRF backend vs a loop over nerfstudio's own get_outputs_for_camera.

Same bundle, same cameras (held-out egocentric stereo views), one run. Prints rays/s of each,
their ratio (target >= 1.5) and the PSNR of one rgb output against the other (target >= 40 dB).
Runs on CUDA when present (`--device cuda` to insist), else CPU.

    .venv/bin/python benchmarks/bench_nerf.py [--bundle scene_bundles/room_0] [--frames 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle (default: first committed)")
    ap.add_argument("--frames", type=int, default=4, help="walker frames (x2 eyes)")
    ap.add_argument("--size", type=int, nargs=2, default=(128, 96), metavar=("W", "H"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import numpy as np
    import torch

    from egosynth.config import REPO_ROOT
    from egosynth.nerf.bundle import read_bundle
    from egosynth.nerf.check import egocentric_views, psnr
    from egosynth.render.nerf import NerfRenderer

    committed = sorted((REPO_ROOT / "scene_bundles").glob("*/bundle.json"))
    root = args.bundle or committed[0].parent
    bundle = read_bundle(root)
    w, h = args.size
    scene = bundle.ground_truth_scene()
    if scene is None:
        raise SystemExit(f"{root}: the benchmark needs a bundle with a procedural scene")
    c2w, K = egocentric_views(scene, args.frames, w, h)
    r = NerfRenderer(bundle, device=args.device)
    dev = r.device
    print(f"bundle {root.name}  device {dev}  threads {torch.get_num_threads()}  "
          f"{len(c2w)} views of {w}x{h}")  # fmt: skip

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    # Warm-up (allocator, kernels) on one small view for both paths.
    r.render_raw(c2w[:1], K, 16, 12)
    r.render_reference(c2w[:1], K, 16, 12)
    n_rays = len(c2w) * w * h
    t_ours, t_ref = [], []
    for _ in range(args.repeats):  # interleaved so both see the same machine load
        sync()
        t0 = time.perf_counter()
        ours = r.render_raw(c2w, K, w, h)
        sync()
        t_ours.append(time.perf_counter() - t0)
        sync()
        t0 = time.perf_counter()
        ref = r.render_reference(c2w, K, w, h)
        sync()
        t_ref.append(time.perf_counter() - t0)
    a, b = n_rays / min(t_ours), n_rays / min(t_ref)
    diff = np.abs(ours["distance"] - ref["distance"])
    d_rel = np.median(diff / np.maximum(ref["distance"], 1e-6))
    print(f"egosynth backend     {a:10.0f} rays/s  ({min(t_ours):.2f} s)")
    print(f"get_outputs_for_cam  {b:10.0f} rays/s  ({min(t_ref):.2f} s)")
    print(f"ratio                {a / b:10.2f}x   (target >= 1.5)")
    print(f"rgb PSNR ours vs ref {psnr(ours['rgb'], ref['rgb']):10.2f} dB (target >= 40)")
    print(f"depth median rel diff {d_rel:.2e}")


if __name__ == "__main__":
    main()
