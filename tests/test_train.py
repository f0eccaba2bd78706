"""The training loop on real rendered clips: a tiny CPU run through the CLI, exact resume,
collapse prevention, weights-only checkpoints, and one-line errors.

The store is the embedded default scene set rendered in-process (no Ray) at 32x24 with the
mesh backend: the same scenes as `egosynth render`'s default store, at a test-sized resolution.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from _fake_renderer import tiny_set
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.cli import main
from egosynth.data import LoaderConfig
from egosynth.errors import EgosynthError
from egosynth.train import checkpoint as ckpt
from egosynth.train.config import TrainConfig, parse_objectives
from egosynth.train.data import (
    CategoryTable,
    batch_categories,
    probe_from_store,
    split_clips,
    store_loader,
)
from egosynth.train.encoders import EncoderConfig
from egosynth.train.loop import Trainer
from egosynth.train.model import frames_from_batch, shuffle_time

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 scenes x 2 clips x 24 frames at 32x24, rendered by the mesh backend."""
    from egosynth.config import load_scene_set
    from egosynth.render_clip import render_set

    folder = tmp_path_factory.mktemp("trainstore")
    sset = load_scene_set(tiny_set(folder, resolution=[32, 24], clip_seconds=2.4))
    path = folder / "tiny.zarr"
    return render_set(sset, path)


