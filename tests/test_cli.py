"""The CLI surface: every planned subcommand listed, --help light, trajectory output."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egosynth.cli import COMMANDS, main
from egosynth.commands import add_stub
from egosynth.config import DEFAULT_SCENE_SET, load_scene_set

HEAVY = ("torch", "nerfstudio", "ray", "zarr", "trimesh", "matplotlib")


def test_help_lists_every_subcommand_without_heavy_imports() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from egosynth.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print(out.getvalue())\n"
        f"print('HEAVY:', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in "render trajectory scenes inspect preview train eval pipeline demo".split():
        assert name in COMMANDS and f"    {name}" in r.stdout
    assert "HEAVY: []" in r.stdout


def test_not_built_subcommand_is_one_line_nonzero(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    add_stub(parser.add_subparsers(dest="command"), "future", "a future command", "issue 99")
    args = parser.parse_args(["future", "x"])
    from egosynth.errors import EgosynthError

    with pytest.raises(EgosynthError, match=r"not built yet.*issue 99"):
        args.func(args)


def test_trajectory_command_writes_arrays_and_map(tmp_path: Path) -> None:
    out = tmp_path / "traj.npz"
    assert main(["trajectory", str(DEFAULT_SCENE_SET), "--out", str(out), "--plot"]) == 0
    sset = load_scene_set(DEFAULT_SCENE_SET)
    n = len(sset.scene_configs) * sset.clips_per_scene
    with np.load(out) as d:
        T = sset.frames_per_clip
        assert d["eye_to_world"].shape == (n, T, 2, 4, 4)
        assert d["time"].shape == (n, T) and np.allclose(np.diff(d["time"][0]), 1 / sset.fps)
        assert d["fixation_point"].shape == (n, T, 3) and d["fixation_object"].shape == (n, T)
        assert len(set(d["clip_id"].tolist())) == n
    pngs = sorted(tmp_path.glob("traj_*.png"))
    assert len(pngs) == len(sset.scene_configs)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_unwritable_output_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["trajectory", str(DEFAULT_SCENE_SET), "--out", str(blocker / "t.npz")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "t.npz" in err
