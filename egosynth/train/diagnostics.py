"""Diagnostics logged while training: slowness, collapse, next-frame error, linear probe."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor


def effective_rank(z: Tensor) -> float:
    """Effective rank (Roy & Vetterli 2007) of (N, D) embeddings: exp(entropy of the
    normalised singular values of the centred matrix). 1 for collapsed-to-a-line embeddings,
    min(N, D) for isotropic ones; a falling value during training signals collapse."""
    z = z.detach().float().reshape(-1, z.shape[-1])
    s = torch.linalg.svdvals(z - z.mean(0, keepdim=True))
    total = s.sum()
    if total <= 1e-12:
        return 0.0  # every embedding identical: fully collapsed
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def eta_values(z: Tensor) -> Tensor:
    """Slowness eta (Wiskott & Sejnowski 2002) of each output, z (B, T, D) windows.

    eta = T / (2 pi) * sqrt(<dy^2>) for y standardised to zero mean, unit variance over all
    samples and dy the frame-to-frame difference, with T the window length in frames: a pure
    sine making k cycles per window has eta close to k. Lower is slower. Returns (D,).
    """
    z = z.detach().float()
    t = z.shape[1]
    flat = z.reshape(-1, z.shape[-1])
    y = (z - flat.mean(0)) / flat.std(0).clamp_min(1e-8)
    dy2 = (y[:, 1:] - y[:, :-1]).pow(2).mean(dim=(0, 1))
    return t / (2 * math.pi) * dy2.sqrt()


def next_frame_errors(pred: Tensor, frames: Tensor) -> dict[str, float]:
    """MSE of next-frame predictions vs the copy-last-frame baseline, frames (B, T, C, H, W).

    pred[:, t] predicts frames[:, t] from frames before t; step 0 is excluded (nothing to
    copy). `ratio` = copy MSE / prediction MSE (> 1: the predictor beats copying).
    """
    mse_pred = float((pred[:, 1:].float() - frames[:, 1:].float()).pow(2).mean())
    mse_copy = float((frames[:, :-1].float() - frames[:, 1:].float()).pow(2).mean())
    return {
        "mse_pred": mse_pred,
        "mse_copy": mse_copy,
        "ratio": mse_copy / max(mse_pred, 1e-12),
    }


def dominant_instance(instance: NDArray) -> NDArray[np.int64]:
    """(N, H, W) instance ids -> (N,) id covering most pixels, ignoring background (0);
    0 where a frame shows only background."""
    flat = np.asarray(instance).reshape(len(instance), -1).astype(np.int64)
    out = np.zeros(len(flat), np.int64)
    for i, ids in enumerate(flat):
        fg = ids[ids > 0]
        if fg.size:
            out[i] = np.bincount(fg).argmax()
    return out


def frame_categories(instance: NDArray, id_to_category: Mapping[int, int]) -> NDArray[np.int64]:
    """Category index of each frame's dominant object; -1 for background-only or unknown ids."""
    dom = dominant_instance(instance)
    return np.array([id_to_category.get(int(i), -1) if i else -1 for i in dom], np.int64)


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    l2: float = 1e-3,
    steps: int = 100,
) -> dict[str, float]:
    """Multinomial logistic regression on frozen embeddings; accuracy on held-out frames.

    Features are standardised with the training statistics. Returns accuracy, the
    majority-class accuracy of the held-out set (chance to beat) and the class count.
    """
    train_x, test_x = train_x.detach().float(), test_x.detach().float()
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    n_cls = int(max(train_y.max(), test_y.max())) + 1
    lin = torch.nn.Linear(train_x.shape[1], n_cls)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(train_x), train_y)
        loss = loss + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        acc = float((lin(test_x).argmax(1) == test_y).float().mean())
    majority = float(torch.bincount(test_y, minlength=n_cls).max()) / max(len(test_y), 1)
    return {"accuracy": acc, "majority": majority, "classes": float(n_cls)}


# --------------------------------------------------------------------------- object crops
def instance_boxes(instance: NDArray, min_pixels: int = 1) -> dict[int, tuple[int, int, int, int]]:
    """(H, W) instance ids -> {id: (y0, y1, x0, x1)} bounding boxes (end-exclusive) of every
    non-background instance covering at least `min_pixels` pixels."""
    inst = np.asarray(instance)
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    boxes = {}
    for i in ids[counts >= min_pixels]:
        ys, xs = np.nonzero(inst == i)
        boxes[int(i)] = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    return boxes


def context_box(
    box: tuple[int, int, int, int],
    image_hw: tuple[int, int],
    size: tuple[int, int],
    context: float = 1.5,
    min_height: int = 16,
) -> tuple[int, int, int, int]:
    """Grow a (y0, y1, x0, x1) box around its centre to the aspect ratio of `size` (w, h),
    `context` times the object's extent (at least `min_height` rows), shifted (not clipped)
    to stay inside the image, so that every crop shows the object with some surroundings
    at one aspect ratio and resizing never distorts it."""
    img_h, img_w = image_hw
    aspect = size[0] / size[1]
    y0, y1, x0, x1 = box
    h = max((y1 - y0) * context, (x1 - x0) * context / aspect, min_height)
    h = min(h, img_h, img_w / aspect)
    w = h * aspect
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    top = round(min(max(cy - h / 2, 0), img_h - h))
    left = round(min(max(cx - w / 2, 0), img_w - w))
    return top, min(top + round(h), img_h), left, min(left + round(w), img_w)


def object_crops(
    rgb: NDArray,
    instance: NDArray,
    id_to_category: Mapping[int, int],
    size: tuple[int, int],
    min_pixels: int = 30,
    context: float = 1.5,
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """One crop per visible labelled object per frame, for the linear probe.

    rgb (T, E, H, W, 3) uint8 and instance (T, E, H, W) of one clip -> crops (N, E, h, w, 3)
    uint8 resized to `size` (w, h) and their category indices (N,). An object counts when it
    covers >= `min_pixels` pixels over the eyes; each eye is cropped around the object's box in
    that eye (the other eye's box where it is hidden in this one), with `context`.
    """
    rgb, instance = np.asarray(rgb), np.asarray(instance)
    t, e, img_h, img_w = instance.shape
    crops: list[NDArray] = []
    labels: list[int] = []
    for f in range(t):
        boxes = [instance_boxes(instance[f, k]) for k in range(e)]
        ids, counts = np.unique(instance[f][instance[f] > 0], return_counts=True)
        for i in ids[counts >= min_pixels]:
            cat = id_to_category.get(int(i), -1)
            if cat < 0:
                continue
            seen = [b[int(i)] for b in boxes if int(i) in b]
            eyes = []
            for k in range(e):
                y0, y1, x0, x1 = context_box(boxes[k].get(int(i), seen[0]), (img_h, img_w), size)
                eyes.append(_resize(rgb[f, k, y0:y1, x0:x1], size))
            crops.append(np.stack(eyes))
            labels.append(cat)
    if not crops:
        return np.zeros((0, e, size[1], size[0], 3), np.uint8), np.zeros(0, np.int64)
    return np.stack(crops), np.array(labels, np.int64)


def _resize(img: NDArray, size: tuple[int, int]) -> NDArray[np.uint8]:
    """(h, w, 3) uint8 -> (size[1], size[0], 3): area averaging down, bilinear up."""
    import cv2

    shrink = img.shape[0] > size[1]
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96); (0, 1) for n = 0.
    It assumes independent trials: crops of consecutive frames are not, so read it as a lower
    bound on the uncertainty."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
