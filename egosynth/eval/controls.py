"""Controls scored like models on a twin's test split (docs/science.md).

A number like "alignment 0.4" means little alone. The controls bracket it:

    centre-bias      an isotropic Gaussian at the image centre, the same for every image. The
                     twin's crops are centred on the object, so this is what "looking at the
                     middle" already earns.
    shuffled-human   every image scored against another image's human map (a derangement):
                     the floor of a map that knows where objects usually are but not where this
                     one's diagnostic part is. Near 0 when parts sit anywhere; higher when the
                     data have a strong layout prior.
    random-init      the true-class-logit saliency of a randomly initialised network of the
                     baselines' architecture: what architecture and input resizing give with
                     no learning at all.
    noise-ceiling    the twin's human maps against themselves under two independent
                     perturbations of the part masks (dilation / erosion, a shift, blur
                     jitter): what a "second human" whose clicks differ only by such noise
                     would score. A model cannot be expected to beat it; the ClickMe analogue
                     is the human split-half ceiling 0.65753 that alignment is divided by.

Every control returns per-image Spearman like a model row (egosynth.eval.evaluate), so the
same intervals apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.eval.metrics import AlignmentScores, preprocess_clickme_heatmaps, score_saliency
from egosynth.eval.twin import gaussian_blur_2d

CONTROLS = ("centre-bias", "shuffled-human", "random-init", "noise-ceiling")


def centre_bias_maps(n: int, size: int = 224, sigma: float = 0.25) -> NDArray[np.float32]:
    """(n, size, size) isotropic Gaussians at the centre; sigma as a fraction of the side."""
    c = (np.arange(size) + 0.5) / size - 0.5  # pixel centres, image centre at 0
    g = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
    return np.broadcast_to(g, (n, size, size)).copy()


def derangement(n: int, seed: int = 0) -> NDArray[np.intp]:
    """A random permutation with no fixed point (no image keeps its own map); n >= 2."""
    if n < 2:
        raise ValueError(f"derangement of {n} item(s): need at least 2")
    rng = np.random.default_rng(seed)
    # Rejection sampling: about 1/e of uniform permutations are derangements.
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def shuffled_maps(human: NDArray, seed: int = 0) -> NDArray:
    """Human maps reassigned across images by a derangement."""
    return np.asarray(human)[derangement(len(human), seed)]


def _shift(mask: NDArray[np.bool_], dy: int, dx: int) -> NDArray[np.bool_]:
    """Translate a mask by (dy, dx) pixels, filling with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def morph(mask: NDArray[np.bool_], radius: int) -> NDArray[np.bool_]:
    """Dilate (radius > 0) or erode (radius < 0) by |radius| 4-neighbour steps (a diamond)."""
    m = np.asarray(mask, dtype=bool)
    grow = radius > 0
    for _ in range(abs(radius)):
        nb = [_shift(m, 1, 0), _shift(m, -1, 0), _shift(m, 0, 1), _shift(m, 0, -1)]
        if grow:
            m = m | nb[0] | nb[1] | nb[2] | nb[3]
        else:
            m = m & nb[0] & nb[1] & nb[2] & nb[3]
    return m


@dataclass(frozen=True)
class Perturbation:
    """How a second "observer" may differ from the twin's map (pixels at 256)."""

    max_radius: int = 3  # dilation / erosion by up to this many pixels
    max_shift: int = 3  # translation by up to this many pixels in y and x
    blur_jitter: float = 0.5  # blur sigma x U(1 - j, 1 + j)


def part_mask(raw_heatmap: NDArray) -> NDArray[np.bool_]:
    """The part mask behind a twin heatmap: pixels at or above half its peak.

    The twin stores the blurred mask scaled to peak 255, not the mask itself; the half-peak
    level of a blurred step edge is the edge, so thresholding there recovers the mask up to
    the pixels of parts thinner than the blur.
    """
    m = np.asarray(raw_heatmap, dtype=np.float64)
    if m.ndim == 3:
        m = m[..., 0]
    peak = m.max()
    return m >= peak / 2 if peak > 0 else np.zeros(m.shape, bool)


