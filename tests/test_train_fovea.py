"""Foveal training crops (`egosynth train --fovea`): projection of the fixation point, the crop
window, the resize, and that the option changes what the encoder sees; training
augmentations (`--augment`); the validation split (`--validation`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _fake_renderer import tiny_set

from egosynth.cli import main
from egosynth.data import LoaderConfig
from egosynth.errors import EgosynthError
from egosynth.train import augment as aug
from egosynth.train import checkpoint as ckpt
from egosynth.train.config import TrainConfig
from egosynth.train.data import store_loader
from egosynth.train.encoders import EncoderConfig
from egosynth.train.fovea import FOVEA_FIELDS, fovea_boxes, foveate, project_fixation
from egosynth.train.loop import Trainer
from egosynth.train.model import frames_from_batch

pytestmark = pytest.mark.usefixtures("torch_one_thread")

K = torch.tensor([[64.0, 0.0, 64.0], [0.0, 64.0, 48.0], [0.0, 0.0, 1.0]])  # 128x96, 90 deg


def look_at(eye: list[float], target: list[float]) -> torch.Tensor:
    """OpenCV camera-to-world (x right, y down, z forward) at `eye` looking at `target`,
    world +Z up, no roll (as the motion model builds eye poses)."""
    eye_t, target_t = (
        torch.tensor(eye, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
    )
    fwd = (target_t - eye_t) / (target_t - eye_t).norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(fwd, right)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, fwd, eye_t
    return m.float()


# --------------------------------------------------------------------------- projection
def test_projection_golden_values() -> None:
    # Camera at the world origin with OpenCV axes = world axes: a point 2 m ahead, 0.5 m
    # right and 0.25 m up lands at (64 + 64 * 0.25, 48 - 64 * 0.125) = (80, 40).
    pose = torch.eye(4)[None]  # one eye
    uv = project_fixation(torch.tensor([0.5, -0.25, 2.0]), pose, K[None])
    assert torch.allclose(uv, torch.tensor([[80.0, 40.0]]), atol=1e-4)
    # A camera at (1, 2, 1.6) looking along world +X; the point 3 m ahead, 0.3 m to the
    # left (+Y in a right-handed world with +Z up) and 0.6 m below eye height:
    # x_cam = -0.3, y_cam = +0.6, z = 3 -> (64 - 6.4, 48 + 12.8).
    pose = look_at([1.0, 2.0, 1.6], [2.0, 2.0, 1.6])[None]
    uv = project_fixation(torch.tensor([4.0, 2.3, 1.0]), pose, K[None])
    assert torch.allclose(uv, torch.tensor([[57.6, 60.8]]), atol=1e-3)


def test_projection_per_eye_and_behind_the_camera() -> None:
    # Two parallel eyes 6 cm apart looking along +X at a point 1 m ahead between them: the
    # left eye sees it right of centre, the right eye left of centre, by f * 0.03 / 1 px.
    left = look_at([0.0, 0.03, 1.6], [1.0, 0.03, 1.6])
    right = look_at([0.0, -0.03, 1.6], [1.0, -0.03, 1.6])
    poses = torch.stack([left, right])[None]  # (T=1, E=2, 4, 4)
    uv = project_fixation(torch.tensor([[1.0, 0.0, 1.6]]), poses, K.expand(2, 3, 3))
    assert uv.shape == (1, 2, 2)
    assert torch.allclose(uv[0, :, 0], torch.tensor([64 + 1.92, 64 - 1.92]), atol=1e-3)
    # Behind the camera there is no image: the principal point stands in.
    uv = project_fixation(torch.tensor([-1.0, 0.0, 1.6]), left[None], K[None])
    assert torch.allclose(uv, torch.tensor([[64.0, 48.0]]))


# --------------------------------------------------------------------------- window
def test_fovea_box_shape_and_clamping() -> None:
    centres = torch.tensor([[64.0, 48.0], [0.0, 0.0], [128.0, 96.0], [300.0, -50.0]])
    boxes = fovea_boxes(centres, (96, 128), 0.5, (64, 48))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert torch.allclose(h, torch.full((4,), 48.0)) and torch.allclose(w, torch.full((4,), 64.0))
    assert torch.allclose(boxes[0], torch.tensor([32.0, 24.0, 96.0, 72.0]))  # centred
    assert torch.allclose(boxes[1], torch.tensor([0.0, 0.0, 64.0, 48.0]))  # top-left corner
    assert torch.allclose(boxes[2], torch.tensor([64.0, 48.0, 128.0, 96.0]))  # bottom-right
    assert torch.allclose(boxes[3], torch.tensor([64.0, 0.0, 128.0, 48.0]))  # far outside
    # A window as tall as the frame but wider than it (aspect 2:1 on a 4:3 frame) shrinks
    # to the frame width, keeping the aspect ratio of the training size.
    wide = fovea_boxes(torch.tensor([[64.0, 48.0]]), (96, 128), 1.0, (64, 32))
    assert torch.allclose(wide, torch.tensor([[0.0, 16.0, 128.0, 80.0]]))


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_fovea_fraction_is_validated(bad: float) -> None:
    with pytest.raises(EgosynthError, match="--fovea"):
        TrainConfig(fovea=bad)
    with pytest.raises(EgosynthError, match="--fovea"):
        fovea_boxes(torch.zeros(1, 2), (96, 128), bad, (64, 48))


def test_foveate_centres_the_fixated_pixel() -> None:
    # A bright 2x2 block centred on pixel coordinate (90, 30); the crop around it, resized to
    # 16x12, shows the block at its centre.
    img = torch.zeros(1, 3, 96, 128)
    img[:, :, 29:31, 89:91] = 1.0
    box = fovea_boxes(torch.tensor([[90.0, 30.0]]), (96, 128), 0.125, (16, 12))
    assert torch.allclose(box, torch.tensor([[82.0, 24.0, 98.0, 36.0]]))
    out = foveate(img, box, (16, 12))
    assert out.shape == (1, 3, 12, 16)
    assert torch.allclose(out[0, 0, 5:7, 7:9], torch.ones(2, 2))  # the block, centred
    assert out[0, 0].sum() == pytest.approx(4.0, abs=1e-4)  # nothing else: 1:1 scale here
    # The whole frame as the box is a plain (anti-aliased) resize: means are kept.
    full = foveate(torch.rand(2, 3, 96, 128), torch.tensor([[0, 0, 128, 96.0]] * 2), (64, 48))
    assert full.shape == (2, 3, 48, 64)


def test_fovea_changes_what_the_encoder_sees() -> None:
    # One stereo frame, a grey image with a red square where the fixation point projects
    # (about 80, 40 in both eyes: the eyes are parallel, 1 mm apart).
    rgb = torch.full((1, 1, 2, 96, 128, 3), 60, dtype=torch.uint8)
    rgb[..., 36:44, 76:84, :] = torch.tensor([255, 0, 0], dtype=torch.uint8)
    left = look_at([0.0, 0.0005, 0.0], [1.0, 0.0005, 0.0])
    right = look_at([0.0, -0.0005, 0.0], [1.0, -0.0005, 0.0])
    batch = {
        "rgb": rgb,
        "fixation_point": torch.tensor([[[2.0, -0.5, 0.25]]]),  # 0.5 m right, 0.25 m up
        "cam_to_world": torch.stack([left, right])[None, None],
        "intrinsics": K.expand(1, 2, 3, 3),
    }
    whole = frames_from_batch(batch, (32, 24), torch.device("cpu"))
    fovea = frames_from_batch(batch, (32, 24), torch.device("cpu"), fovea=0.125)
    assert whole.shape == fovea.shape == (1, 1, 2, 3, 24, 32)
    red = lambda x: float((x[:, :, :, 0] > x[:, :, :, 1] + 0.5).float().mean())  # noqa: E731
    # The square fills 64 / 12288 of a whole frame and a third of the 12x16-pixel fovea.
    assert red(whole) < 0.01 and red(fovea) > 0.25
    # The fovea is centred on the square: its central pixels are red in both eyes.
    assert (fovea[0, 0, :, 0, 10:14, 14:18] > 0.9).all()
    # Without the gaze fields the option cannot work: a one-line error, not a silent default.
    with pytest.raises(EgosynthError, match="lacks"):
        frames_from_batch({"rgb": rgb}, (32, 24), torch.device("cpu"), fovea=0.125)


# --------------------------------------------------------------------------- augment
def test_parse_augment() -> None:
    assert aug.parse_augment("colour,crop") == ("crop", "colour")
    assert aug.parse_augment("color") == ("colour",)
    assert aug.parse_augment("") == aug.parse_augment("none") == ()
    with pytest.raises(EgosynthError, match="--augment = 'blur'"):
        TrainConfig(augment="crop,blur")


def test_random_subboxes_stay_inside_with_the_aspect_and_area() -> None:
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 20.0, 74.0, 68.0]]).expand(500, 4)  # 64 x 48
    sub = aug.random_subboxes(boxes)
    w, h = sub[:, 2] - sub[:, 0], sub[:, 3] - sub[:, 1]
    assert torch.allclose(w / h, torch.full((500,), 64 / 48))
    area = w * h / (64 * 48)
    assert float(area.min()) >= aug.MIN_CROP_AREA - 1e-5 and float(area.max()) <= 1 + 1e-5
    assert float(area.max() - area.min()) > 0.5  # spread over the range, not one size
    assert (sub[:, :2] >= boxes[:, :2] - 1e-4).all() and (sub[:, 2:] <= boxes[:, 2:] + 1e-4).all()


def test_colour_jitter_range_and_grey(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 6, 8)
    y = aug.colour_jitter(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    changed = (y - x).abs().flatten(1).amax(1) > 1e-3
    assert 0.5 < float(changed.float().mean()) < 1.0  # most images, not all (p = 0.8 / 0.2)
    monkeypatch.setattr(aug, "GREY_P", 1.0)
    grey = aug.colour_jitter(x)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])


def test_augment_draws_per_frame_and_eye_and_repeats_under_a_seed() -> None:
    rgb = torch.randint(0, 256, (2, 3, 2, 24, 32, 3), dtype=torch.uint8)
    rgb[:] = rgb[:1, :1, :1]  # every frame and eye shows the same image
    torch.manual_seed(7)
    a = frames_from_batch(rgb, (16, 12), torch.device("cpu"), augment=("crop", "colour"))
    torch.manual_seed(7)
    b = frames_from_batch(rgb, (16, 12), torch.device("cpu"), augment=("crop", "colour"))
    plain = frames_from_batch(rgb, (16, 12), torch.device("cpu"))
    assert a.shape == plain.shape == (2, 3, 2, 3, 12, 16)
    assert torch.equal(a, b)  # the global generator decides: resumable from checkpoints
    views = a.flatten(0, 2)
    distinct = {tuple(v.flatten()[:50].tolist()) for v in views}
    assert len(distinct) == len(views)  # 12 frames x eyes, 12 different augmentations
    assert torch.equal(plain[0, 0, 0], plain[1, 2, 1])  # without --augment they are equal


# --------------------------------------------------------------------------- on a store
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 scenes x 3 clips x 12 frames at 32x24 (mesh backend): train, validation, held out."""
    from egosynth.config import load_scene_set
    from egosynth.render_clip import render_set

    folder = tmp_path_factory.mktemp("foveastore")
    sset = load_scene_set(tiny_set(folder, clips_per_scene=3))
    return render_set(sset, folder / "tiny.zarr")


