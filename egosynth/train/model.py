"""The model a TrainConfig describes: encoder, slow-feature loss, latent predictor, PredNet,
and the frame preparation (resize, layout) every objective shares."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egosynth.errors import EgosynthError
from egosynth.train.config import TrainConfig
from egosynth.train.encoders import Encoder
from egosynth.train.losses import SlowLoss, prednet_loss
from egosynth.train.predictive import LatentPredictor, PredNet


def frames_from_batch(
    batch: Any,
    size: tuple[int, int] | None,
    device: torch.device,
    fovea: float = 0.0,
    augment: tuple[str, ...] = (),
) -> Tensor:
    """uint8 rgb of a batch -> float (B, T, E, 3, h, w) in [0, 1] on `device`, resized.

    `fovea` > 0: each eye's frame is first cut to the foveal window around the batch's
    fixation point (`egosynth.train.fovea`). `augment` ("crop", "colour"): random
    augmentations drawn per frame and eye (`egosynth.train.augment`; training batches only).
    """
    rgb = batch["rgb"] if isinstance(batch, dict) else batch
    if not isinstance(rgb, Tensor):
        rgb = torch.as_tensor(rgb)
    if rgb.dim() != 6:
        raise EgosynthError(f"batch: rgb must be (B, T, E, H, W, 3), got {tuple(rgb.shape)}")
    if rgb.shape[-1] == 3 and rgb.shape[-3] != 3:
        rgb = rgb.permute(0, 1, 2, 5, 3, 4)
    rgb = rgb.to(device, non_blocking=True)
    x = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float()
    b, t, e, c, h, w = x.shape
    out = size or (w, h)
    if fovea > 0 or "crop" in augment:
        from egosynth.train import augment as aug
        from egosynth.train.fovea import fovea_boxes, foveate, gaze_boxes

        if fovea > 0:
            boxes = gaze_boxes(batch, tuple(x.shape), fovea, out, device)
        else:  # the whole frame (the largest centred window of the output's aspect ratio)
            centre = torch.tensor([[w / 2, h / 2]], device=device).expand(b * t * e, 2)
            boxes = fovea_boxes(centre, (h, w), 1.0, out)
        if "crop" in augment:
            boxes = aug.random_subboxes(boxes)
        y = foveate(x.reshape(-1, c, h, w), boxes, out)
        if "crop" in augment:
            y = aug.random_flip(y)
    elif size is not None and (w, h) != tuple(size):
        y = F.interpolate(x.reshape(-1, c, h, w), size=(size[1], size[0]), mode="area")
    else:
        y = x.reshape(-1, c, h, w)
    if "colour" in augment:
        from egosynth.train.augment import colour_jitter

        y = colour_jitter(y)
    return y.reshape(b, t, e, c, out[1], out[0]).contiguous()


def shuffle_time(frames: Tensor, seed: int, step: int) -> Tensor:
    """The same frames with time taken out: (B, T, E, ...) -> a window's T frames drawn
    without replacement from all B * T frames of the batch (other windows, other clips).

    The ablation "slowness without time": the encoder sees exactly the frames it would have
    seen, but neighbours in a window are no longer neighbours in time. A stereo pair stays a
    pair (the eye axis moves with its frame). The permutation is a function of (seed, step),
    so a resumed run shuffles as the uninterrupted one did.
    """
    b, t = frames.shape[:2]
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
    order = torch.randperm(b * t, generator=gen).to(frames.device)
    return frames.flatten(0, 1)[order].view(frames.shape)


# --------------------------------------------------------------------------- model
class TrainModel(nn.Module):
    """All trainable parts of the chosen objectives; forward returns (loss, parts)."""

    def __init__(self, cfg: TrainConfig, distributed: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        obj = cfg.objectives
        self.encoder = Encoder(cfg.encoder) if {"slow", "latent"} & set(obj) else None
        self.slow = SlowLoss(cfg.slow) if "slow" in obj else None
        self.latent = (
            LatentPredictor(
                cfg.encoder.out_dim,
                cfg.latent_hidden,
                cfg.latent_context,
                cfg.horizons,
                cfg.temperature,
                gather_distributed=distributed,
            )
            if "latent" in obj
            else None
        )
        self.prednet = PredNet(cfg.pixel_channels) if "pixel" in obj else None

    def embed(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """frames (B, T, E, 3, H, W) -> per-eye (B, T, E', D), fused (B, T, D_f)."""
        assert self.encoder is not None
        b, t = frames.shape[:2]
        per_eye, fused = self.encoder(frames.flatten(0, 1))
        return per_eye.view(b, t, *per_eye.shape[1:]), fused.view(b, t, -1)

    def pixel_input(self, frames: Tensor) -> Tensor:
        """The eyes the encoder config selects, each eye an independent sequence."""
        x = frames[:, :, list(self.cfg.encoder.eye_indices)]
        return x.transpose(1, 2).flatten(0, 1)  # (B * E', T, 3, H, W)

    def forward(self, frames: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        w = self.cfg.weights
        total = frames.new_zeros(())
        parts: dict[str, Tensor] = {}
        if self.encoder is not None:
            per_eye, fused = self.embed(frames)
            if self.slow is not None:
                loss, p = self.slow(per_eye.float())
                total = total + w.get("slow", 1.0) * loss
                parts.update({"slow": loss, **{f"slow/{k}": v for k, v in p.items()}})
            if self.latent is not None:
                loss, p = self.latent(fused.float())
                total = total + w.get("latent", 1.0) * loss
                parts.update({"latent": loss, **{f"latent/{k}": v for k, v in p.items()}})
        if self.prednet is not None:
            _, errors = self.prednet(self.pixel_input(frames))
            loss = prednet_loss([e.float() for e in errors])
            total = total + w.get("pixel", 1.0) * loss
            parts["pixel"] = loss
        return total, {k: v.detach() for k, v in parts.items()}
