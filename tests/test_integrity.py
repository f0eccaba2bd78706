"""Data integrity: nothing lost, nothing silently wrong (issue 18, the data half).

Real renders (mesh backend), real zarr, real processes:

* the store's write lock holds on the folder a render writes: a second `egosynth render`
  into a new store, or with --overwrite, while the first runs, stops with one line and the
  first run's clips come out intact (byte-equal to a single-process render);
* deleted, replaced or garbled data (an array, a shard, a chunk, a zarr.json, n_frames) is
  a one-line error naming the clip and array in preview, the loader and train, and
  `inspect --validate` reports it instead of "valid" or a traceback;
* `train --resume` on another store with the same clip ids and frame counts is refused;
* an interrupted or crashed render leaves store_status "interrupted" (not "rendering"), and
  the next render completes it byte-identically.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _fake_renderer import tiny_set

from egosynth.cli import main
from egosynth.config import load_scene_set
from egosynth.errors import EgosynthError
from egosynth.plan import plan_clips
from egosynth.render_clip import config_fingerprint, render_set
from egosynth.store import ClipStore

REPO = Path(__file__).resolve().parent.parent


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


def _one_line(capsys: pytest.CaptureFixture) -> str:
    """stderr of the command just run: exactly one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- damaged data
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 clips per scene x 24 frames at 32x24 (3 shards of 8 frames), mesh backend."""
    folder = tmp_path_factory.mktemp("integrity")
    sset = load_scene_set(tiny_set(folder, clip_seconds=2.4))
    return render_set(sset, folder / "s.zarr")


def _set_attr(path: Path, key: str, value) -> None:
    doc = json.loads(path.read_text())
    doc["attributes"][key] = value
    path.write_text(json.dumps(doc))


def _damage(clip: Path, how: str) -> None:
    rgb_shard = clip / "rgb" / "c" / "1" / "0" / "0" / "0" / "0"
    if how == "rgb array deleted":
        shutil.rmtree(clip / "rgb")
    elif how == "rgb shard deleted":
        rgb_shard.unlink()
    elif how == "rgb shard replaced by a folder":
        rgb_shard.unlink()
        rgb_shard.mkdir()
    elif how == "depth chunk deleted":
        (clip / "depth" / "c" / "2" / "0" / "0" / "0").unlink()
    elif how == "pose chunk deleted":  # a small per-clip array: required too
        (clip / "cam_to_world" / "c" / "0" / "0" / "0" / "0").unlink()
    elif how == "clip zarr.json garbled":
        (clip / "zarr.json").write_bytes(b'{"attributes": {"status": "comp')
    elif how == "rgb zarr.json not JSON":
        (clip / "rgb" / "zarr.json").write_bytes(b"\x00\xffnot json")
    elif how == "n_frames larger than the arrays":
        _set_attr(clip / "zarr.json", "n_frames", 30)
    elif how == "clip folder deleted":
        shutil.rmtree(clip)
    else:
        raise AssertionError(how)


# damage -> what the one-line error must say (beside the clip id)
DAMAGE = {
    "rgb array deleted": "rgb: array missing",
    "rgb shard deleted": "rgb",
    "rgb shard replaced by a folder": "rgb",
    "depth chunk deleted": "depth",
    "pose chunk deleted": "cam_to_world",
    "clip zarr.json garbled": "zarr.json is not valid JSON",
    "rgb zarr.json not JSON": "rgb: zarr.json is not valid JSON",
    "n_frames larger than the arrays": "24 frames, the clip's attr n_frames = 30",
    "clip folder deleted": "",
}


@pytest.fixture
def damaged(store: Path, tmp_path: Path, request: pytest.FixtureRequest):
    """(store copy, the first clip's id) with that clip damaged as `request.param` says."""
    path = Path(shutil.copytree(store, tmp_path / "bad.zarr"))
    cid = ClipStore(path).clip_ids()[0]
    _damage(path / "clips" / cid, request.param)
    return path, cid, request.param


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_damaged_clip_is_reported_by_validate(damaged, capsys: pytest.CaptureFixture) -> None:
    path, cid, how = damaged
    before = _files(path)
    assert main(["inspect", str(path), "--validate", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "valid:" not in out and "Traceback" not in err
    lines = err.splitlines()
    assert lines and all(cid in ln for ln in lines), err  # that clip only, each problem named
    assert any(DAMAGE[how] in ln for ln in lines), err
    assert cid in out  # the table lists it (as corrupt where it cannot be read)
    assert _files(path) == before  # validate reads only


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_damaged_clip_fails_preview_and_loader_in_one_line(
    damaged, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from egosynth.data import WindowLoader

    path, cid, how = damaged
    before = _files(path)
    video = tmp_path / "p.gif"
    if how != "pose chunk deleted":  # preview reads rgb, depth and instance only
        assert main(["preview", str(path), "--clip", cid, "--out", str(video)]) == 2
        err = _one_line(capsys)
        assert cid in err and DAMAGE[how] in err and not video.exists()
    fields = ["rgb", "depth", "cam_to_world"]
    with pytest.raises(EgosynthError) as exc:
        list(WindowLoader(path, length=8, stride=8, batch_size=2, shuffle=False, fields=fields))
    assert cid in str(exc.value) and "\n" not in str(exc.value)
    assert DAMAGE[how].split(":")[0] in str(exc.value)
    assert _files(path) == before


TRAIN = [
    "--steps", "2", "--objective", "slow", "--size", "16x12", "--width", "4",
    "--layers", "1,1", "--embed-dim", "8", "--batch-size", "2", "--window", "4",
    "--diag-every", "0", "--threads", "1", "--no-progress", "--no-tensorboard",
]  # fmt: skip


@pytest.mark.usefixtures("torch_one_thread")
@pytest.mark.parametrize(
    ("damaged", "workers"),
    [
        ("rgb array deleted", 0),
        ("rgb shard deleted", 0),
        ("rgb shard deleted", 1),  # read in a DataLoader worker process
        ("n_frames larger than the arrays", 0),
    ],
    indirect=["damaged"],
)
def test_damaged_clip_fails_train_in_one_line(
    damaged, workers: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, cid, _ = damaged
    before = _files(path)
    run = ["train", str(path), "--out", str(tmp_path / "run"), *TRAIN, "--workers", str(workers)]
    assert main(run) == 2
    err = _one_line(capsys)
    assert cid in err and "rgb" in err
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))  # never trained on zeros
    assert _files(path) == before


def test_fill_values_only_where_absence_means_background(store: Path, tmp_path: Path) -> None:
    """Masks of empty views are not stored (documented: they read as background); every
    other array stores every chunk, all-zero ones included."""
    import numpy as np

    from egosynth.store import ARRAY_NAMES, SPARSE_ARRAYS, ClipWriter, prepare_store

    assert SPARSE_ARRAYS == ("instance", "part")
    path = tmp_path / "z.zarr"
    prepare_store(path, "fp", {})

    w = ClipWriter(path, "black", 4, 5, 6, {"scene": "s"}, chunk_frames=4)
    zeros = {
        "rgb": np.zeros((4, 2, 5, 6, 3)),
        "depth": np.zeros((4, 2, 5, 6)),
        "instance": np.zeros((4, 2, 5, 6)),
        "part": np.zeros((4, 2, 5, 6)),
    }
    w.write_frames(0, zeros)
    meta = {"time": np.zeros(4), "walking": np.zeros(4, bool), "gaze_kind": np.zeros(4)}
    meta.update(
        cam_to_world=np.zeros((4, 2, 4, 4)),
        head_to_world=np.zeros((4, 4, 4)),
        fixation_point=np.zeros((4, 3)),
        fixation_object=np.zeros(4),
    )
    w.write_meta(meta, np.zeros((2, 3, 3)))
    w.complete()
    clip = path / "clips" / "black"
    stored = {n for n in ARRAY_NAMES if any(p.is_file() for p in (clip / n / "c").rglob("*"))}
    assert stored == {"rgb", "depth", *meta, "intrinsics"}  # everything but the masks
    got = ClipStore(path).clip("black").read()
    assert all(not got[k].any() for k in got)
    assert ClipStore(path).validate() == []
    (clip / "depth" / "c" / "0" / "0" / "0" / "0").unlink()  # now one really is missing
    assert any("depth/c/0/0/0/0: missing" in p for p in ClipStore(path).validate())


# --------------------------------------------------------------------------- train --resume
@pytest.mark.usefixtures("torch_one_thread")
def test_train_resume_on_another_store_with_the_same_clips_is_refused(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sset = load_scene_set(tiny_set(tmp_path, clip_seconds=2.4, seed=11))  # other pixels
    other = render_set(sset, tmp_path / "other.zarr")
    (tmp_path / "twin").mkdir()  # the store's own config, rendered again: another store_id
    twin = render_set(load_scene_set(tiny_set(tmp_path / "twin", clip_seconds=2.4)), tmp_path / "t")
    a, b = ClipStore(store), ClipStore(other)
    assert {c: a.clip(c).n_frames for c in a.clip_ids()} == {
        c: b.clip(c).n_frames for c in b.clip_ids()
    }
    run = tmp_path / "run"
    assert main(["train", str(store), "--out", str(run), *TRAIN, "--ckpt-every", "1"]) == 0
    capsys.readouterr()
    ckpts = _files(run / "checkpoints")
    more = [*TRAIN[:1], "3", *TRAIN[2:], "--resume"]
    # another config; the same config rendered again (another store_id): both refused
    for wrong in (other, twin):
        assert main(["train", str(wrong), "--out", str(run), *more]) == 2
        err = _one_line(capsys)
        assert str(wrong) in err and "refusing to resume on another store" in err
        assert _files(run / "checkpoints") == ckpts
    assert main(["train", str(store), "--out", str(run), *more]) == 0  # the same store resumes
    assert json.loads(capsys.readouterr().out)["steps"] == 3


# --------------------------------------------------------------------------- renders
@pytest.fixture(scope="module")
def slow_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A set that takes a few seconds to render, and its single-process reference store."""
    folder = tmp_path_factory.mktemp("slow")
    path = tiny_set(folder, clips_per_scene=3, resolution=[128, 96], clip_seconds=2.0)
    return path, render_set(load_scene_set(path), folder / "ref.zarr")


def _start_render(set_path: Path, out: Path, cluster: str | None, *extra: str) -> subprocess.Popen:
    """`egosynth render` in a subprocess: on 2 Ray actors of `cluster`, or (None) in-process.

    The write lock, the interrupt handling and the store's finalisation are one code path for
    both; the Ray variant adds Ray's own SIGTERM handler and actors to stop.
    """
    where = ["--workers", "0"] if cluster is None else ["--workers", "2", "--address", cluster]
    cmd = [
        sys.executable, "-m", "egosynth.cli", "render", str(set_path), "--out", str(out),
        *where, "--device", "cpu", "--no-progress", *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_rendering(out: Path, fingerprint: str, proc: subprocess.Popen) -> None:
    """Until the render `proc` has prepared `out` (root written with this fingerprint)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            attrs = json.loads((out / "zarr.json").read_text())["attributes"]
            if attrs.get("fingerprint") == fingerprint and attrs["store_status"] == "rendering":
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"render did not start: {proc.communicate()}")


def _assert_same_clips(a: Path, b: Path) -> None:
    fa, fb = _files(a / "clips"), _files(b / "clips")
    assert sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []


@pytest.mark.parametrize("case", ["new store", "--overwrite"])
def test_a_second_render_while_the_first_runs_is_refused(
    slow_set, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    set_path, ref = slow_set
    out = tmp_path / "s.zarr"
    extra = []
    if case == "--overwrite":  # a store of another config that the first run replaces
        render_set(load_scene_set(tiny_set(tmp_path, seed=4)), out)
        extra = ["--overwrite"]
    first = _start_render(set_path, out, None, *extra)  # the lock is taken before any Ray
    try:
        _wait_rendering(out, config_fingerprint(load_scene_set(set_path)), first)
        inode = out.stat().st_ino
        for again in ([], ["--overwrite"]):
            rc = main(["render", str(set_path), "--out", str(out), "--no-progress", *again])
            err = _one_line(capsys)
            assert rc == 2 and "another egosynth process is writing this store" in err
        assert first.poll() is None, "the first run ended before the second was tried"
        _, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err
    assert out.stat().st_ino == inode  # the folder the lock is held on is the one written
    assert ClipStore(out).attrs["store_status"] == "complete"
    assert ClipStore(out).validate() == []
    _assert_same_clips(out, ref)


@pytest.mark.parametrize(
    ("signum", "code", "word", "on_ray"),
    [
        (signal.SIGINT, 130, "interrupted", False),
        # Ray replaces the driver's SIGTERM handler: the CLI's own must survive ray.init
        pytest.param(signal.SIGTERM, 143, "terminated", True, marks=pytest.mark.ray),
    ],
    ids=["SIGINT-in-process", "SIGTERM-on-Ray"],
)
def test_a_stopped_render_marks_the_store_interrupted_and_rerun_completes_it(
    request: pytest.FixtureRequest, slow_set, tmp_path: Path, signum, code, word, on_ray
) -> None:
    from egosynth.data import WindowLoader

    set_path, ref = slow_set
    out = tmp_path / "int.zarr"
    cluster = request.getfixturevalue("ray_cluster") if on_ray else None
    proc = _start_render(set_path, out, cluster)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if _some_clip_done(out):
                break
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code and word in err
    attrs = ClipStore(out).attrs
    done = ClipStore(out).clip_ids()
    assert attrs["store_status"] == "interrupted"  # not "rendering": nobody is writing it
    assert 0 < len(done) < len(plan_clips(load_scene_set(set_path)))
    assert sorted(attrs["index"]) == done
    t0 = time.monotonic()  # a live reader stops at once instead of at its idle timeout
    live = WindowLoader(out, length=8, stride=8, batch_size=4, live=True, idle_timeout_s=120)
    seen = {str(c) for batch in live for c in batch["clip_id"]}
    assert seen == set(done) and time.monotonic() - t0 < 60
    rerun = ["render", str(set_path), "--out", str(out), "--no-progress", "--workers", "0"]
    assert main(rerun) == 0
    assert ClipStore(out).attrs["store_status"] == "complete" and ClipStore(out).validate() == []
    _assert_same_clips(out, ref)


def test_a_crash_in_the_driver_marks_the_store_interrupted(tmp_path: Path) -> None:
    """In process (workers=0): the store's finalisation is the driver's, Ray or not; the
    interrupted Ray driver is the SIGTERM case above."""
    from egosynth.orchestration import render_set as driver_render

    sset = load_scene_set(tiny_set(tmp_path))
    out = tmp_path / "crash.zarr"

    def crash(res: dict) -> None:
        raise RuntimeError("the driver crashed")

    with pytest.raises(RuntimeError, match="the driver crashed"):
        driver_render(sset, out, workers=0, progress=False, on_result=crash)
    assert ClipStore(out).attrs["store_status"] == "interrupted"
    store_id = ClipStore(out).attrs["store_id"]
    rep = driver_render(sset, out, workers=0, progress=False)
    assert rep.ok and rep.skipped >= 1 and ClipStore(out).attrs["store_status"] == "complete"
    assert ClipStore(out).attrs["store_id"] == store_id  # resumed, the same store
    assert ClipStore(out).validate() == []
    _assert_same_clips(out, render_set(sset, tmp_path / "ref.zarr"))


def _some_clip_done(out: Path) -> bool:
    """A clip is complete in a store another process is still creating (races tolerated)."""
    if not ((out / "zarr.json").is_file() and (out / "clips").exists()):
        return False
    try:
        return bool(ClipStore(out, consolidated=False).clip_ids())
    except EgosynthError:  # root metadata mid-write
        return False
