"""Scene bundles: format validation, safe loading (no code ever runs), import, portability."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from egosynth.errors import EgosynthError
from egosynth.nerf import bundle as B
from egosynth.nerf.importer import import_run, model_weights


class _RunsCommand:
    """Pickles to `os.system(<command>)`: what a hostile checkpoint looks like."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _meta(**changes) -> dict:
    meta = B.BundleMeta(
        method="nerfacto",
        model_settings={"num_levels": 4},
        scene_box=[[-1, -1, -1], [1, 1, 1]],
        num_train_data=3,
        dataparser_transform=np.eye(4)[:3].tolist(),
        dataparser_scale=0.5,
    ).to_json()
    meta.update(changes)
    return meta


# --------------------------------------------------------------------------- metadata
def test_meta_round_trip() -> None:
    m = B.parse_meta(Path("b.json"), json.loads(json.dumps(_meta())))
    assert m.method == "nerfacto" and m.dataparser_scale == 0.5 and m.num_train_data == 3
    # model_from_scene is the dataparser's map: x -> s * (T x + t)
    x = np.array([1.0, 2.0, 3.0, 1.0])
    assert np.allclose(B.model_from_scene(m) @ x, [0.5, 1.0, 1.5, 1.0])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"format": "pickle"}, "'format'"),
        ({"format_version": 99}, "'format_version' = 99"),
        ({"method": "splatfacto"}, "'method' = 'splatfacto'"),
        ({"num_train_data": 0}, "'num_train_data' = 0"),
        ({"num_train_data": "3"}, "'num_train_data'"),
        ({"scene_box": [[0, 0], [1, 1]]}, "'scene_box'"),
        ({"dataparser": {"transform": np.eye(4)[:3].tolist(), "scale": -1}}, "dataparser.scale"),
        ({"dataparser": {"transform": [[1, 2]], "scale": 1}}, "dataparser.transform"),
    ],
)
def test_meta_errors_are_one_line_and_name_the_field(change: dict, needle: str) -> None:
    with pytest.raises(B.BundleError) as err:
        B.parse_meta(Path("/x/bundle.json"), _meta(**change))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("/x/bundle.json") and needle in msg


# --------------------------------------------------------------------------- safe loading
def test_hostile_weights_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"field.w": torch.zeros(2), "x": _RunsCommand(f"touch {marker}")}, weights)
    with pytest.raises(B.BundleError) as err:
        B.load_weights(weights)
    assert "system" in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()