def tiny_cfg(**kw) -> TrainConfig:
    base = {
        "objectives": ("slow", "latent", "pixel"),
        "steps": 6,
        "size": (16, 12),
        "encoder": EncoderConfig(width=4, layers=(1, 1), embed_dim=8),
        "pixel_channels": (3, 4, 8),
        "latent_hidden": 16,
        "horizons": (1, 2),
        "warmup": 2,
        "ckpt_every": 0,
        "diag_every": 0,
        "log_every": 1,
        "tensorboard": False,
        "progress": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def loss_curve(history: list[dict]) -> list[float]:
    return [h["loss"] for h in history if "loss" in h]


# --------------------------------------------------------------------------- tiny run
def test_tiny_run_cli(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    rc = main(
        [
            "train", str(store), "--out", str(out), "--steps", "3", "--objective", "slow",
            "--objective", "predictive", "--size", "16x12", "--width", "4", "--layers", "1,1",
            "--embed-dim", "8", "--pixel-channels", "3,4,8", "--batch-size", "4",
            "--horizons", "1,2", "--diag-every", "3", "--ckpt-every", "2", "--threads", "1",
            "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    assert summary["heldout_clips"] == ["room_0-0001", "room_1-0001"]
    for key in ("slow", "latent", "pixel"):
        assert key in summary["loss"]
    last = summary["diagnostics_last"]
    for key in ("diag/eta_mean", "diag/effective_rank", "diag/copy_over_pred", "probe/accuracy"):
        assert key in last
    assert 0.0 <= last["probe/accuracy"] <= 1.0
    assert 0.0 <= summary["data_wait_fraction"] <= 1.0
    # Checkpoints at step 2 and at the end; plain weights-only torch.load reads them.
    files = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert files == ["step_2.pt", "step_3.pt"]
    raw = torch.load(out / "checkpoints" / "step_3.pt", weights_only=True)
    assert json.loads(raw["meta_json"])["step"] == 3
    assert any((out / "tb").iterdir())  # TensorBoard event file


def test_tiny_run_on_default_store(tmp_path: Path) -> None:
    """The embedded default store exactly as `egosynth render` makes it (rendered in-process)."""
    from egosynth.config import DEFAULT_SCENE_SET, load_scene_set
    from egosynth.render_clip import render_set

    default_store = render_set(load_scene_set(DEFAULT_SCENE_SET), tmp_path / "demo.zarr")
    rc = main(
        [
            "train", str(default_store), "--out", str(tmp_path / "run"), "--steps", "2",
            "--size", "32x24", "--width", "4", "--layers", "1,1", "--embed-dim", "8",
            "--batch-size", "4", "--diag-every", "0", "--threads", "1", "--no-progress",
            "--no-tensorboard",
        ]
    )  # fmt: skip
    assert rc == 0
    assert (tmp_path / "run" / "checkpoints" / "step_2.pt").is_file()


# --------------------------------------------------------------------------- resume
def _loader_data(store: Path):
    # 2 training clips x 5 windows = 10 windows -> 2 batches of 4 per epoch (drop_last).
    cfg = LoaderConfig(length=8, stride=4, skip=1, batch_size=4, seed=5, fields=("rgb",))
    return store_loader(store, ["room_0-0000", "room_1-0000"], torch.device("cpu"), cfg)


# 2 closes an epoch exactly; 3 is mid-epoch; the time-shuffled ablation must resume as exactly
@pytest.mark.parametrize(("stop", "shuffled"), [(2, False), (3, False), (3, True)])
def test_resume_reproduces_loss_curve(store: Path, tmp_path: Path, stop: int, shuffled: bool):
    make = _loader_data
    full = Trainer(tiny_cfg(shuffle_time=shuffled), make(store), out=tmp_path / "full")
    reference = loss_curve(full.fit())
    assert len(reference) == 6

    first = Trainer(tiny_cfg(shuffle_time=shuffled), make(store), out=tmp_path / "cut")
    head = loss_curve(first.fit(until=stop))
    assert (tmp_path / "cut" / "checkpoints" / f"step_{stop}.pt").is_file()
    torch.manual_seed(1234)  # a resumed process starts with unrelated RNG state
    second = Trainer(tiny_cfg(shuffle_time=shuffled), make(store), out=tmp_path / "cut")
    tail = loss_curve(second.fit(resume="latest"))
    assert head + tail == reference  # bit-exact, not approximately equal
    for (name, a), b in zip(
        full.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_refuses_other_model(store: Path, tmp_path: Path) -> None:
    Trainer(tiny_cfg(steps=1), _loader_data(store), out=tmp_path).fit()
    other = tiny_cfg(steps=2, encoder=EncoderConfig(width=8, layers=(1, 1), embed_dim=8))
    with pytest.raises(EgosynthError, match="model settings"):
        Trainer(other, _loader_data(store), out=tmp_path).fit(resume="latest")


# --------------------------------------------------------------------------- collapse
def test_slowness_with_sfa_constraints_does_not_collapse(store: Path) -> None:
    train, held = split_clips(["room_0-0000", "room_0-0001", "room_1-0000", "room_1-0001"],
                              ["room_0", "room_0", "room_1", "room_1"])  # fmt: skip
    probe = probe_from_store(store, train, held, window=8, limit=8)
    cfg = tiny_cfg(objectives=("slow",), steps=40, diag_every=20, lr=3e-3,
                   encoder=EncoderConfig(width=4, layers=(1, 1), embed_dim=8))  # fmt: skip
    lcfg = LoaderConfig(length=8, stride=2, batch_size=8, seed=0, fields=("rgb",))
    data = store_loader(store, train, torch.device("cpu"), lcfg)
    trainer = Trainer(cfg, data, probe=probe)
    hist = trainer.fit()
    ranks = [h["diag/effective_rank"] for h in hist if "diag/effective_rank" in h]
    assert len(ranks) == 3  # step 0, 20, 40
    assert min(ranks[1:]) >= 3.0  # of 8 dimensions; a collapsed encoder gives ~1
    slow = [h["slow/slow"] for h in hist if "slow/slow" in h]
    assert sum(slow[-5:]) < sum(slow[:5])  # and it does get slower


# --------------------------------------------------------------------------- pieces
def test_probe_labels_from_instance_masks(store: Path) -> None:
    from egosynth.store import ClipStore

    table = CategoryTable.from_store(ClipStore(store))
    assert table.names == sorted(set(table.names)) and "dog" in table.names
    from egosynth.data import WindowLoader

    loader = WindowLoader(store, length=4, stride=4, batch_size=2, shuffle=False,
                          fields=("instance",))  # fmt: skip
    batch = next(iter(loader))
    opened = ClipStore(store)
    scenes = [opened.clip(loader.index.clips[c].clip_id).scene for c in batch["clip"]]
    cats = batch_categories(batch["instance"], scenes, table)
    assert cats.shape == (2, 4)
    assert int(cats.min()) >= -1 and int(cats.max()) < len(table.names)


def test_frames_from_batch_layouts() -> None:
    rgb = torch.randint(0, 256, (2, 3, 2, 12, 16, 3), dtype=torch.uint8)
    last = frames_from_batch({"rgb": rgb}, None, torch.device("cpu"))
    first = frames_from_batch(rgb.permute(0, 1, 2, 5, 3, 4), None, torch.device("cpu"))
    assert last.shape == (2, 3, 2, 3, 12, 16) and torch.equal(last, first)
    assert float(last[0, 0, 0, 1, 2, 3]) == pytest.approx(float(rgb[0, 0, 0, 2, 3, 1]) / 255)
    small = frames_from_batch(rgb, (8, 6), torch.device("cpu"))
    assert small.shape == (2, 3, 2, 3, 6, 8)
    assert torch.allclose(small[..., 0, 0], last[..., :2, :2].mean((-1, -2)))  # area average


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 5), t=st.integers(1, 6), seed=st.integers(0, 2**40), step=st.integers(0, 10**6)
)
def test_shuffle_time_is_a_permutation_of_the_batch_frames(b, t, seed, step) -> None:
    # Frame (i, j) of eye e holds the value 10 * (i * t + j) + e: a stereo pair is recognisable.
    ids = torch.arange(b * t, dtype=torch.float32).view(b, t, 1, 1, 1, 1) * 10
    frames = (ids + torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1, 1)).expand(b, t, 2, 3, 2, 2)
    out = shuffle_time(frames.contiguous(), seed, step)
    assert out.shape == frames.shape
    left, right = out[:, :, 0, 0, 0, 0], out[:, :, 1, 0, 0, 0]
    assert torch.equal(right, left + 1)  # each eye moved with its frame
    assert sorted(left.flatten().tolist()) == sorted(ids.flatten().tolist())  # nothing lost
    assert torch.equal(out, shuffle_time(frames.contiguous(), seed, step))  # (seed, step) fixes it


def test_shuffle_time_takes_time_out_of_windows(store: Path) -> None:
    """On real renders, consecutive frames of a window are far more alike than the frames a
    shuffled window puts side by side: the ablation removes what slowness learns from."""
    batch = next(iter(_loader_data(store)))
    frames = frames_from_batch(batch, (16, 12), torch.device("cpu"))

    def step_change(x: torch.Tensor) -> float:
        return float((x[:, 1:] - x[:, :-1]).abs().mean())

    shuffled = [step_change(shuffle_time(frames, 0, s)) for s in range(5)]
    assert min(shuffled) > 1.5 * step_change(frames)
    assert len({round(v, 6) for v in shuffled}) > 1  # a new order every step


def test_parse_objectives() -> None:
    assert parse_objectives(["pixel,slow"]) == ("slow", "pixel")
    assert parse_objectives(["predictive"]) == ("latent", "pixel")
    with pytest.raises(EgosynthError, match="--objective = 'fast'"):
        parse_objectives(["fast"])


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_never_executes_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": ckpt.FORMAT, "x": evil}, f)
    torch.save({"format": ckpt.FORMAT, "version": 1, "x": evil}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(EgosynthError, match="weights-only"):
            ckpt.load_checkpoint(p)
    assert not marker.exists()


def test_checkpoint_round_trip_rng(tmp_path: Path) -> None:
    import random

    import numpy as np

    ckpt.save_checkpoint(tmp_path / "c.pt", {"rng": ckpt.rng_state()}, {"a": [1, "b"]})
    want = (torch.rand(3), random.random(), np.random.rand())
    payload = ckpt.load_checkpoint(tmp_path / "c.pt")
    ckpt.set_rng_state(payload["rng"])
    assert payload["meta"] == {"a": [1, "b"]}
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(want[0], got[0]) and want[1:] == got[1:]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--objective", "fast"], "--objective = 'fast'"),
        (["--arch", "vgg"], "arch = 'vgg'"),
    ],
)
def test_cli_errors_are_one_line(store, argv, match, capsys, tmp_path) -> None:
    rc = main(["train", str(store), "--out", str(tmp_path), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and match in err and "\n" not in err


def test_cli_missing_store(capsys, tmp_path) -> None:
    rc = main(["train", str(tmp_path / "nope.zarr")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "store not found" in err and "\n" not in err


def test_probe_data_has_object_crops_from_instance_masks(store: Path) -> None:
    ids = ["room_0-0000", "room_0-0001", "room_1-0000", "room_1-0001"]
    train, held = split_clips(ids, ["room_0", "room_0", "room_1", "room_1"])
    probe = probe_from_store(store, train, held, window=8, limit=4, size=(16, 12), max_crops=50)
    assert probe is not None and probe.train_crops is not None
    assert probe.heldout_crops is not None and probe.heldout_crop_cat is not None
    assert probe.train_crops.shape[1:] == (2, 12, 16, 3)  # both eyes, resized to `size`
    assert 0 < len(probe.train_crops) <= 50 and len(probe.train_crop_cat) == len(probe.train_crops)
    assert len(probe.heldout_crops) > 0
    cats = torch.cat([probe.train_crop_cat, probe.heldout_crop_cat])
    n_names = len(
        CategoryTable.from_store(__import__("egosynth.store").store.ClipStore(store)).names
    )
    assert int(cats.min()) >= 0 and int(cats.max()) < n_names
    assert probe.train_rgb.shape[:2] == (4, 8)  # `limit` windows per split


def _colour_crops(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, 2, 12, 16, 3) uint8 crops whose colour is their label (red / green / blue) + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 60, (len(labels), 2, 12, 16, 3), generator=g)
    x[torch.arange(len(labels)), ..., labels] += 180
    return x.to(torch.uint8)


def test_crop_probe_reads_category_and_reports_interval() -> None:
    """The trainer's probe fits on training crops and scores held-out crops: colour-coded
    categories are read perfectly even by a random encoder; shuffled labels are not."""
    from egosynth.train.data import ProbeData

    ty, hy = torch.arange(60) % 3, torch.arange(30) % 3
    windows = torch.zeros(2, 4, 2, 12, 16, 3, dtype=torch.uint8)
    frame_cat = torch.full((2, 4), -1)
    cfg = tiny_cfg(objectives=("slow",), diag_every=1)

    def probe_with(held_labels: torch.Tensor) -> dict[str, float]:
        data = ProbeData(windows, frame_cat, windows, frame_cat, _colour_crops(ty, 0), ty,
                         _colour_crops(hy, 1), held_labels)  # fmt: skip
        return Trainer(cfg, [], probe=data).diagnostics()

    good = probe_with(hy)
    assert good["probe/accuracy"] == 1.0
    assert good["probe/n_heldout"] == 30 and good["probe/n_train"] == 60
    assert good["probe/ci95_low"] < 1.0 and good["probe/ci95_high"] == 1.0
    shuffled = hy[torch.randperm(30, generator=torch.Generator().manual_seed(2))]
    bad = probe_with(shuffled)
    assert bad["probe/accuracy"] < 0.7
    assert bad["probe/ci95_low"] <= bad["probe/accuracy"] <= bad["probe/ci95_high"]


def test_next_frame_diagnostic_weights_every_window_equally() -> None:
    """20 held-out windows are embedded in chunks of 16 and 4: the copy-last MSE must be the
    plain mean over all windows, not the mean of the two chunk means."""
    from egosynth.train.data import ProbeData

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (20, 3, 2, 12, 16, 3), generator=g, dtype=torch.uint8)
    rgb[16:] = 0  # the short last chunk is static: copy error 0 there
    cat = torch.full((20, 3), -1)
    cfg = tiny_cfg(objectives=("pixel",), diag_every=1)
    diag = Trainer(cfg, [], probe=ProbeData(rgb, cat, rgb, cat)).diagnostics()
    x = frames_from_batch(rgb, cfg.size, torch.device("cpu"))[:, :, 0]  # each eye is a sequence
    x = torch.cat([x, frames_from_batch(rgb, cfg.size, torch.device("cpu"))[:, :, 1]])
    expected = float((x[:, 1:] - x[:, :-1]).pow(2).mean())
    assert diag["diag/copy_last_mse"] == pytest.approx(expected, rel=1e-5)
