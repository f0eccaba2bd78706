"""Distributed rendering on a real local Ray cluster with the real mesh backend.

ONE local cluster (conftest.py `ray_cluster`: 2 CPUs and a declared fake GPU). Clips are
tiny (32x24, 12 frames) so Ray's own overhead dominates; every store is compared file by file
with a single-process render of the same clips.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import _fake_renderer
import pytest
from _fake_renderer import tiny_set
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.cli import main
from egosynth.config import load_scene_set
from egosynth.errors import EgosynthError
from egosynth.plan import plan_clips
from egosynth.render_clip import render_set
from egosynth.store import ClipStore

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent


# Test-only renderer factories travel to the workers by value (tests/ is not a package).
ray.cloudpickle.register_pickle_by_value(_fake_renderer)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


def _reference(sset, path: Path, clips: int | None = None, chunk_frames: int | None = None):
    """The same clips rendered single-process, no Ray: what every distributed run must equal."""
    return render_set(sset, path, clips, chunk_frames)


def _assert_same_clips(a: Path, b: Path) -> None:
    fa, fb = _files(a / "clips"), _files(b / "clips")
    assert sorted(fa) == sorted(fb)
    diff = [k for k in fa if fa[k] != fb[k]]
    assert diff == []


def test_two_workers_render_demo_scenes_byte_equal_to_single_process(
    ray_cluster: str, tmp_path: Path
) -> None:
    from egosynth.orchestration import render_set

    sset = load_scene_set(tiny_set(tmp_path))  # the real default scenes, tiny frames
    seen: list[str] = []
    rep = render_set(
        sset,
        tmp_path / "ray.zarr",
        workers=2,
        device="cpu",
        progress=False,
        on_result=lambda r: seen.append(r["clip_id"]),
    )
    plans = plan_clips(sset)
    assert len(plans) == 2 * len(sset.scene_configs) >= 4
    assert rep.ok and rep.workers == 2 and rep.device == "cpu" and rep.frames == 12 * len(plans)
    assert sorted(seen) == sorted(p.clip_id for p in plans)  # each clip written exactly once
    store = ClipStore(tmp_path / "ray.zarr")
    assert store.validate() == [] and store.attrs["store_status"] == "complete"
    _assert_same_clips(tmp_path / "ray.zarr", _reference(sset, tmp_path / "ref.zarr"))


def test_sigkill_worker_mid_clip_is_replaced_and_clip_redone(
    ray_cluster: str, tmp_path: Path
) -> None:
    from egosynth.orchestration import render_set

    sset = load_scene_set(tiny_set(tmp_path, clips_per_scene=2))
    killed: list[int] = []

    def on_result(res: dict) -> None:
        # This worker was just handed its next clip (3 batches x 0.25 s): kill it mid-clip.
        if not killed:
            killed.append(res["pid"])
            threading.Timer(0.35, os.kill, (res["pid"], signal.SIGKILL)).start()

    rep = render_set(
        sset,
        tmp_path / "k.zarr",
        workers=2,
        device="cpu",
        chunk_frames=4,
        progress=False,
        renderer_factory=_fake_renderer.slow_real_factory,
        on_result=on_result,
    )
    assert killed and rep.ok, rep
    assert rep.actor_restarts == 1 and rep.retries == 1, rep.attempt_errors
    store = ClipStore(tmp_path / "k.zarr")
    assert store.validate() == []
    for cid in store.clip_ids():  # no frame missing or duplicated
        t = store.clip(cid).read(names=["time"])["time"]
        assert list(t) == [i / sset.fps for i in range(sset.frames_per_clip)]
    ref = _reference(sset, tmp_path / "ref.zarr", chunk_frames=4)
    _assert_same_clips(tmp_path / "k.zarr", ref)


def test_failing_clips_reported_while_the_rest_complete(ray_cluster: str, tmp_path: Path) -> None:
    from egosynth.orchestration import render_set

    sset = load_scene_set(tiny_set(tmp_path, clips_per_scene=1))
    bad = sset.scene_configs[-1].name
    rep = render_set(
        sset,
        tmp_path / "f.zarr",
        workers=2,
        device="cpu",
        max_attempts=2,
        progress=False,
        renderer_factory=_fake_renderer.failing_factory(bad),
    )
    assert (
        sorted(rep.failed) == [f"{bad}-0000"]
        and "RuntimeError: cannot render" in (rep.failed[f"{bad}-0000"])
    )
    assert rep.retries == 1 and len(rep.done) == len(sset.scene_configs) - 1
    store = ClipStore(tmp_path / "f.zarr")
    assert store.attrs["store_status"] == "incomplete" and f"{bad}-0000" not in store.clip_ids()


def test_gpu_actors_with_a_declared_fake_gpu(ray_cluster: str, tmp_path: Path) -> None:
    from egosynth.orchestration import render_set

    sset = load_scene_set(tiny_set(tmp_path, clips_per_scene=1))
    rep = render_set(
        sset,
        tmp_path / "g.zarr",
        device="auto",
        progress=False,
        renderer_factory=_fake_renderer.fake_factory,
    )
    # One actor per GPU, each holding its GPU (the cluster has 1 fake GPU and 2 CPUs).
    assert rep.device == "gpu" and rep.workers == 1 and rep.gpu_ids == [[0]] and rep.ok


@pytest.mark.parametrize(
    ("resources", "workers", "device", "want"),
    [
        ({"CPU": 8.0, "GPU": 2.0}, None, "auto", (2, "gpu")),
        ({"CPU": 8.0, "GPU": 2.0}, 5, "auto", (2, "gpu")),
        ({"CPU": 8.0, "GPU": 2.0}, 3, "cpu", (3, "cpu")),
        ({"CPU": 2.0}, None, "auto", (2, "cpu")),
        ({"CPU": 2.0}, 4, "cpu", (2, "cpu")),
    ],
)
def test_worker_plan(resources, workers, device, want) -> None:
    from egosynth.orchestration import worker_plan

    n, options, kind = worker_plan(resources, workers, device)
    assert (n, kind) == want
    assert options.get("num_gpus", 0) == (1 if kind == "gpu" else 0)


def test_gpu_request_without_gpus_is_an_error_not_a_hang() -> None:
    from egosynth.orchestration import worker_plan

    with pytest.raises(EgosynthError, match="no GPU"):
        worker_plan({"CPU": 2.0}, None, "gpu")


def test_cli_render_resume_and_bad_inputs(
    ray_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    set_path = tiny_set(tmp_path, clips_per_scene=1)
    out = tmp_path / "cli.zarr"
    args = ["render", str(set_path), "--out", str(out), "--workers", "2", "--no-progress"]
    assert main(args) == 0
    n = len(load_scene_set(set_path).scene_configs)
    assert f"{n} clips rendered, 0 already complete" in capsys.readouterr().out
    before = _files(out / "clips")
    assert main([*args, "--clips", "2"]) == 0  # more clips per scene extends the same store
    assert f"{n} clips rendered, {n} already complete" in capsys.readouterr().out
    assert main(args) == 0  # nothing left: Ray is not even needed
    assert f"all {n} clips already complete; nothing to render" in capsys.readouterr().out
    assert all(_files(out / "clips")[k] == v for k, v in before.items())
    # A different clip length is another config: refused in one line, nothing touched.
    whole = _files(out)
    assert main([*args, "--seconds", "0.8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cli.zarr: store was made from a different config" in err
    assert _files(out) == whole


def test_missing_scene_bundle_and_unwritable_output_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # No cluster needed: both are caught before Ray starts.
    missing = tiny_set(tmp_path, scenes=[str(tmp_path / "nope.yaml")])
    assert main(["render", str(missing), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.yaml" in err and "scene config not found" in err
    scene = tmp_path / "nerf_scene.yaml"
    scene.write_text(
        "name: nerfy\nbackend: nerf\nbundle: bundles/gone\n"
        "floor: [[0, 0], [4, 0], [4, 4], [0, 4]]\n"
    )
    (tmp_path / "sub").mkdir()
    set_path = tiny_set(tmp_path / "sub", scenes=[str(scene)])
    assert main(["render", str(set_path), "--out", str(tmp_path / "n.zarr"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nerf_scene.yaml: bundle = 'bundles/gone'" in err
    assert not (tmp_path / "n.zarr").exists()
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    ok_set = tiny_set(tmp_path / "sub")
    assert main(["render", str(ok_set), "--out", str(blocker / "s.zarr"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file/s.zarr" in err and "is a file, not a folder" in err
    assert blocker.read_text() == "keep"


def test_workers_0_renders_in_process_without_ray_and_equals_the_reference(
    tmp_path: Path,
) -> None:
    # A fresh process with no RAY_ADDRESS: had it started Ray, its actors would be other pids;
    # it does not even import ray (~1 s per render stage of a pipeline).
    set_path = tiny_set(tmp_path, clips_per_scene=1)
    out = tmp_path / "here.zarr"
    code = (
        "import json, os, sys\n"
        "from egosynth.config import load_scene_set\n"
        "from egosynth.orchestration import render_set\n"
        "pids = []\n"
        "rep = render_set(load_scene_set(sys.argv[1]), sys.argv[2], workers=0, device='cpu',\n"
        "                 progress=False, on_result=lambda r: pids.append(r['pid']))\n"
        "print(json.dumps({'ray': 'ray' in sys.modules, 'mine': set(pids) == {os.getpid()},\n"
        "                  'workers': rep.workers, 'done': len(rep.done)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run(
        [sys.executable, "-c", code, str(set_path), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    sset = load_scene_set(set_path)
    got = __import__("json").loads(run.stdout.strip().splitlines()[-1])
    assert got == {"ray": False, "mine": True, "workers": 1, "done": len(sset.scene_configs)}
    assert ClipStore(out).validate() == [] and ClipStore(out).attrs["store_status"] == "complete"
    _assert_same_clips(out, _reference(sset, tmp_path / "ref.zarr"))


def test_workers_0_retries_reports_failures_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from egosynth.orchestration import render_set

    set_path = tiny_set(tmp_path, clips_per_scene=1)
    sset = load_scene_set(set_path)
    bad = sset.scene_configs[-1].name
    out = tmp_path / "f.zarr"
    rep = render_set(
        sset, out, workers=0, max_attempts=2, progress=False,
        renderer_factory=_fake_renderer.failing_factory(bad),
    )  # fmt: skip
    assert sorted(rep.failed) == [f"{bad}-0000"] and rep.retries == 1
    assert len(rep.done) == len(sset.scene_configs) - 1
    assert ClipStore(out).attrs["store_status"] == "incomplete"
    # the CLI resumes it in process: only the failed clip is rendered
    args = ["render", str(set_path), "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(args) == 0
    msg = capsys.readouterr().out
    assert f"1 clips rendered, {len(sset.scene_configs) - 1} already complete" in msg
    assert "on 1 cpu workers" in msg
    _assert_same_clips(out, _reference(sset, tmp_path / "ref.zarr"))


def test_sigint_driver_then_rerun_equals_uninterrupted(ray_cluster: str, tmp_path: Path) -> None:
    # Bigger frames so the run lasts a few seconds and the interrupt lands mid-set.
    set_path = tiny_set(tmp_path, clips_per_scene=3, resolution=[128, 96], clip_seconds=2.0)
    out = tmp_path / "int.zarr"
    cmd = [
        sys.executable,
        "-m",
        "egosynth.cli",
        "render",
        str(set_path),
        "--out",
        str(out),
        "--workers",
        "2",
        "--device",
        "cpu",
        "--address",
        ray_cluster,
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120

    def some_clip_done() -> bool:
        if not ((out / "zarr.json").is_file() and (out / "clips").exists()):
            return False  # the driver is still creating the store
        try:
            return bool(ClipStore(out).clip_ids())
        except EgosynthError:  # root metadata mid-write
            return False

    while time.monotonic() < deadline and proc.poll() is None:
        if some_clip_done():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    sset = load_scene_set(set_path)
    n_planned = len(plan_clips(sset))
    n_before = len(ClipStore(out).clip_ids())
    assert proc.returncode == 130 and "interrupted" in err and 0 < n_before < n_planned
    assert (
        main(["render", str(set_path), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    )
    assert ClipStore(out).validate() == []
    _assert_same_clips(out, _reference(sset, tmp_path / "ref.zarr"))


def _plans(scenes: list[str]):
    from types import SimpleNamespace

    return [SimpleNamespace(scene=s, clip_id=f"{s}-{k:04d}") for k, s in enumerate(scenes)]


def test_idle_actors_spread_over_scenes_then_stay_on_theirs() -> None:
    from collections import deque

    from egosynth.orchestration import MAX_WARM_SCENES, _pick, _touch

    # Plan order is scene-major: handing out clips in order would give every actor room_0.
    pending = deque(_plans(["a"] * 4 + ["b"] * 4 + ["c"] * 4))
    warm: list[list[str]] = [[], [], []]
    first = []
    for i in range(3):  # three cold actors
        plan = _pick(pending, warm[i], warm)
        _touch(warm[i], plan.scene)
        first.append(plan.scene)
    assert first == ["a", "b", "c"]
    assert _pick(pending, warm[1], warm).scene == "b"  # an actor keeps its loaded scene
    lru = ["a", "b", "c"]
    for s in ["b", "d", "e", "f"]:
        _touch(lru, s)
    assert lru == ["c", "b", "d", "e", "f"][-MAX_WARM_SCENES:]


@settings(max_examples=40, deadline=None)
@given(
    scenes=st.lists(st.sampled_from("abcde"), min_size=1, max_size=30),
    actors=st.integers(1, 5),
    seed=st.integers(0, 100),
)
def test_every_clip_is_handed_out_once_and_loads_beat_plan_order(
    scenes: list[str], actors: int, seed: int
) -> None:
    import random
    from collections import deque

    from egosynth.orchestration import _pick, _touch

    def run(pick) -> tuple[list[str], int]:
        rng = random.Random(seed)
        pending, warm = deque(_plans(sorted(scenes))), [[] for _ in range(actors)]
        got, loads = [], 0
        while pending:
            i = rng.randrange(actors)  # whichever actor is idle next
            plan = pick(pending, warm[i], warm)
            loads += plan.scene not in warm[i]
            _touch(warm[i], plan.scene)
            got.append(plan.clip_id)
        return got, loads

    got, loads = run(_pick)
    assert sorted(got) == sorted(p.clip_id for p in _plans(sorted(scenes)))
    _, plain = run(lambda pending, warm, _all: pending.popleft())
    assert loads <= plain + actors  # never much worse than plan order, usually far better
