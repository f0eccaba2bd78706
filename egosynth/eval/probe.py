"""Models for the alignment evaluation: checkpoints rebuilt without executing code, image
adapters, and the two ways to score a self-supervised encoder.

Every model handed to the evaluator takes what the ClickMe loader yields, permuted to NCHW:
(N, 3, 224, 224) float 0..255. `ImageAdapter` maps that to the network's own input (scale to
[0, 1], area-resize to the size the network was trained at) INSIDE the model, so saliency is
the gradient with respect to the 224x224 image, as the metric wants, and flows through the
resize.

Scoring an encoder that has no classifier (docs/eval.md, "Scoring a self-supervised encoder"):

- probe (default): a linear classifier fitted on frozen embeddings of labelled images
  (multinomial logistic regression, L-BFGS, standardised features); saliency is the gradient
  of the probe's TRUE-CLASS logit through the frozen encoder, exactly the reference metric
  applied to encoder + probe. It measures the features the encoder offers for the task.
- embedding: label-free, the gradient of the squared norm of the STANDARDISED embedding
  (zero mean, unit variance per dimension over the probe images). Without the standardisation
  the norm is dominated by the mean embedding shared by every image.

Checkpoints: `egosynth train` checkpoints (the encoder is rebuilt from meta.config.encoder and
the "encoder.*" weights of the model state) and the supervised baselines of
egosynth.eval.baseline. Both load with torch's weights-only loader.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egosynth.errors import EgosynthError
from egosynth.train.encoders import EncoderConfig, ResNetBackbone

BASELINE_KIND = "supervised-baseline"


class ImageAdapter(nn.Module):
    """(N, 3, H, W) float 0..255 -> [0, 1], area-resized to `size` = (height, width)."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.size = None if size is None else (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        x = x / 255.0
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            # "area" is what the trainer resizes frames with (egosynth.train.model).
            x = F.interpolate(x, size=self.size, mode="area")
        return x


