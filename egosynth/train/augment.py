"""Augmentations of training frames, drawn independently for every frame and eye.

Aubret, Ernst, Teulière & Triesch (2022, "Time to augment self-supervised visual
representation learning") found that slowness over time plus the usual image augmentations
learns better object features than either alone: the augmentations take away the cheap cues
(exact position and scale in the view, global colour) that could make neighbouring frames
alike without recognising what is in them. Here each frame of a window and each eye gets its
own draw, so temporal and stereo positives differ by the augmentation as well as by time or
viewpoint.

- `crop`: a random window of 35-100 % of the source window's area (the whole frame, or the
  fovea with --fovea) at the training aspect ratio, anywhere inside it, mirrored left-right
  with probability 1/2 (SimCLR's random resized crop and flip, with a larger minimum scale
  because objects are small here);
- `colour`: brightness, contrast and saturation each scaled by a factor in [0.6, 1.4] with
  probability 0.8, and grey with probability 0.2 (SimCLR's colour distortion without hue).

Random numbers come from torch's global generator on the CPU, whose state every checkpoint
saves, so a resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egosynth.errors import EgosynthError

AUGMENTATIONS = ("crop", "colour")
MIN_CROP_AREA = 0.35
JITTER = 0.4  # brightness / contrast / saturation factors in [1 - JITTER, 1 + JITTER]
JITTER_P, GREY_P, FLIP_P = 0.8, 0.2, 0.5
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def parse_augment(names: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """'crop,colour' (or a list; '' / 'none' = off) -> canonical tuple of augmentations."""
    if names is None:
        return ()
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen = {s.strip().replace("color", "colour") for s in items if s.strip()} - {"none"}
    bad = sorted(chosen - set(AUGMENTATIONS))
    if bad:
        raise EgosynthError(f"--augment = {bad[0]!r}: expected a comma list of {AUGMENTATIONS}")
    return tuple(a for a in AUGMENTATIONS if a in chosen)


def random_subboxes(boxes: Tensor, min_area: float = MIN_CROP_AREA) -> Tensor:
    """Random windows inside boxes (N, 4) (x0, y0, x1, y1), same aspect ratio, area a
    fraction in [min_area, 1] of the box, uniformly placed."""
    n = len(boxes)
    scale = torch.empty(n).uniform_(min_area, 1.0).sqrt().to(boxes)
    w, h = (boxes[:, 2] - boxes[:, 0]) * scale, (boxes[:, 3] - boxes[:, 1]) * scale
    fx, fy = torch.rand(n).to(boxes), torch.rand(n).to(boxes)
    x0 = boxes[:, 0] + fx * (boxes[:, 2] - boxes[:, 0] - w)
    y0 = boxes[:, 1] + fy * (boxes[:, 3] - boxes[:, 1] - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def random_flip(x: Tensor, p: float = FLIP_P) -> Tensor:
    """Mirror each image of x (N, C, H, W) left-right with probability p."""
    flip = (torch.rand(len(x)) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def colour_jitter(x: Tensor) -> Tensor:
    """Per-image random brightness, contrast, saturation (prob. JITTER_P) and grey (prob.
    GREY_P) of x (N, 3, H, W) in [0, 1]; the result is clamped to [0, 1]."""
    n = len(x)

    def factor() -> Tensor:
        f = torch.empty(n).uniform_(1 - JITTER, 1 + JITTER)
        on = torch.rand(n) < JITTER_P
        return torch.where(on, f, torch.ones(n)).to(x)[:, None, None, None]

    b, c, s = factor(), factor(), factor()
    grey_w = torch.tensor(GREY_WEIGHTS).to(x)[None, :, None, None]
    x = (x * b).clamp(0, 1)
    mean = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    grey = (x * grey_w).sum(1, keepdim=True)
    x = ((x - grey) * s + grey).clamp(0, 1)
    to_grey = (torch.rand(n) < GREY_P).to(x.device)[:, None, None, None]
    return torch.where(to_grey, grey.expand_as(x), x)
