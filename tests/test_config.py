"""Config validation: good configs load; each malformed one gives ONE line naming file+field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from egosynth.cli import main
from egosynth.config import DEFAULT_SCENE_SET, load_scene_set

SCENE = {
    "name": "box_room",
    "backend": "mesh",
    "procedural": {"seed": 1},
    "floor": [[0, 0], [4, 0], [4, 4], [0, 4]],
    "obstacles": [{"polygon": [[1, 1], [2, 1], [2, 2], [1, 2]]}],
    "objects": [
        {"name": "a", "category": "dog", "center": [3, 3, 0.3], "extents": [0.4, 0.3, 0.5]}
    ],
}
SET = {"name": "s", "scenes": ["scene.yaml"], "fps": 10, "clip_seconds": 1.0}


def write_pair(tmp: Path, scene: dict, sset: dict) -> Path:
    (tmp / "scene.yaml").write_text(yaml.safe_dump(scene))
    (tmp / "set.yaml").write_text(yaml.safe_dump(sset))
    return tmp / "set.yaml"


def with_(base: dict, path: str, value: object) -> dict:
    """Copy of `base` with the dotted `path` set to `value` (or removed if value is ...)."""
    out = yaml.safe_load(yaml.safe_dump(base))
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return out


def test_default_scene_set_loads() -> None:
    sset = load_scene_set(DEFAULT_SCENE_SET)
    assert sset.scene_configs and sset.frames_per_clip == round(sset.clip_seconds * sset.fps)
    assert sset.rig.ipd_m == pytest.approx(0.063) and sset.rig.eye_height_m == pytest.approx(1.6)


def test_toddler_preset_fills_rig_and_motion(tmp_path: Path) -> None:
    p = write_pair(tmp_path, SCENE, {**SET, "rig": "toddler", "motion": {"preset": "toddler"}})
    sset = load_scene_set(p)
    assert sset.rig.ipd_m == pytest.approx(0.045) and sset.rig.eye_height_m == pytest.approx(0.8)
    assert sset.motion.walk_speed_mps[1] < 1.2


def test_explicit_value_overrides_preset(tmp_path: Path) -> None:
    p = write_pair(tmp_path, SCENE, {**SET, "rig": {"preset": "adult", "ipd_m": 0.07}})
    assert load_scene_set(p).rig.ipd_m == pytest.approx(0.07)


# (what is wrong, scene, set, field named in the error)
MALFORMED = [
    ("missing field", with_(SCENE, "floor", ...), SET, "floor"),
    ("wrong type", SCENE, {**SET, "fps": "fast"}, "fps"),
    ("negative fps", SCENE, {**SET, "fps": -5}, "fps"),
    ("unknown backend", with_(SCENE, "backend", "raytracer"), SET, "backend"),
    ("IPD 0", SCENE, {**SET, "rig": {"ipd_m": 0}}, "rig.ipd_m"),
    ("empty walkable region", with_(SCENE, "floor", []), SET, "floor"),
    (
        "self-intersecting floor",
        with_(SCENE, "floor", [[0, 0], [4, 4], [4, 0], [0, 4]]),
        SET,
        "floor",
    ),
    ("unknown preset", SCENE, {**SET, "rig": "giant"}, "rig.preset"),
    ("unknown key", SCENE, {**SET, "fsp": 10}, "fsp"),
    ("zero clips", SCENE, {**SET, "clips_per_scene": 0}, "clips_per_scene"),
    (
        "speed range inverted",
        SCENE,
        {**SET, "motion": {"walk_speed_mps": [1.5, 1.0]}},
        "motion.walk_speed_mps",
    ),
    (
        "negative extents",
        with_(SCENE, "objects.0.extents", [0.4, -1, 0.5]),
        SET,
        "objects.0.extents",
    ),
    (
        "diagnostic part that is not a part",
        with_(SCENE, "objects.0.diagnostic_part", "head"),  # the object annotates no parts
        SET,
        "objects.0",
    ),
    ("nerf without bundle", with_(SCENE, "backend", "nerf"), SET, "bundle"),
    ("missing scene file", SCENE, {**SET, "scenes": ["nope.yaml"]}, "scenes.0"),
    ("bad resolution", SCENE, {**SET, "resolution": [0, 96]}, "resolution.width"),
    (
        "bad rotation",
        with_(SCENE, "world_from_scene", {"rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}),
        SET,
        "world_from_scene.rotation",
    ),
]


@pytest.mark.parametrize("what,scene,sset,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, what: str, scene: dict, sset: dict, field: str
) -> None:
    p = write_pair(tmp_path, scene, sset)
    rc = main(["trajectory", str(p), "--out", str(tmp_path / "t.npz")])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert ".yaml" in err and field in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "t.npz").exists()


def test_invalid_yaml_names_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "set.yaml").write_text("name: [unclosed\nfps: 3\n")
    assert main(["trajectory", str(tmp_path / "set.yaml"), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "set.yaml" in err and "line" in err and len(err.strip().splitlines()) == 1


def test_cli_error_exit_code_in_subprocess(tmp_path: Path) -> None:
    p = write_pair(tmp_path, SCENE, {**SET, "fps": -1})
    r = subprocess.run(
        [sys.executable, "-m", "egosynth.cli", "trajectory", str(p), "--out", str(tmp_path / "t")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "fps" in r.stderr and "Traceback" not in r.stderr


def test_committed_nerf_labels_record_the_diagnostic_part() -> None:
    """The NeRF renderer's label table carries each object's annotated diagnostic part, so a
    NeRF store's twin never needs the procedural generator's table (egosynth.eval.twin)."""
    from egosynth.config import load_scene
    from egosynth.render.nerf import labels_for
    from egosynth.scenes.shapes import DIAGNOSTIC_PART

    root = Path(__file__).resolve().parents[1]
    for name in ("room_0_nerf", "room_1_nerf"):
        scene = load_scene(root / "scene_configs" / "scenes" / f"{name}.yaml")
        labels = labels_for(list(scene.objects))
        assert labels and all(
            lab.diagnostic_part == DIAGNOSTIC_PART[lab.category]
            and lab.diagnostic_part in lab.parts.values()
            for lab in labels
        ), name
    plain = labels_for([scene.objects[0].model_copy(update={"diagnostic_part": None})])
    assert plain[0].diagnostic_part is None  # annotations that name none record none