class Standardise(nn.Module):
    """z -> (z - mean) / std with fixed statistics (buffers)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone().clamp_min(1e-6))

    def forward(self, z: Tensor) -> Tensor:
        return (z - self.mean) / self.std


@dataclass
class LoadedModel:
    """A checkpoint rebuilt for evaluation.

    `features`: 224 image (0..255) -> embedding (N, D) (for encoders), or the classifier's
    penultimate features (for baselines). `classifier`: image -> logits, or None for encoders
    until a probe is fitted. `classes`: the classifier's class names (None for encoders).
    """

    name: str
    kind: str  # "encoder" or "classifier"
    features: nn.Module
    classifier: nn.Module | None = None
    classes: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _encoder_config(d: dict[str, Any], where: str) -> EncoderConfig:
    try:
        return EncoderConfig(**{k: d[k] for k in EncoderConfig.__dataclass_fields__ if k in d})
    except TypeError as exc:
        raise EgosynthError(f"{where}: encoder config {d!r} is not usable ({exc})") from None


def _load_backbone(cfg: EncoderConfig, state: dict[str, Tensor], where: str) -> ResNetBackbone:
    backbone = ResNetBackbone(cfg)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().split("\n")[0]
        raise EgosynthError(f"{where}: weights do not fit the encoder config ({first})") from None
    return backbone.eval()


def encoder_name(meta: dict[str, Any]) -> str:
    objectives = meta.get("config", {}).get("objectives", [])
    return "+".join(objectives) if objectives else "encoder"


def load_model(
    path: str | Path, input_size: int | None = None, name: str | None = None
) -> LoadedModel:
    """Rebuild an `egosynth train` encoder or a supervised baseline from its checkpoint.

    `input_size`: the square side the network sees (default: a train checkpoint's frame height,
    a baseline's own input size).
    """
    from egosynth.train.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    meta = payload["meta"]
    where = str(path)
    state = payload.get("model")
    if not isinstance(state, dict):
        raise EgosynthError(f"{where}: no 'model' state in the checkpoint")
    if meta.get("kind") == BASELINE_KIND:
        cfg = _encoder_config(meta.get("encoder", {}), where)
        side = input_size or int(meta["input_size"])
        backbone = _load_backbone(cfg, _strip(state, "backbone."), where)
        head = nn.Linear(cfg.embed_dim, len(meta["classes"]))
        head.load_state_dict(_strip(state, "head."))
        adapter = ImageAdapter((side, side))
        features = nn.Sequential(adapter, backbone).eval()
        return LoadedModel(
            name=name or meta.get("name", Path(path).stem),
            kind="classifier",
            features=features,
            classifier=nn.Sequential(adapter, backbone, head).eval(),
            classes=list(meta["classes"]),
            meta=meta,
        )
    config = meta.get("config")
    if not isinstance(config, dict) or "encoder" not in config:
        raise EgosynthError(f"{where}: meta has no config.encoder: not an egosynth train run")
    enc_state = _strip(state, "encoder.backbone.")
    if not enc_state:
        raise EgosynthError(
            f"{where}: the checkpoint has no encoder (objectives {config.get('objectives')}: "
            "a pixel-only PredNet run has no embedding to evaluate)"
        )
    cfg = _encoder_config(config["encoder"], where)
    size = config.get("size")
    side = input_size or (int(size[1]) if size else None)
    if side is None:
        raise EgosynthError(f"{where}: trained at native size: give --input-size")
    backbone = _load_backbone(cfg, enc_state, where)
    # Mono images: every eye would see the same picture, and a mean fusion of identical eyes
    # is the per-eye embedding itself, so the shared backbone alone is the encoder here.
    return LoadedModel(
        name=name or encoder_name(meta),
        kind="encoder",
        features=nn.Sequential(ImageAdapter((side, side)), backbone).eval(),
        meta=meta,
    )


# --------------------------------------------------------------------------- embeddings, probe
@torch.no_grad()
def embed(model: nn.Module, images: Iterable[np.ndarray], batch_size: int = 64) -> Tensor:
    """Embeddings (N, D) of NHWC float 0..255 image batches (any iterable of arrays)."""
    model.eval()
    out = []
    for batch in images:
        x = torch.as_tensor(np.asarray(batch)).permute(0, 3, 1, 2).float()
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size]).float())
    if not out:
        raise EgosynthError("no images to embed")
    return torch.cat(out)


def fit_linear_probe(
    features: Tensor, labels: Tensor, n_classes: int, l2: float = 1e-3, steps: int = 200
) -> nn.Linear:
    """Multinomial logistic regression on frozen features, L-BFGS from zero weights.

    Features are standardised with their own statistics, and the standardisation is folded
    into the returned layer, so it applies to raw features: logits = W' z + b'.
    """
    z = features.detach().float()
    y = labels.long()
    if len(z) != len(y):
        raise ValueError(f"{len(z)} feature rows but {len(y)} labels")
    mu, sd = z.mean(0), z.std(0).clamp_min(1e-6)
    zs = (z - mu) / sd
    lin = nn.Linear(z.shape[1], n_classes)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(zs), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    folded = nn.Linear(z.shape[1], n_classes)
    with torch.no_grad():
        folded.weight.copy_(lin.weight / sd)
        folded.bias.copy_(lin.bias - (lin.weight * (mu / sd)).sum(1))
    return folded.eval()


def probed(model: LoadedModel, probe: nn.Linear) -> nn.Module:
    """encoder + linear probe: image -> class logits."""
    return nn.Sequential(model.features, probe).eval()


def standardised_embedding(model: LoadedModel, features: Tensor) -> nn.Module:
    """image -> embedding standardised with `features`' statistics (for target
    "embedding_norm": the norm then measures how atypical the image's embedding is)."""
    z = features.detach().float()
    return nn.Sequential(model.features, Standardise(z.mean(0), z.std(0))).eval()
