"""Benchmark `egosynth render`: Ray scaling, store write overhead, bytes per frame, codecs.

Prints, measured side by side in one run on the demo scenes:
- stereo frames/s with 1 and 2 Ray workers, and their ratio (target >= 1.7x on 2 cores), with
  the CPU time the actors used (cores obtained) and the load average: on a shared machine the
  ratio says more about the others' load than about egosynth;
- store write time as a fraction of render time (target <= 5 %);
- bytes per stereo frame for each array, stored vs raw;
- Blosc lz4 vs zstd (level 5, byte shuffle) on the same rendered frames: write MB/s and size.

    .venv/bin/python benchmarks/bench_render.py [--clips 4] [--seconds 4] [--width 128 --height 96]

EGOSYNTH_STORE_FAST=0 writes every chunk through plain zarr instead of the store's fast path
(egosynth/store/_fast.py and the writer's array documents made once per layout): the two
runs' "store write time / render time" show what the fast writer buys.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def _autogroup() -> str:
    """Linux autogroup scheduling shares CPU per session, not per process: under load, more
    processes in one session do not get that session more CPU."""
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return "autogroup scheduling: unknown"
    return f"autogroup scheduling: {'on' if on else 'off'}"


class _ActorCpu:
    """When the actors were up and finished, and the CPU seconds they used in between."""

    def __init__(self) -> None:
        self.base: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self.up = self.last = 0.0

    @staticmethod
    def _cpu(pid: int) -> float | None:
        import psutil  # installed with ray

        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return None
        return t.user + t.system

    def start(self, infos: list[dict[str, Any]]) -> None:
        self.up = time.perf_counter()
        for info in infos:
            pid = int(info["pid"])
            self.base[pid] = self._cpu(pid) or 0.0

    def sample(self, stats: dict[str, Any]) -> None:
        self.last = time.perf_counter()
        pid = int(stats["pid"])
        cpu = self._cpu(pid)
        if cpu is not None:
            self.cpu[pid] = cpu - self.base.get(pid, 0.0)

    def total(self) -> float:
        return sum(self.cpu.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=4, help="clips per scene")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=2, help="alternating 1/2-worker runs")
    args = ap.parse_args()

    import ray

    from egosynth.config import DEFAULT_SCENE_SET, load_scene_set
    from egosynth.orchestration import render_set
    from egosynth.store import ARRAY_NAMES, IMAGE_ARRAYS, ClipStore, ClipWriter, prepare_store

    sset = load_scene_set(DEFAULT_SCENE_SET)
    res = sset.resolution.model_copy(update={"width": args.width, "height": args.height})
    sset = sset.model_copy(update={"clip_seconds": args.seconds, "resolution": res})
    tmp = Path(tempfile.mkdtemp(prefix="bench_render_"))
    from egosynth.store import _fast as fast_path  # EGOSYNTH_STORE_FAST=0: writes via zarr

    fast = "on" if fast_path.enabled() else "OFF"
    print(f"load average at start: {_load()}; store fast path {fast}")
    t0 = time.perf_counter()
    from egosynth.orchestration import init_local_ray

    init_local_ray(2, include_dashboard=False, logging_level="ERROR")
    print(f"ray.init: {time.perf_counter() - t0:.1f} s")
    runs: dict[int, list[tuple[Any, _ActorCpu]]] = {1: [], 2: []}
    try:
        for rep in range(args.repeat):  # alternate 1 and 2 workers: load drifts over minutes
            for workers in (1, 2):
                cpu = _ActorCpu()
                report = render_set(
                    sset,
                    tmp / f"w{workers}_{rep}.zarr",
                    clips_per_scene=args.clips,
                    workers=workers,
                    device="cpu",
                    progress=False,
                    on_start=cpu.start,
                    on_result=cpu.sample,
                )
                runs[workers].append((report, cpu))
    finally:
        ray.shutdown()

    print(f"load average at end: {_load()}; {_autogroup()}")
    n_clips = len(runs[1][0][0].done)
    print(
        f"\n{n_clips} clips x {sset.frames_per_clip} stereo frames, "
        f"{args.width}x{args.height}, demo scenes, best of {args.repeat} alternating runs"
    )
    fps, steady = {}, {}
    for w, rs in runs.items():
        r, cpu = max(rs, key=lambda rc: rc[0].frames / rc[0].seconds)
        fps[w] = r.frames / r.seconds
        busy = max(cpu.last - cpu.up, 1e-9)  # actors up -> last clip: no start, no scene wait
        steady[w] = max(rc[0].frames / max(rc[1].last - rc[1].up, 1e-9) for rc in rs)
        print(
            f"  {w} worker(s): {fps[w]:6.1f} stereo frames/s wall ({r.frames} frames in "
            f"{r.seconds:.2f} s incl. actor start); {steady[w]:6.1f} frames/s once the actors "
            f"were up; actors used {cpu.total():.1f} CPU s in {busy:.1f} s = "
            f"{cpu.total() / busy:.2f} cores, {1e3 * cpu.total() / r.frames:.0f} CPU ms/frame"
        )
    print(
        f"  speed-up 2 vs 1 workers: {fps[2] / fps[1]:.2f}x wall, {steady[2] / steady[1]:.2f}x "
        "once up  (target >= 1.7x; the cores the actors got show what the machine allowed)"
    )
    for w, rs in runs.items():
        write, render = sum(r.write_s for r, _ in rs), sum(r.render_s for r, _ in rs)
        print(
            f"  store write time / render time, {w} worker(s): {100 * write / render:.1f} %  "
            f"(write {write:.2f} s, render {render:.2f} s over {len(rs)} runs; target <= 5 %)"
        )

    store_path = tmp / "w1_0.zarr"
    store = ClipStore(store_path)
    frames = sum(store.clip(c).n_frames for c in store.clip_ids())
    print("\nbytes per stereo frame (stored, raw, ratio):")
    for name in ARRAY_NAMES:
        stored = sum(_dir_bytes(store_path / "clips" / c / name) for c in store.clip_ids())
        arr = store.clip(store.clip_ids()[0]).array(name)
        per_frame_raw = arr.nbytes / store.clip(store.clip_ids()[0]).n_frames
        print(
            f"  {name:15s} {stored / frames:10.0f} {per_frame_raw:10.0f} "
            f"{per_frame_raw / max(stored / frames, 1):6.1f}x"
        )
    total = _dir_bytes(store_path)
    print(f"  {'whole store':15s} {total / frames:10.0f}")

    # Codec comparison on the same real frames: write each clip's image arrays again.
    print("\ncodec on rendered frames (image arrays): write MB/s of raw data, stored bytes")
    clips = [store.clip(c).read(names=list(IMAGE_ARRAYS)) for c in store.clip_ids()]
    raw = sum(a.nbytes for c in clips for a in c.values())
    for cname in ("lz4", "zstd"):
        path = tmp / f"codec_{cname}.zarr"
        prepare_store(path, "bench", {})
        t = 0.0
        for i, c in enumerate(clips):
            w = ClipWriter(path, f"c{i}", len(c["rgb"]), args.height, args.width, {}, cname=cname)
            t1 = time.perf_counter()
            for s in range(0, len(c["rgb"]), w.chunk_frames):
                w.write_frames(s, {k: v[s : s + w.chunk_frames] for k, v in c.items()})
            t += time.perf_counter() - t1
        stored = sum(
            _dir_bytes(path / "clips" / f"c{i}" / n)
            for i in range(len(clips))
            for n in IMAGE_ARRAYS
        )
        print(
            f"  blosc {cname:5s}: {raw / t / 1e6:7.1f} MB/s, {stored / 1e6:6.2f} MB "
            f"(raw {raw / 1e6:.2f} MB, {raw / stored:.1f}x)"
        )
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
