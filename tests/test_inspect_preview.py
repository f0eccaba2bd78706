"""`egosynth inspect` and `egosynth preview` on a store rendered from the real demo scenes."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from _fake_renderer import tiny_set

from egosynth.cli import main
from egosynth.commands.preview import depth_colours, instance_colours, preview_frames
from egosynth.config import load_scene_set
from egosynth.render_clip import render_set
from egosynth.store import ClipStore, ClipWriter


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ip")
    sset = load_scene_set(tiny_set(folder))
    return render_set(sset, folder / "s.zarr")


def _copy(store: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(store, dst))


def test_inspect_table_lists_every_clip(store: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(store)]) == 0
    out = capsys.readouterr().out
    ids = ClipStore(store).clip_ids()
    for cid in ids:
        line = next(ln for ln in out.splitlines() if ln.startswith(cid))
        assert line.split()[1] == cid.rsplit("-", 1)[0]  # scene
        assert line.split()[2] == "12" and line.split()[-2:] == ["raw", "complete"]
        assert "32x24" in line and " KB" in line
    assert f"{len(ids)}/{len(ids)} clips complete, {12 * len(ids)} stereo frames" in out


def test_inspect_validate_passes_then_names_a_corrupt_chunk(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["inspect", str(store), "--validate", "--no-progress"]) == 0
    assert "valid: every chunk" in capsys.readouterr().out
    bad = _copy(store, tmp_path / "bad.zarr")
    cid = ClipStore(bad).clip_ids()[0]
    chunk = bad / "clips" / cid / "rgb" / "c" / "0" / "0" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[-10] ^= 0x55
    chunk.write_bytes(bytes(raw))
    assert main(["inspect", str(bad), "--validate", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"clips/{cid}/rgb/c/0/0/0/0/0" in err[0] and "checksum" in err[0]
    # Preview of the corrupt clip: one line naming the array, nothing written.
    out = tmp_path / "p.gif"
    assert main(["preview", str(bad), "--clip", cid, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"clip {cid}/rgb: corrupt" in err[0] and not out.exists()


def test_inspect_shows_incomplete_clips_and_validate_fails(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _copy(store, tmp_path / "inc.zarr")
    ClipWriter(path, "room_x-0000", 12, 24, 32, {"scene": "room_x"})  # never completed
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert next(ln for ln in out.splitlines() if ln.startswith("room_x-0000")).endswith("writing")
    assert main(["inspect", str(path), "--validate", "--no-progress"]) == 1
    assert "room_x-0000: status 'writing', not complete" in capsys.readouterr().err


def test_inspect_missing_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(tmp_path / "none.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.zarr: does not exist" in err[0]


def test_preview_panels_are_left_right_depth_instances(store: Path) -> None:
    clip = ClipStore(store).clip(ClipStore(store).clip_ids()[0])
    a = clip.read(0, 5)
    panels = preview_frames(clip, 0, 5, far=4.0)
    W = 32
    assert panels.shape == (5, 24, 4 * W, 3)
    np.testing.assert_array_equal(panels[..., :W, :], a["rgb"][:, 0])
    np.testing.assert_array_equal(panels[..., W : 2 * W, :], a["rgb"][:, 1])
    np.testing.assert_array_equal(
        panels[..., 2 * W : 3 * W, :], depth_colours(a["depth"][:, 0], 4.0)
    )
    inst = panels[..., 3 * W :, :]
    ids = a["instance"][:, 0]
    assert np.all(inst[ids == 0] == 0)
    for i in np.unique(ids[ids > 0]):  # one colour per object, never black
        colours = np.unique(inst[ids == i], axis=0)
        assert len(colours) == 1 and colours[0].any()


def test_colour_maps() -> None:
    c = instance_colours(np.arange(60))
    assert (c[0] == 0).all() and len(np.unique(c[1:], axis=0)) == 59
    d = depth_colours(np.array([0.0, 0.5, 4.0, 9.0]), far=4.0)
    assert (d[0] == 0).all()  # nothing hit: black
    assert (d[2] == d[3]).all()  # beyond far: clipped to the far colour
    assert not (d[1] == d[2]).all()


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_preview_writes_video(
    store: Path, tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture
) -> None:
    cid = ClipStore(store).clip_ids()[-1]
    out = tmp_path / f"v{suffix}"
    assert main(["preview", str(store), "--clip", cid, "--out", str(out)]) == 0
    assert f"wrote {out} (12 frames of {cid})" in capsys.readouterr().out
    frames = iio.imread(out, index=None, **({"plugin": "pyav"} if suffix == ".mp4" else {}))
    assert frames.shape[:3] == (12, 24, 128)


def test_preview_bad_arguments_are_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["preview", str(store), "--clip", "nope"]) == 2
    assert "no clip 'nope'" in capsys.readouterr().err
    assert main(["preview", str(store), "--out", str(tmp_path / "x.avi")]) == 2
    assert "must end in .mp4 or .gif" in capsys.readouterr().err
