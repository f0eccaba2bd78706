"""The memcpy case egosynth/buffers.py avoids: copy time against dst - src modulo 4096.

Copies 8 frames of 96 KiB (a 128x128 stereo rgb frame each) from a page-aligned source into a
destination placed `d` bytes past a page boundary, for several d, alternating the offsets
`--repeat` times and keeping the best. On this project's AMD EPYC (ERMS/FSRM) glibc's memcpy
is several times slower for d = 1..31; page-aligned destinations (d = 0) and sources a few
bytes later (d = 4096 - 4k, what a shard's later frames give) are fast.

    .venv/bin/python benchmarks/bench_memcpy.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from egosynth.buffers import PAGE, empty_aligned

FRAME = 2 * 128 * 128 * 3
OFFSETS = (0, 4, 8, 16, 24, 31, 32, 64, 4068, 4092)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    src = empty_aligned((8, FRAME), np.uint8)
    src[...] = np.arange(FRAME, dtype=np.uint8)
    room = empty_aligned((8 * FRAME + 2 * PAGE,), np.uint8)
    best = dict.fromkeys(OFFSETS, float("inf"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for _ in range(a.repeat):
        for d in OFFSETS:
            dst = room[d : d + 8 * FRAME].reshape(8, FRAME)
            for i in range(8):  # warm
                dst[i] = src[i]
            t0 = time.perf_counter()
            for _ in range(50):
                for i in range(8):  # frame by frame, as the shard reader copies them
                    dst[i] = src[i]
            best[d] = min(best[d], (time.perf_counter() - t0) / 50 * 1e6)
    print(f"{'dst - src mod 4096':>20} {'8 frames (us)':>14}")
    for d, us in best.items():
        print(f"{d:>20} {us:>14.1f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