def test_store_gaze_lands_in_the_fovea(store: Path) -> None:
    """On rendered clips: frames through the loader's gaze fields give foveal crops whose
    box is centred on the projected fixation point (here the image centre, up to the eyes'
    disparity, since the head turns to what it fixates)."""
    from egosynth.store import ClipStore

    clip = ClipStore(store).clip("room_0-0000")
    a = clip.read(0, 4, ["rgb", "fixation_point", "cam_to_world", "intrinsics"])
    batch = {k: torch.from_numpy(np.asarray(v))[None] for k, v in a.items()}
    uv = project_fixation(batch["fixation_point"], batch["cam_to_world"], batch["intrinsics"])
    assert uv.shape == (1, 4, 2, 2)
    assert torch.allclose(uv, torch.tensor([16.0, 12.0]), atol=2.0)
    x = frames_from_batch(batch, (16, 12), torch.device("cpu"), fovea=0.5)
    assert x.shape == (1, 4, 2, 3, 12, 16) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0


def test_cli_fovea_and_validation_run(store: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    rc = main(
        [
            "train", str(store), "--out", str(out), "--steps", "2", "--objective", "slow",
            "--size", "16x12", "--width", "4", "--layers", "1,1", "--embed-dim", "8",
            "--batch-size", "4", "--window", "4", "--diag-every", "2", "--ckpt-every", "2",
            "--threads", "1", "--no-progress", "--no-tensorboard", "--fovea", "0.5",
            "--validation",
        ]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_clips"] == ["room_0-0000", "room_1-0000"]
    assert summary["validation_clips"] == ["room_0-0001", "room_1-0001"]
    assert "heldout_clips" not in summary  # the held-out clips -0002 are not touched
    meta = ckpt.load_checkpoint(out / "checkpoints" / "step_2.pt")["meta"]
    assert meta["config"]["fovea"] == 0.5


@pytest.mark.parametrize(
    "argv,match",
    [(["--fovea", "2"], "--fovea"), (["--fovea", "x"], "--fovea")],
)
def test_cli_fovea_errors_are_one_line(store, argv, match, capsys, tmp_path) -> None:
    with pytest.raises(SystemExit):
        main(["train", str(store), "--out", str(tmp_path), "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert match in err and "fraction" in err


def test_validation_needs_three_clips(tmp_path: Path, capsys) -> None:
    from egosynth.config import load_scene_set
    from egosynth.render_clip import render_set

    two = render_set(load_scene_set(tiny_set(tmp_path, scenes=None, clip_seconds=0.8)),
                     tmp_path / "two.zarr")  # fmt: skip
    rc = main(["train", str(two), "--out", str(tmp_path / "r"), "--validation", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--validation needs" in err and "\n" not in err


def test_resume_with_fovea_and_augment_is_exact(store: Path, tmp_path: Path) -> None:
    loader_cfg = LoaderConfig(length=4, stride=2, batch_size=4, seed=5,
                              fields=("rgb", *FOVEA_FIELDS))  # fmt: skip
    cfg = TrainConfig(
        objectives=("slow",), steps=4, size=(16, 12), fovea=0.5, augment=("crop", "colour"),
        encoder=EncoderConfig(width=4, layers=(1, 1), embed_dim=8), warmup=1, ckpt_every=0,
        diag_every=0, tensorboard=False, progress=False,
    )  # fmt: skip
    ids = ["room_0-0000", "room_1-0000"]
    dev = torch.device("cpu")

    def curve(hist: list[dict]) -> list[float]:
        return [h["loss"] for h in hist if "loss" in h]

    reference = curve(
        Trainer(cfg, store_loader(store, ids, dev, loader_cfg), out=tmp_path / "a").fit()
    )
    head = curve(
        Trainer(cfg, store_loader(store, ids, dev, loader_cfg), out=tmp_path / "b").fit(until=2)
    )
    torch.manual_seed(99)  # a new process: unrelated generator state until the checkpoint
    tail = curve(
        Trainer(cfg, store_loader(store, ids, dev, loader_cfg), out=tmp_path / "b").fit("latest")
    )
    assert len(reference) == 4 and head + tail == reference
