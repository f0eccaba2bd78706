"""Fault survival of `egosynth render`, measured: nothing lost, nothing silently wrong.

Renders a small set (the demo's mesh scenes, a few short clips of 64x48) once without faults,
single-process (the reference), then, on one local Ray cluster:

- `--kills` times (default 20): a render into a fresh store (`orchestration.render_set`, 2
  workers) whose worker is SIGKILLed at a random point of the run (uniform over an
  uninterrupted run's duration, from the moment the workers are up); the run carries on (Ray
  restarts the actor, the driver requeues the clip), and is rerun to completion if any clip
  failed;
- `--interrupts` times (default 10): `egosynth render` (the CLI, a process of its own)
  SIGINTed at a random point after it prepared the store, which must exit 130 with the root
  `store_status` "interrupted"; then `egosynth render` again, to completion.

Every run's store is then compared with the reference: the same clip ids, every array of every
clip byte-identical (read with plain zarr), every clip file byte-identical, and
`ClipStore.validate()` clean. A fault that did not land (the run finished first) is tried
again with another random point. Prints `N/N identical` per kind.

    .venv/bin/python benchmarks/fault_survival.py [--kills 20] [--interrupts 10] [--seed 0]
        [--address HOST:PORT]   # a running cluster (2 CPUs); else one is started here
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _scene_set(folder: Path, args: argparse.Namespace) -> Path:
    """A small set of the demo's (mesh) scenes, as a YAML file in `folder`."""
    import yaml

    from egosynth.config import DEFAULT_SCENE_SET, load_scene_set

    demo = load_scene_set(DEFAULT_SCENE_SET)
    data = {
        "name": "fault-survival",
        "scenes": [str(s.source) for s in demo.scene_configs],
        "clips_per_scene": args.clips,
        "clip_seconds": args.seconds,
        "fps": 10,
        "resolution": [args.width, args.height],
        "rig": "adult",
        "motion": "adult",
        "seed": 5,
        "output": str(folder / "unused.zarr"),
    }
    path = folder / "set.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _digest(store: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(clip/array -> sha256 of its bytes as plain zarr reads them, clip file -> sha256)."""
    import numpy as np
    import zarr

    from egosynth.store import ARRAY_NAMES, ClipStore

    arrays = {}
    root = zarr.open_group(str(store), mode="r", use_consolidated=False)
    for cid in ClipStore(store).clip_ids():
        for name in ARRAY_NAMES:
            data = np.ascontiguousarray(root[f"clips/{cid}/{name}"][...])
            arrays[f"{cid}/{name}"] = hashlib.sha256(data.tobytes()).hexdigest()
    files = {
        str(f.relative_to(store)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted((store / "clips").rglob("*"))
        if f.is_file()
    }
    return arrays, files


def _compare(store: Path, ref: tuple[dict[str, str], dict[str, str]]) -> str | None:
    """None when `store` equals the reference, else what differs (one line)."""
    from egosynth.store import ClipStore

    problems = ClipStore(store).validate()
    if problems:
        return f"validate: {problems[0]} (+{len(problems) - 1} more)"
    arrays, files = _digest(store)
    if sorted(arrays) != sorted(ref[0]):
        return f"clips/arrays differ: {sorted(set(arrays) ^ set(ref[0]))[:3]}"
    bad = [k for k in arrays if arrays[k] != ref[0][k]]
    if bad:
        return f"{len(bad)} arrays differ, e.g. {bad[0]}"
    bad = sorted(set(files) ^ set(ref[1])) + [k for k in files if files.get(k) != ref[1].get(k)]
    if bad:
        return f"{len(bad)} clip files differ, e.g. {bad[0]}"
    return None


def _status(store: Path) -> str | None:
    try:
        return json.loads((store / "zarr.json").read_text())["attributes"]["store_status"]
    except (OSError, ValueError, KeyError):
        return None


def _kill_trials(sset: Any, work: Path, ref: Any, args: argparse.Namespace, rng: random.Random):
    from egosynth.orchestration import render_set

    # An uninterrupted run first: the span over which the kills are spread.
    t: dict[str, float] = {}
    render_set(
        sset,
        work / "timing.zarr",
        workers=2,
        device="cpu",
        progress=False,
        on_start=lambda infos: t.setdefault("up", time.monotonic()),
    )
    span = time.monotonic() - t["up"]
    print(f"uninterrupted distributed run: {span:.1f} s after the workers are up", flush=True)
    identical, restarts, tries = 0, 0, 0
    for trial in range(args.kills):
        for attempt in range(10):  # until a kill lands before the run ends
            tries += 1
            out = work / f"kill{trial}-{attempt}.zarr"
            delay = rng.uniform(0.0, span)
            victim: dict[str, Any] = {}

            def kill(infos: list[dict[str, Any]], delay: float = delay, victim=victim) -> None:
                victim["pid"] = rng.choice(infos)["pid"]
                victim["timer"] = threading.Timer(delay, _sigkill, (victim,))
                victim["timer"].start()

            try:
                rep = render_set(sset, out, workers=2, device="cpu", progress=False, on_start=kill)
            finally:  # never signal a pid after its run: it may be another process by then
                if "timer" in victim:
                    victim["timer"].cancel()
            if rep.actor_restarts == 0:  # the run ended before the kill: another point
                shutil.rmtree(out)
                continue
            restarts += rep.actor_restarts
            reruns = 0
            while not rep.ok and reruns < 3:  # a clip out of attempts: run again
                reruns += 1
                rep = render_set(sset, out, workers=2, device="cpu", progress=False)
            diff = _compare(out, ref)
            identical += diff is None
            print(
                f"  kill {trial + 1:2d}: pid {victim.get('pid')} at {delay:.2f} s, "
                f"{rep.retries} retries, {reruns} reruns: {diff or 'identical'}",
                flush=True,
            )
            shutil.rmtree(out)
            break
        else:
            print(f"  kill {trial + 1:2d}: never landed in 10 tries", flush=True)
    return identical, restarts, tries


def _sigkill(victim: dict[str, Any]) -> None:
    try:
        os.kill(victim["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cli(set_path: Path, out: Path, address: str) -> list[str]:
    return [
        sys.executable, "-m", "egosynth.cli", "render", str(set_path), "--out", str(out),
        "--workers", "2", "--device", "cpu", "--address", address, "--no-progress",
    ]  # fmt: skip


def _wait_prepared(out: Path, proc: subprocess.Popen, timeout: float = 120) -> float | None:
    """When the CLI run `proc` has written the root as "rendering" (monotonic), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _status(out) == "rendering":
            return time.monotonic()
        time.sleep(0.01)
    return None


def _interrupt_trials(set_path: Path, work: Path, ref: Any, address: str, args, rng):
    # An uninterrupted CLI run: the span (after the store is prepared) for the interrupts.
    out = work / "cli-timing.zarr"
    proc = subprocess.Popen(_cli(set_path, out, address), cwd=REPO, stdout=subprocess.DEVNULL)
    t0 = _wait_prepared(out, proc)
    proc.wait()
    span = time.monotonic() - (t0 or time.monotonic())
    print(f"uninterrupted CLI run: {span:.1f} s after the store is prepared", flush=True)
    identical, marked, tries = 0, 0, 0
    for trial in range(args.interrupts):
        for attempt in range(10):
            tries += 1
            out = work / f"int{trial}-{attempt}.zarr"
            delay = rng.uniform(0.0, span)
            proc = subprocess.Popen(
                _cli(set_path, out, address),
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if _wait_prepared(out, proc) is not None:
                time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            if proc.returncode == 0:  # finished before the signal: another point
                shutil.rmtree(out, ignore_errors=True)
                continue
            if proc.returncode != 130:
                print(f"  SIGINT {trial + 1:2d}: exit {proc.returncode}: {err.strip()[-300:]}")
            status = _status(out)
            marked += status == "interrupted"
            rerun = subprocess.run(
                _cli(set_path, out, address), cwd=REPO, capture_output=True, text=True
            )
            diff = (
                f"rerun exited {rerun.returncode}: {rerun.stderr.strip()[-200:]}"
                if rerun.returncode
                else _compare(out, ref)
            )
            identical += diff is None
            print(
                f"  SIGINT {trial + 1:2d}: at {delay:.2f} s, store_status after it "
                f"{status!r}, rerun: {diff or 'identical'}",
                flush=True,
            )
            shutil.rmtree(out)
            break
        else:
            print(f"  SIGINT {trial + 1:2d}: never landed in 10 tries", flush=True)
    return identical, marked, tries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="worker SIGKILL trials")
    p.add_argument("--interrupts", type=int, default=10, help="driver SIGINT trials")
    p.add_argument("--clips", type=int, default=2, help="clips per scene")
    p.add_argument("--seconds", type=float, default=2.0, help="clip length")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=48)
    p.add_argument("--seed", type=int, default=0, help="seed of the random fault points")
    p.add_argument(
        "--address", default=None, help="a running Ray cluster to use (default: start one here)"
    )
    args = p.parse_args()

    import ray

    from egosynth.config import load_scene_set
    from egosynth.plan import plan_clips
    from egosynth.render_clip import render_set

    rng = random.Random(args.seed)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="fault-survival-"))
    try:
        set_path = _scene_set(work, args)
        sset = load_scene_set(set_path)
        n = len(plan_clips(sset))
        ref = _digest(render_set(sset, work / "ref.zarr"))
        print(
            f"set: {n} clips of {args.seconds:g} s at {args.width}x{args.height} "
            f"({len(sset.scene_configs)} mesh scenes), reference rendered single-process",
            flush=True,
        )
        from egosynth.orchestration import init_local_ray

        if args.address:
            ray.init(address=args.address, logging_level="ERROR")
        else:
            init_local_ray(2, include_dashboard=False, logging_level="ERROR")
        address = ray.get_runtime_context().gcs_address
        kills = _kill_trials(sset, work, ref, args, rng) if args.kills else (0, 0, 0)
        ints = (
            _interrupt_trials(set_path, work, ref, address, args, rng)
            if args.interrupts
            else (0, 0, 0)
        )
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    print(f"\n{time.strftime('%Y-%m-%d')}, {minutes:.1f} min, load {os.getloadavg()[0]:.1f}:")
    print(
        f"worker SIGKILL: {kills[0]}/{args.kills} identical "
        f"({kills[1]} worker restarts, {kills[2]} runs to land {args.kills} kills)"
    )
    print(
        f"driver SIGINT: {ints[0]}/{args.interrupts} identical after a rerun "
        f"(store_status 'interrupted' after {ints[1]}/{args.interrupts}; {ints[2]} runs to land "
        f"{args.interrupts} interrupts)"
    )


if __name__ == "__main__":
    main()