def test_hostile_bundle_is_refused_when_opened_and_rendered(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = tmp_path / "bundle"
    root.mkdir()
    (root / B.BUNDLE_JSON).write_text(json.dumps(_meta()))
    torch.save({"x": _RunsCommand(f"touch {marker}")}, root / B.WEIGHTS)
    bundle = B.read_bundle(root)  # plain JSON only: fine
    with pytest.raises(B.BundleError, match="refused"):
        bundle.load_weights()
    assert not marker.exists()


def test_hostile_nerfstudio_checkpoint_is_refused_on_import(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "outputs" / "cap" / "nerfacto" / "run"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text("!!python/object:builtins.print {}\n")
    (run / "dataparser_transforms.json").write_text('{"transform": [], "scale": 1}')
    hostile = _RunsCommand(f"touch {marker}")
    ckpt = {"step": 5, "pipeline": {"_model.w": torch.zeros(1)}, "x": hostile}
    torch.save(ckpt, run / "nerfstudio_models" / "step-000000005.ckpt")
    with pytest.raises(EgosynthError, match="refused"):
        import_run(tmp_path / "outputs", tmp_path / "bundle")
    assert not marker.exists() and not (tmp_path / "bundle").exists()


def test_numpy_scalars_from_numpy1_checkpoints_are_allowed(tmp_path: Path) -> None:
    """nerfstudio checkpoints pickled under numpy 1.x name numpy.core.multiarray.scalar."""
    buf = io.BytesIO()
    state = {"step": np.int64(7), "pipeline": {"_model.field.w": torch.ones(2)}}
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    old = raw.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    assert old != raw  # the payload really names the numpy-1 location
    path = tmp_path / "step-000000007.ckpt"
    path.write_bytes(old)
    weights, step = model_weights(path)
    assert step == 7 and torch.equal(weights["field.w"], torch.ones(2))


def test_weights_file_must_be_a_flat_tensor_dict(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": {"nested": torch.zeros(1)}}, path)
    with pytest.raises(B.BundleError, match="flat mapping"):
        B.load_weights(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(B.BundleError, match=r"refused|not a readable torch weights file"):
        B.load_weights(path)


# --------------------------------------------------------------------------- with nerfstudio
@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from egosynth.nerf.synthetic import tiny_fit

    return tiny_fit(tmp_path_factory.getbasetemp() / "tiny_nerf")


@pytest.mark.nerf
def test_plain_nerfstudio_output_imports_without_optimizer_state(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    from egosynth.nerf.cameras import CAMERAS, cameras_from_transforms, read_cameras

    capture, runs = tiny
    out = import_run(runs, tmp_path / "bundle")
    # no annotations; the capture cameras of the run's data folder (for `scenes onboard`)
    assert sorted(p.name for p in out.iterdir()) == [B.BUNDLE_JSON, CAMERAS, B.WEIGHTS]
    cams, want = read_cameras(out), cameras_from_transforms(capture / "transforms.json")
    assert cams is not None and cams.names == want.names
    assert np.allclose(cams.cam_to_scene, want.cam_to_scene)
    meta = json.loads((out / B.BUNDLE_JSON).read_text())
    assert meta["method"] in B.SUPPORTED_METHODS and meta["model_settings"]["num_levels"] == 4
    ckpt = next(runs.rglob("step-*.ckpt"))
    weights = B.load_weights(out / B.WEIGHTS)
    assert all(not k.startswith(("camera_optimizer", "_model")) for k in weights)
    assert (out / B.WEIGHTS).stat().st_size < ckpt.stat().st_size / 2  # Adam moments dropped


@pytest.mark.nerf
def test_fit_resumes_from_its_last_checkpoint(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from egosynth.nerf.fit import fit_capture
    from egosynth.nerf.importer import latest_checkpoint
    from egosynth.nerf.synthetic import TINY_SETTINGS

    capture, runs = tiny
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    before = latest_checkpoint(next(p.parent for p in copy.rglob("config.yml")))
    steps_before = int(before.stem.split("-")[1])
    run = fit_capture(capture, copy, iterations=steps_before + 3, overrides=TINY_SETTINGS,
                      progress=False)  # fmt: skip
    after = latest_checkpoint(run)
    assert int(after.stem.split("-")[1]) == steps_before + 2  # 2 more steps, not 14 again


@pytest.mark.nerf
def test_bundle_with_unknown_setting_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from egosynth.render.nerf import NerfRenderer

    out = import_run(tiny[1], tmp_path / "bundle")
    meta = json.loads((out / B.BUNDLE_JSON).read_text())
    meta["model_settings"]["_target"] = "os.system"
    (out / B.BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(B.BundleError, match=r"model_settings\._target"):
        NerfRenderer.from_bundle(out)


@pytest.mark.nerf
def test_cli_import_with_annotations_gives_labels(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from egosynth.cli import main
    from egosynth.render.nerf import NerfRenderer

    scene = tmp_path / "ball.yaml"
    scene.write_text(
        "name: ball\nbackend: mesh\nprocedural: {}\n"
        "floor: [[-3, -3], [3, -3], [3, 3], [-3, 3]]\n"
        "world_from_scene: {scale: 1.0, translation: [0, 0, 0]}\n"
        "objects:\n  - {name: ball_0, category: ball, center: [0, 0, 0.5], extents: [1, 1, 1],\n"
        "     parts: [{name: top, center: [0, 0, 0.85], extents: [1, 1, 0.3]}],\n"
        "     diagnostic_part: top}\n"
    )
    out = tmp_path / "bundle"
    argv = ["scenes", "import", str(tiny[1]), "--out", str(out), "--annotations", str(scene)]
    assert main(argv) == 0
    r = NerfRenderer.from_bundle(out, device="cpu")
    labels = r.labels()
    got = [(lab.name, lab.category, lab.parts) for lab in labels]
    assert got == [("ball_0", "ball", {1: "top"})]
    assert labels[0].diagnostic_part == "top"  # carried from the annotations to the labels
    assert r.bundle.ground_truth_scene() is not None  # it recorded a procedural scene
