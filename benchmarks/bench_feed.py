"""Feeding a fast training step: the torch loader with no workers, with prefetch, with workers.

The same photo clips as bench_loader.py (8 clips x 128 stereo frames, 128x128, raw rgb); the
step is a small convolution over the first two frames of each window (one torch thread), so
reading is a large part of each step. Each arm runs its loader over 3 epochs after one warm
epoch and prints steps/s and the fraction of the time spent waiting for the next batch, then
streams 3 more epochs with no step (windows/s: the loader alone):

- 0 workers: WindowDataLoader reading in the training process between steps;
- 0 workers, prefetch 2: the same, reading two batches ahead in a thread;
- 2 workers: DataLoader worker processes (batches reach the trainer through new shared memory).

    .venv/bin/python benchmarks/bench_feed.py [--batch 16] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()

    import torch
    from bench_loader import build

    from egosynth.data.torch import WindowDataLoader, WindowIterableDataset

    torch.set_num_threads(1)
    conv = torch.nn.Conv2d(3, 16, 3, stride=2)

    def step(batch: dict) -> None:
        x = batch["rgb"][:, :2].flatten(0, 2).float().div_(255)
        with torch.no_grad():
            conv(x).mean().item()

    args = argparse.Namespace(clips=8, frames=128, height=128, width=128, chunk_frames=None,
                              clevel=5, rgb="raw", gop=16)  # fmt: skip
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        store, _, _ = build(Path(tmp), args)
        arms = {
            "0 workers": ({}, 0),
            "0 workers, prefetch 2": ({}, 2),
            "2 workers": ({"num_workers": 2, "persistent_workers": True}, 0),
        }
        print(f"{'loader':>22} {'steps/s':>9} {'data wait':>10} {'no step: w/s':>14}")
        for name, (kw, prefetch) in arms.items():
            ds = WindowIterableDataset(store, length=8, stride=4, batch_size=a.batch, seed=0,
                                       fields=("rgb",), prefetch=prefetch)  # fmt: skip
            loader = WindowDataLoader(ds, **kw)
            for batch in loader:  # warm: workers started, files mapped
                step(batch)
            wait = busy = 0.0
            n = 0
            for _ in range(a.epochs):
                t = time.perf_counter()
                for batch in loader:
                    t1 = time.perf_counter()
                    wait += t1 - t
                    step(batch)
                    t = time.perf_counter()
                    busy += t - t1
                    n += 1
            total = wait + busy
            t0 = time.perf_counter()  # the same loader with no step: how fast it streams
            windows = sum(len(batch["window"]) for _ in range(a.epochs) for batch in loader)
            alone = windows / (time.perf_counter() - t0)
            print(f"{name:>22} {n / total:>9.1f} {100 * wait / total:>9.1f}% {alone:>14.0f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
