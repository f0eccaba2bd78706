"""Encoders: ResNet-family backbones (torchvision's residual blocks, random init).

torchvision's `ResNet` class fixes the stem width (64) and four stages; egosynth needs small
networks for small frames, so the backbone is assembled here from torchvision's own
`BasicBlock` / `Bottleneck` with a configurable base width and any number of stages.

Input: float images in [0, 1], shape (N, E, 3, H, W) with E eyes (0 left, 1 right).
Every eye goes through the SAME backbone (weights shared), giving per-eye embeddings
(N, E, D); the two eyes are then fused (mean, or concatenation) into one embedding per instant.
Fusion has no parameters on purpose: an objective that trains only per-eye embeddings (slowness
with stereo positives) still leaves a meaningful fused embedding for probes and predictors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from egosynth.errors import EgosynthError

# Named depths of the ResNet family: block type and blocks per stage.
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
EYES = ("left", "right", "both")
FUSIONS = ("mean", "concat")


@dataclass
class EncoderConfig:
    """Shape of the encoder. `layers` overrides the depth of `arch` (blocks per stage)."""

    arch: str = "resnet18"
    width: int = 16  # channels of the first stage; stage i has width * 2**i
    layers: tuple[int, ...] | None = None
    embed_dim: int = 64
    eyes: str = "both"
    fusion: str = "mean"
    small_stem: bool = True  # 3x3 stride-1 stem, no max-pool: keeps detail in small frames

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise EgosynthError(f"encoder: arch = {self.arch!r}: expected one of {list(ARCHS)}")
        if self.eyes not in EYES:
            raise EgosynthError(f"encoder: eyes = {self.eyes!r}: expected one of {list(EYES)}")
        if self.fusion not in FUSIONS:
            raise EgosynthError(f"encoder: fusion = {self.fusion!r}: expected one of {FUSIONS}")
        if self.width < 1 or self.embed_dim < 1:
            raise EgosynthError(
                f"encoder: width = {self.width}, embed_dim = {self.embed_dim}: must be >= 1"
            )
        if self.layers is not None:
            self.layers = tuple(int(n) for n in self.layers)
            if not self.layers or min(self.layers) < 1:
                raise EgosynthError(f"encoder: layers = {self.layers}: need >= 1 block per stage")

    @property
    def blocks(self) -> tuple[int, ...]:
        return self.layers or ARCHS[self.arch][1]

    @property
    def eye_indices(self) -> tuple[int, ...]:
        return {"left": (0,), "right": (1,), "both": (0, 1)}[self.eyes]

    @property
    def out_dim(self) -> int:
        """Dimension of the fused embedding."""
        n = len(self.eye_indices)
        return self.embed_dim * n if self.fusion == "concat" else self.embed_dim

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers else None
        return d


def _stage(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int):
    """One ResNet stage, as torchvision's `ResNet._make_layer` builds it."""
    expansion = block.expansion  # type: ignore[attr-defined]
    down = None
    if stride != 1 or inplanes != planes * expansion:
        down = nn.Sequential(
            nn.Conv2d(inplanes, planes * expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * expansion),
        )
    layers = [block(inplanes, planes, stride, down)]
    layers += [block(planes * expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers), planes * expansion


class ResNetBackbone(nn.Module):
    """(N, 3, H, W) in [0, 1] -> (N, embed_dim). Random init (torchvision's default init)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        block = BasicBlock if ARCHS[cfg.arch][0] == "basic" else Bottleneck
        w = cfg.width
        if cfg.small_stem:
            stem = [nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
        else:
            stem = [
                nn.Conv2d(3, w, 7, 2, 3, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(True),
                nn.MaxPool2d(3, 2, 1),
            ]
        stages: list[nn.Module] = []
        inplanes = w
        for i, n in enumerate(cfg.blocks):
            stage, inplanes = _stage(block, inplanes, w * 2**i, n, 1 if i == 0 else 2)
            stages.append(stage)
        self.features = nn.Sequential(*stem, *stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(inplanes, cfg.embed_dim)
        for m in self.modules():  # torchvision ResNet's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # ImageNet-free normalisation: map [0, 1] to roughly zero-mean unit-range.
        self.register_buffer("shift", torch.tensor(0.5), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features((x - self.shift) * 2.0)
        return self.head(torch.flatten(self.pool(h), 1))


class Encoder(nn.Module):
    """Per-eye embeddings with a shared backbone, fused across eyes.

    forward(x (N, E_in, 3, H, W)) -> (per_eye (N, E, D), fused (N, out_dim)), where E is the
    number of eyes the config selects from the E_in eyes given (2 = stereo input).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetBackbone(cfg)

    def select_eyes(self, x: Tensor) -> Tensor:
        idx = self.cfg.eye_indices
        if x.shape[1] < max(idx) + 1:
            raise EgosynthError(
                f"encoder: eyes = {self.cfg.eyes!r} needs {max(idx) + 1} eyes, input has "
                f"{x.shape[1]}"
            )
        return x[:, list(idx)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.select_eyes(x)
        n, e = x.shape[:2]
        per_eye = self.backbone(x.flatten(0, 1)).view(n, e, -1)
        return per_eye, fuse(per_eye, self.cfg.fusion)


def fuse(per_eye: Tensor, fusion: str) -> Tensor:
    """(N, E, D) -> (N, D) by mean, or (N, E * D) by concatenation."""
    if fusion == "mean":
        return per_eye.mean(1)
    return per_eye.flatten(1)


def build_encoder(cfg: EncoderConfig | None = None) -> Encoder:
    return Encoder(cfg or EncoderConfig())
