"""A supervised baseline trained on static frames of a twin: the same ResNet backbone as the
self-supervised encoders (egosynth.train.encoders) plus a linear head, trained with
cross-entropy (label smoothing 0.1, as the harmonizer's CE) and optionally the harmonizer loss
with the twin's diagnostic-part maps (egosynth.eval.harmonizer).

Images are area-resized once from the loader's 224x224 to the network's input size (the same
operation `ImageAdapter` applies at evaluation time, so train and test inputs agree); the
harmonizer compares saliency and part maps at that size. Horizontal flips (of image and map
together) are the only augmentation.

The checkpoint is a weights-only egosynth checkpoint (egosynth.train.checkpoint) with
meta.kind = "supervised-baseline"; egosynth.eval.probe.load_model rebuilds it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egosynth.errors import EgosynthError
from egosynth.eval.probe import BASELINE_KIND
from egosynth.train.encoders import EncoderConfig, ResNetBackbone


@dataclass
class BaselineConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    input_size: int = 48
    harmonize: float = 0.0  # lambda of the harmonizer term (0 = cross-entropy only)
    flip: bool = True
    seed: int = 0
    threads: int = 0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.input_size < 8:
            raise EgosynthError(
                f"baseline: steps = {self.steps}, batch_size = {self.batch_size}, input_size = "
                f"{self.input_size}: need steps >= 1, batch_size >= 1, input_size >= 8"
            )
        if self.harmonize < 0:
            raise EgosynthError(f"baseline: harmonize = {self.harmonize}: must be >= 0")


class Classifier(nn.Module):
    """backbone (images in [0, 1]) + linear head -> logits."""

    def __init__(self, cfg: EncoderConfig, n_classes: int) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(cfg)
        self.head = nn.Linear(cfg.embed_dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def to_input(images: np.ndarray, size: int) -> Tensor:
    """NHWC float 0..255 (224x224) -> NCHW [0, 1] area-resized to (size, size)."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(x, size=(size, size), mode="area")


def maps_to_input(maps: np.ndarray, size: int) -> Tensor:
    x = torch.as_tensor(np.asarray(maps)).float()[:, None]
    return F.interpolate(x, size=(size, size), mode="area")[:, 0]


def train_baseline(
    images: np.ndarray,
    labels: np.ndarray,
    heatmaps: np.ndarray | None,
    classes: list[str],
    cfg: BaselineConfig,
    progress: bool = True,
) -> tuple[Classifier, dict[str, Any]]:
    """Train on NHWC float 0..255 images with integer labels (and (N, H, W) human maps when
    cfg.harmonize > 0). Returns the model and a summary (final losses, train accuracy)."""
    from tqdm import tqdm

    from egosynth.eval.harmonizer import harmonizer_loss

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # torch 2.14.1's oneDNN convolution backward segfaults here on this resnet (2-core CPU
    # machines, 2026-12-02: every `eval baseline` run, also at the previous commit); the plain
    # CPU kernels train the same model correctly.
    torch.backends.mkldnn.enabled = False
    if cfg.harmonize > 0 and heatmaps is None:
        raise EgosynthError("baseline: harmonize > 0 needs human maps")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x_all = to_input(images, cfg.input_size)
    y_all = torch.as_tensor(np.asarray(labels)).long()
    h_all = maps_to_input(heatmaps, cfg.input_size) if heatmaps is not None else None
    n = len(y_all)
    if n < 2:
        raise EgosynthError(f"baseline: {n} training image(s): need at least 2")
    model = Classifier(cfg.encoder, len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    model.train()
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="baseline", unit="step", disable=not progress)
    for _ in bar:
        idx = torch.as_tensor(rng.choice(n, size=min(cfg.batch_size, n), replace=False))
        x, y = x_all[idx], y_all[idx]
        h = h_all[idx] if h_all is not None else None
        if cfg.flip:
            flip = torch.as_tensor(rng.random(len(idx)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if h is not None:
                h = torch.where(flip[:, None, None], h.flip(-1), h)
        if cfg.harmonize > 0:
            parts = harmonizer_loss(model, x, y, h, lambda_harmonization=cfg.harmonize)
            loss, ce, harm = parts.total, parts.cross_entropy, parts.harmonization
        else:
            loss = ce = F.cross_entropy(model(x), y, label_smoothing=0.1)
            harm = torch.zeros(())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(
            {
                "loss": float(loss.detach()),
                "ce": float(ce.detach()),
                "harmonization": float(harm.detach()),
            }
        )
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_all[i : i + 256]).argmax(1) for i in range(0, n, 256)])
    tail = history[-10:]
    summary = {
        "steps": cfg.steps,
        "seconds": time.perf_counter() - start,
        "train_accuracy": float((pred == y_all).float().mean()),
        **{k: float(np.mean([h[k] for h in tail])) for k in ("loss", "ce", "harmonization")},
    }
    return model, summary


def save_baseline(
    path: str | Path,
    model: Classifier,
    classes: list[str],
    cfg: BaselineConfig,
    name: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    from egosynth.train.checkpoint import save_checkpoint

    config = asdict(cfg)
    config["encoder"] = cfg.encoder.to_json()
    meta = {
        "kind": BASELINE_KIND,
        "name": name,
        "classes": list(classes),
        "input_size": cfg.input_size,
        "encoder": cfg.encoder.to_json(),
        "config": config,
        **(extra or {}),
    }
    return save_checkpoint(path, {"model": model.state_dict()}, meta)
