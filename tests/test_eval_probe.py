"""Scoring models on ClickMe-format data: checkpoints rebuilt faithfully, the linear probe,
oracle and background-only models through the whole saliency + metric path, the baseline's
checkpoint round trip, and the `egosynth eval` commands end to end on a tiny twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from egosynth.cli import main
from egosynth.errors import EgosynthError
from egosynth.eval.baseline import BaselineConfig, save_baseline, to_input, train_baseline
from egosynth.eval.evaluate import SplitData, score_model
from egosynth.eval.metrics import HUMAN_SPEARMAN_CEILING
from egosynth.eval.probe import (
    ImageAdapter,
    LoadedModel,
    fit_linear_probe,
    load_model,
)
from egosynth.train.checkpoint import save_checkpoint
from egosynth.train.encoders import EncoderConfig

TINY = EncoderConfig(arch="resnet10", width=4, embed_dim=8, layers=(1, 1))


class MapModel(nn.Module):
    """logits[:, k] = sum over pixels of (channel mean of x) * map: its input gradient is the
    map (divided by 3) for every class, whatever the image."""

    def __init__(self, saliency_map: np.ndarray, n_classes: int = 2) -> None:
        super().__init__()
        self.register_buffer("map", torch.as_tensor(saliency_map).float())
        self.n = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.mean(1) * self.map).sum((1, 2))
        return torch.stack([s * (k + 1) for k in range(self.n)], 1)


def _split(n: int = 6, seed: int = 0) -> SplitData:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:224, :224]
    human = np.exp(-((yy - 80.0) ** 2 + (xx - 150.0) ** 2) / (2 * 20.0**2)).astype(np.float32)
    images = rng.uniform(0, 255, (n, 224, 224, 3)).astype(np.float32)
    return SplitData(images, np.repeat(human[None], n, 0), np.arange(n) % 2, [""] * n)


def test_oracle_scores_ceiling_and_background_model_scores_low() -> None:
    """A classifier whose saliency IS the human map: alignment = 1 / 0.65753 exactly; one that
    looks only where the human map is low: negative alignment."""
    data = _split()
    human = data.heatmaps[0]
    for saliency, check in (
        (human, lambda a: a == pytest.approx(1 / HUMAN_SPEARMAN_CEILING, abs=1e-9)),
        (human.max() - human, lambda a: a < -0.9 / HUMAN_SPEARMAN_CEILING),
    ):
        model = LoadedModel("m", "classifier", nn.Identity(), MapModel(saliency), ["a", "b"])
        (row,) = score_model(model, data, None, 2, batch_size=4, keep=2, progress=False)
        assert row.row["scoring"] == "classifier" and row.row["n_images"] == len(data)
        assert check(row.row["alignment_score"]), row.row
        assert row.examples.shape == (2, 224, 224)


def test_probe_fits_separable_features_and_folds_standardisation() -> None:
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.integers(0, 3, 300))
    centres = torch.tensor([[5.0, 0, 100], [0, 5.0, 100], [-5.0, -5.0, 100]])
    z = centres[y] + torch.as_tensor(rng.normal(0, 0.5, (300, 3))).float() * torch.tensor(
        [1.0, 1.0, 40.0]
    )
    probe = fit_linear_probe(z, y, 3)
    assert float((probe(z).argmax(1) == y).float().mean()) > 0.97
    # the folded layer on raw features = a probe on standardised features
    mu, sd = z.mean(0), z.std(0)
    w_std = probe.weight * sd
    assert torch.allclose(
        (z - mu) / sd @ w_std.T + (probe.bias + (probe.weight * mu).sum(1)), probe(z), atol=1e-3
    )


def _train_checkpoint(path: Path) -> nn.Module:
    """An `egosynth train`-style checkpoint of a (random) slow+latent model."""
    from egosynth.train.config import TrainConfig
    from egosynth.train.model import TrainModel

    cfg = TrainConfig(objectives=("slow", "latent"), encoder=TINY, size=(20, 16))
    model = TrainModel(cfg)
    meta = {
        "step": 1,
        "epoch": 0,
        "consumed": 1,
        "config": cfg.to_json(),
        "model": cfg.model_json(),
    }
    save_checkpoint(path, {"model": model.state_dict()}, meta)
    return model


def test_train_checkpoint_rebuilds_the_same_encoder(tmp_path: Path) -> None:
    trained = _train_checkpoint(tmp_path / "step_1.pt").eval()
    loaded = load_model(tmp_path / "step_1.pt")
    assert loaded.kind == "encoder" and loaded.name == "slow+latent"
    x = torch.rand(3, 3, 224, 224) * 255
    with torch.no_grad():
        small = ImageAdapter((16, 16))(x)
        assert small.shape == (3, 3, 16, 16)
        # the trainer's stereo encoder on two identical eyes, fused by mean
        _, fused = trained.encoder(torch.stack([small, small], 1))
        assert torch.allclose(loaded.features(x), fused, atol=1e-5)


def test_checkpoint_errors(tmp_path: Path) -> None:
    from egosynth.train.config import TrainConfig
    from egosynth.train.model import TrainModel

    cfg = TrainConfig(objectives=("pixel",), encoder=TINY)
    meta = {"config": cfg.to_json()}
    save_checkpoint(tmp_path / "pix.pt", {"model": TrainModel(cfg).state_dict()}, meta)
    with pytest.raises(EgosynthError, match="has no encoder"):
        load_model(tmp_path / "pix.pt")
    with pytest.raises(EgosynthError, match="not found"):
        load_model(tmp_path / "none.pt")
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(EgosynthError, match="format"):
        load_model(tmp_path / "x.pt")


def test_baseline_learns_and_round_trips(tmp_path: Path) -> None:
    """Class = the colour of a square (red or blue); the baseline learns it, and
    the checkpoint, rebuilt, gives the trained network's logits on 224 images."""
    rng = np.random.default_rng(1)
    n = 48
    images = rng.uniform(0, 60, (n, 224, 224, 3)).astype(np.float32)
    labels = np.arange(n) % 2
    for i in range(n):
        y0, x0 = rng.integers(0, 120, 2)
        images[i, y0 : y0 + 100, x0 : x0 + 100] = (250, 0, 0) if labels[i] == 0 else (0, 0, 250)
    cfg = BaselineConfig(steps=25, batch_size=16, lr=3e-3, input_size=16, flip=False, encoder=TINY)
    model, summary = train_baseline(images, labels, None, ["red", "blue"], cfg, progress=False)
    assert summary["train_accuracy"] >= 0.9
    path = save_baseline(tmp_path / "b.pt", model, ["red", "blue"], cfg, "base")
    loaded = load_model(path)
    assert loaded.kind == "classifier" and loaded.classes == ["red", "blue"]
    x = torch.as_tensor(images[:4]).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.allclose(loaded.classifier(x), model(to_input(images[:4], 16)), atol=1e-5)


