"""What a training run is: the objectives and every setting of the loop, as one dataclass.

`TrainConfig` is plain data (its `to_json` is what a checkpoint records); egosynth.train.model
builds the networks it names and egosynth.train.loop runs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from egosynth.errors import EgosynthError
from egosynth.train.encoders import EncoderConfig
from egosynth.train.losses import SlowConfig

OBJECTIVES = ("slow", "latent", "pixel")
ALIASES = {"predictive": ("latent", "pixel"), "predictive-latent": ("latent",),
           "predictive-pixel": ("pixel",)}  # fmt: skip
AMP_MODES = ("auto", "off", "bf16", "fp16")


def parse_objectives(names: Iterable[str]) -> tuple[str, ...]:
    """Objective names (comma lists allowed, aliases expanded) in canonical order."""
    chosen: set[str] = set()
    for item in names:
        for name in filter(None, (s.strip() for s in str(item).split(","))):
            if name in ALIASES:
                chosen.update(ALIASES[name])
            elif name in OBJECTIVES:
                chosen.add(name)
            else:
                raise EgosynthError(
                    f"--objective = {name!r}: expected one of {[*OBJECTIVES, *ALIASES]}"
                )
    if not chosen:
        raise EgosynthError("--objective: choose at least one objective")
    return tuple(o for o in OBJECTIVES if o in chosen)


@dataclass
class TrainConfig:
    objectives: tuple[str, ...] = ("slow",)
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 10
    schedule: str = "cosine"  # or "constant"
    grad_clip: float = 5.0
    amp: str = "auto"
    device: str = "auto"
    seed: int = 0
    size: tuple[int, int] | None = (64, 48)  # (width, height) frames are resized to
    fovea: float = 0.0  # > 0: train on foveal crops this fraction of the frame height tall
    augment: tuple[str, ...] = ()  # "crop", "colour": per-frame training augmentations
    shuffle_time: bool = False  # ablation: windows of frames drawn across the batch (no time)
    deterministic: bool = False
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    slow: SlowConfig = field(default_factory=SlowConfig)
    latent_context: str = "gru"
    latent_hidden: int = 128
    horizons: tuple[int, ...] = (1, 3)
    temperature: float = 0.1
    pixel_channels: tuple[int, ...] = (3, 16, 32)
    weights: dict[str, float] = field(default_factory=lambda: {o: 1.0 for o in OBJECTIVES})
    log_every: int = 10
    ckpt_every: int = 100
    diag_every: int = 100
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        self.objectives = parse_objectives(self.objectives)
        if self.amp not in AMP_MODES:
            raise EgosynthError(f"--amp = {self.amp!r}: expected one of {list(AMP_MODES)}")
        if self.schedule not in ("cosine", "constant"):
            raise EgosynthError(f"--schedule = {self.schedule!r}: expected cosine or constant")
        if self.steps < 1:
            raise EgosynthError(f"--steps = {self.steps}: must be >= 1")
        from egosynth.train.fovea import check_fraction

        self.fovea = check_fraction(self.fovea)
        from egosynth.train.augment import parse_augment

        self.augment = parse_augment(self.augment)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoder"] = self.encoder.to_json()
        d["slow"] = self.slow.to_json()
        return json.loads(json.dumps(d))  # tuples -> lists: equal to what a checkpoint holds

    def model_json(self) -> dict[str, Any]:
        """The part of the config that fixes the shapes of the weights (checked on resume)."""
        d = self.to_json()
        keys = ("objectives", "encoder", "latent_context", "latent_hidden", "horizons",
                "pixel_channels")  # fmt: skip
        return {k: d[k] for k in keys}