def perturbed_map(
    raw_heatmap: NDArray,
    rng: np.random.Generator,
    sigma: float,
    how: Perturbation = Perturbation(),
) -> NDArray[np.uint8]:
    """One independent perturbation of a twin heatmap, as a raw uint8 map (peak 255)."""
    mask = part_mask(raw_heatmap)
    if not mask.any():
        return np.zeros(mask.shape, np.uint8)
    out = morph(mask, int(rng.integers(-how.max_radius, how.max_radius + 1)))
    if not out.any():  # eroded away (a thin part): keep the unperturbed mask
        out = mask
    dy, dx = rng.integers(-how.max_shift, how.max_shift + 1, size=2)
    moved = _shift(out, int(dy), int(dx))
    out = moved if moved.any() else out  # a part at the border may leave the frame
    s = sigma * rng.uniform(1 - how.blur_jitter, 1 + how.blur_jitter)
    blurred = gaussian_blur_2d(out.astype(np.float64), s)
    return np.round(blurred / max(blurred.max(), 1e-12) * 255.0).astype(np.uint8)


def noise_ceiling_maps(
    raw_heatmaps: Sequence[NDArray] | NDArray,
    sigma: float,
    seed: int = 0,
    how: Perturbation = Perturbation(),
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Two independent perturbations of every map, processed like ClickMe maps (224x224)."""
    rng = np.random.default_rng(seed)
    a = np.stack([perturbed_map(h, rng, sigma, how) for h in raw_heatmaps])
    b = np.stack([perturbed_map(h, rng, sigma, how) for h in raw_heatmaps])
    return preprocess_clickme_heatmaps(a), preprocess_clickme_heatmaps(b)


def noise_ceiling(
    raw_heatmaps: Sequence[NDArray] | NDArray,
    sigma: float,
    seed: int = 0,
    how: Perturbation = Perturbation(),
) -> AlignmentScores:
    """Per-image scores of one perturbed human map against another (the noise ceiling)."""
    a, b = noise_ceiling_maps(raw_heatmaps, sigma, seed, how)
    return score_saliency(a, b)


def random_init_model(
    classes: Sequence[str],
    arch: str = "resnet10",
    width: int = 8,
    embed_dim: int = 64,
    input_size: int = 48,
    seed: int = 0,
) -> Any:
    """A LoadedModel (kind classifier) with random weights, built like a baseline."""
    import torch
    from torch import nn

    from egosynth.eval.baseline import Classifier
    from egosynth.eval.probe import ImageAdapter, LoadedModel
    from egosynth.train.encoders import EncoderConfig

    cfg = EncoderConfig(arch=arch, width=width, embed_dim=embed_dim)
    torch.manual_seed(seed)  # the initialisation is the control's only randomness
    clf = Classifier(cfg, len(classes))
    adapter = ImageAdapter((input_size, input_size))
    features = nn.Sequential(adapter, clf.backbone).eval()
    meta = {"config": {"seed": seed, "encoder": cfg.to_json()}}
    return LoadedModel(
        name="random-init",
        kind="classifier",
        features=features,
        classifier=nn.Sequential(adapter, clf).eval(),
        classes=list(classes),
        meta=meta,
    )


def control_row(name: str, scores: AlignmentScores, seed: int, **extra: Any) -> dict[str, Any]:
    """A report row for a map control, shaped like evaluate.score_model's rows."""
    return {
        "model": name,
        "kind": "control",
        "scoring": "control",
        "method": "map",
        "seed": seed,
        **extra,
        **scores.summary(),
        "per_image": {
            "spearman": [float(v) for v in scores.spearman],
            "dice": [float(v) for v in scores.dice],
        },
    }


def map_controls(
    human: NDArray,
    raw_heatmaps: Sequence[NDArray] | NDArray,
    sigma: float,
    seed: int = 0,
    which: Sequence[str] = ("centre-bias", "shuffled-human", "noise-ceiling"),
) -> list[dict[str, Any]]:
    """Rows for the controls that need no network, on one test split.

    `human`: (N, 224, 224) processed human maps (SplitData.heatmaps); `raw_heatmaps`: the same
    images' raw 256x256 twin heatmaps; `sigma`: the twin's blur (twin.json settings).
    """
    rows = []
    n = len(human)
    if "centre-bias" in which:
        rows.append(control_row("centre-bias", score_saliency(centre_bias_maps(n), human), seed))
    if "shuffled-human" in which and n >= 2:
        rows.append(
            control_row("shuffled-human", score_saliency(shuffled_maps(human, seed), human), seed)
        )
    if "noise-ceiling" in which:
        rows.append(control_row("noise-ceiling", noise_ceiling(raw_heatmaps, sigma, seed), seed))
    return rows