@pytest.mark.slow
def test_eval_commands_end_to_end(tmp_path: Path, capsys) -> None:
    """twin-export -> baseline -> twin (with an encoder checkpoint too) -> report + figures."""
    from test_eval_twin import write_tiny_store

    store = write_tiny_store(tmp_path / "tiny.zarr")
    twin = tmp_path / "twin"
    assert (
        main(
            [
                "eval",
                "twin-export",
                str(store),
                "--out",
                str(twin),
                "--shortcut",
                "1",
                "--stride",
                "2",
                "--crop",
                "32",
                "--min-object-px",
                "20",
                "--no-progress",
            ]
        )
        == 0
    )
    ck = tmp_path / "base.pt"
    assert (
        main(
            [
                "eval",
                "baseline",
                str(twin),
                "--out",
                str(ck),
                "--steps",
                "2",
                "--input-size",
                "16",
                "--arch",
                "resnet10",
                "--width",
                "4",
                "--embed-dim",
                "8",
                "--harmonize",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    _train_checkpoint(tmp_path / "enc.pt")
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "twin",
                str(twin),
                "--checkpoint",
                str(ck),
                "--checkpoint",
                f"slowpoke={tmp_path / 'enc.pt'}",
                "--out",
                str(out),
                "--examples",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    rows = {(r["model"], r["scoring"]): r for r in report["results"]}
    assert set(rows) == {
        ("harmonized", "classifier"),
        ("slowpoke", "probe"),
        ("slowpoke", "embedding"),
    }
    n_test = json.loads((twin / "twin.json").read_text())["splits"]["test"]["n_images"]
    for r in rows.values():
        assert r["n_images"] == n_test and r["shortcut"] == 1.0
    assert 0 <= rows[("slowpoke", "probe")]["accuracy"] <= 1
    assert "accuracy" not in rows[("slowpoke", "embedding")]
    for fig in report["figures"]:
        assert Path(fig).read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "slowpoke" in table and "alignment" in table
    # bad inputs: one line, non-zero exit
    assert main(["eval", "twin", str(tmp_path), "--checkpoint", str(ck)]) != 0
    assert "no twin.json" in capsys.readouterr().err


def test_cli_saliency_choices_match_the_registry() -> None:
    from egosynth.commands.eval import SALIENCY_METHODS
    from egosynth.eval.saliency import METHODS

    assert set(SALIENCY_METHODS) == set(METHODS)
