"""The ClickMe human-alignment metric, as serre-lab/Harmonization computes it, in plain numpy.

Every function here mirrors a named piece of the reference (TensorFlow) code; docs/eval.md lists
the exact lines and the few places where the result can differ (float32 summation order of the
blur). numpy only: users who score saliency maps they computed elsewhere need neither torch nor
TensorFlow.

Shapes: saliency maps and processed human maps are (N, 224, 224); raw ClickMe heatmaps are
(N, 256, 256) (or (N, 256, 256, 1)) with values 0..255.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# harmonization/evaluation/clickme.py L13
HUMAN_SPEARMAN_CEILING = 0.65753
# harmonization/common/blur.py L8-9
BLUR_KERNEL_SIZE = 10
BLUR_SIGMA = 10
# harmonization/evaluation/metrics.py L9
EPSILON = 1e-9
# harmonization/common/clickme_dataset.py L45-55
CLICKME_SIZE = 256
BLUR_SIZE = 64
MODEL_SIZE = 224


# --------------------------------------------------------------------------- blur
def gaussian_kernel(size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The reference's (size, size) float32 Gaussian kernel, including its off-centre peak.

    Python's floor division makes the x range -(size-1)//2 .. (size-1)//2, i.e. -5..4 for size
    10, and the y range 4..-5 (top row first): the peak sits at row 4, column 5, not at the
    centre. The reference computes in float64 (int tensors divided by a Python int) and casts
    to float32 after normalising; so do we.
    """
    x_range = np.arange(-(size - 1) // 2, (size - 1) // 2 + 1, 1)
    y_range = np.arange((size - 1) // 2, -(size - 1) // 2 - 1, -1)
    xs, ys = np.meshgrid(x_range, y_range)
    kernel = np.exp(-(xs**2 + ys**2) / (2 * (sigma**2))) / (2 * np.pi * (sigma**2))
    return (kernel / np.sum(kernel)).astype(np.float32)


def _same_padding(in_size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after): the odd pixel goes after."""
    out_size = -(-in_size // stride)
    total = max((out_size - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


def conv2d_same(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """tf.nn.conv2d(images[..., None], kernel[..., None, None], 1, 'SAME') for (..., H, W).

    A cross-correlation (no kernel flip) over a zero-padded image; an even kernel pads one
    pixel less before than after, as TensorFlow does. Accumulated in float64 and returned as
    float32 (TensorFlow accumulates in float32 in an unspecified order: the results agree to
    float32 rounding, see docs/eval.md).
    """
    images = np.asarray(images, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape
    h, w = images.shape[-2:]
    top, bottom = _same_padding(h, kh, 1)
    left, right = _same_padding(w, kw, 1)
    pad = [(0, 0)] * (images.ndim - 2) + [(top, bottom), (left, right)]
    padded = np.pad(images, pad)
    out = np.zeros(images.shape, dtype=np.float64)
    for r in range(kh):
        for c in range(kw):
            out += kernel[r, c] * padded[..., r : r + h, c : c + w]
    return out.astype(np.float32)


def gaussian_blur(heatmaps: np.ndarray, kernel: np.ndarray | None = None) -> np.ndarray:
    """Blur (..., H, W) maps with the reference's kernel and 'SAME' zero padding."""
    return conv2d_same(heatmaps, gaussian_kernel() if kernel is None else kernel)


# --------------------------------------------------------------------------- resize
def _interpolation_weights(
    out_size: int, in_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF's compute_interpolation_weights with HalfPixelScaler, in float32 like the kernel."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src_floor = np.floor(src)
    lower = np.maximum(src_floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    lerp = (src - src_floor).astype(np.float32)
    return lower, upper, lerp


def tf_resize_bilinear(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """tf.image.resize(images, size, method='bilinear') (TF2: half-pixel centres, no antialias).

    `images` is (..., H, W, C); the result is float32 (..., size[0], size[1], C), computed with
    TensorFlow's float32 operations in its order (compute_lerp), so it matches bit for bit.
    Like TF, a resize to the same size returns the input cast to float32.
    """
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"tf_resize_bilinear expects (..., H, W, C), got shape {images.shape}")
    in_h, in_w = images.shape[-3], images.shape[-2]
    out_h, out_w = int(size[0]), int(size[1])
    data = images.astype(np.float32)
    if (in_h, in_w) == (out_h, out_w):
        return data
    channels = data.shape[-1]
    y_lo, y_hi, y_lerp = _interpolation_weights(out_h, in_h)
    x_lo, x_hi, x_lerp = _interpolation_weights(out_w, in_w)
    # Gather along a flattened (W * C) axis: np.take on one long axis is much faster than
    # fancy indexing with a 3-wide innermost axis. The float32 arithmetic is TF's, unchanged.
    flat = data.reshape(*data.shape[:-2], in_w * channels)
    offsets = np.arange(channels)
    cols_lo = (x_lo[:, None] * channels + offsets).ravel()
    cols_hi = (x_hi[:, None] * channels + offsets).ravel()
    xl = np.repeat(x_lerp, channels)
    rows_lo = np.take(flat, y_lo, axis=-2)
    rows_hi = np.take(flat, y_hi, axis=-2)
    top_left, top_right = np.take(rows_lo, cols_lo, axis=-1), np.take(rows_lo, cols_hi, axis=-1)
    bottom_left = np.take(rows_hi, cols_lo, axis=-1)
    bottom_right = np.take(rows_hi, cols_hi, axis=-1)
    top = top_left + (top_right - top_left) * xl
    bottom = bottom_left + (bottom_right - bottom_left) * xl
    out = (top + (bottom - top) * y_lerp[:, None]).astype(np.float32)
    return out.reshape(*data.shape[:-3], out_h, out_w, channels)


# --------------------------------------------------------------------------- ClickMe inputs
def _as_maps(heatmaps: np.ndarray, name: str) -> np.ndarray:
    """(N, H, W) float32 from (N, H, W), (N, H, W, 1) or a single (H, W)."""
    maps = np.asarray(heatmaps)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"{name}: expected (N, H, W) maps, got shape {np.shape(heatmaps)}")
    return maps.astype(np.float32)


def preprocess_clickme_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """Raw ClickMe heatmaps (N, 256, 256[, 1]) -> the (N, 224, 224) human maps scored against.

    Mirrors clickme_dataset.py L50-55 (cast to float32, bilinear resize to 64x64, Gaussian
    blur, bilinear resize to 224x224) and clickme.py L71-72 (drop the channel axis).
    """
    maps = _as_maps(heatmaps, "heatmaps")[..., None]
    maps = tf_resize_bilinear(maps, (BLUR_SIZE, BLUR_SIZE))
    maps = gaussian_blur(maps[..., 0])[..., None]
    maps = tf_resize_bilinear(maps, (MODEL_SIZE, MODEL_SIZE))
    return maps[..., 0]


def preprocess_clickme_images(images: np.ndarray) -> np.ndarray:
    """uint8 ClickMe images (N, 256, 256, 3) -> float32 0..255 (N, 224, 224, 3).

    Mirrors clickme_dataset.py L44-47 (cast to float32, bilinear resize to 224x224). Any
    model-specific preprocessing is applied after this, as clickme.py L47 does.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    return tf_resize_bilinear(images.astype(np.float32), (MODEL_SIZE, MODEL_SIZE))


# --------------------------------------------------------------------------- scores
def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"the two sets of maps differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {a.shape}")
    # The reference casts both sets to float32 before ranking (metrics.py L36-37): ties that
    # float32 creates are ties for the score too.
    return a.astype(np.float32), b.astype(np.float32)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Row-wise 1-based ranks of (N, M) values, ties sharing their mean rank (as
    scipy.stats.rankdata's 'average', which scipy.stats.spearmanr uses)."""
    n, m = values.shape
    order = np.argsort(values, axis=1)
    ordered = np.take_along_axis(values, order, axis=1)
    position = np.broadcast_to(np.arange(m), (n, m))
    new_run = np.ones((n, m), dtype=bool)
    new_run[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run_end = np.ones((n, m), dtype=bool)
    run_end[:, :-1] = new_run[:, 1:]
    first = np.maximum.accumulate(np.where(new_run, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(run_end, position, m - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, m), dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """scipy.stats.spearmanr(a[k], b[k])[0] for each row k: a row with NaN, or a constant
    row, gives NaN, as scipy does."""
    out = np.full(a.shape[0], np.nan)
    valid = ~(np.isnan(a).any(1) | np.isnan(b).any(1))
    if not valid.any():
        return out
    ra, rb = _average_ranks(a[valid]), _average_ranks(b[valid])
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.einsum("ij,ij->i", ra, ra) * np.einsum("ij,ij->i", rb, rb))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.einsum("ij,ij->i", ra, rb) / denom
    out[valid] = np.where(denom > 0, np.clip(rho, -1.0, 1.0), np.nan)
    return out


def spearman_correlation(
    heatmaps_a: np.ndarray, heatmaps_b: np.ndarray, chunk: int = 16
) -> np.ndarray:
    """Per-image Spearman rank correlation over all pixels, (N, H, W) x2 -> (N,) float64.

    Mirrors metrics.py L12-43 (scipy.stats.spearmanr on the flattened float32 maps),
    vectorised over `chunk` images at a time.
    """
    a, b = _check_pair(heatmaps_a, heatmaps_b)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    parts = [_spearman_rows(a[i : i + chunk], b[i : i + chunk]) for i in range(0, len(a), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _top_masks(a: np.ndarray, b: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """The reference's binarisation of (N, H, W) maps: strictly above each map's own
    (100 - p)th percentile (np.percentile, linear interpolation, on float32 values)."""
    flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    # Row-wise np.percentile gives the same values as the reference's per-map call.
    thr_a = np.percentile(flat_a, 100 - percentile, axis=1)
    thr_b = np.percentile(flat_b, 100 - percentile, axis=1)
    return flat_a > thr_a[:, None], flat_b > thr_b[:, None]


def _overlaps(
    heatmaps_a: np.ndarray, heatmaps_b: np.ndarray, percentile: float
) -> tuple[np.ndarray, np.ndarray]:
    """(dice, iou) per image, from one binarisation. Counts are exact integers; the ratios
    are float64 (see docs/eval.md for the reference's float32 arithmetic)."""
    a, b = _check_pair(heatmaps_a, heatmaps_b)
    ma, mb = _top_masks(a, b, percentile)
    inter = np.sum(ma & mb, axis=1).astype(np.float64)
    union = np.sum(ma | mb, axis=1).astype(np.float64)
    sizes = (np.sum(ma, axis=1) + np.sum(mb, axis=1)).astype(np.float64)
    return 2.0 * inter / (sizes + EPSILON), inter / (union + EPSILON)


def intersection_over_union(
    heatmaps_a: np.ndarray, heatmaps_b: np.ndarray, percentile: float = 10
) -> np.ndarray:
    """Per-image IoU of the top-`percentile` % pixels. Mirrors metrics.py L46-85."""
    return _overlaps(heatmaps_a, heatmaps_b, percentile)[1]


def dice(heatmaps_a: np.ndarray, heatmaps_b: np.ndarray, percentile: float = 10) -> np.ndarray:
    """Per-image Sørensen-Dice of the top-`percentile` % pixels. Mirrors metrics.py L88-120."""
    return _overlaps(heatmaps_a, heatmaps_b, percentile)[0]


def alignment_score(spearman: Sequence[float] | np.ndarray) -> float:
    """Mean Spearman over images / the human ceiling 0.65753 (clickme.py L82-83).

    np.mean, as the reference: one NaN (a constant saliency map) makes the score NaN.
    """
    return float(np.mean(np.asarray(spearman, dtype=np.float64)) / HUMAN_SPEARMAN_CEILING)


@dataclass
class AlignmentScores:
    """Per-image scores; the summary is what the reference's evaluate_clickme returns."""

    spearman: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dice: np.ndarray = field(default_factory=lambda: np.zeros(0))
    iou: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def alignment(self) -> float:
        return alignment_score(self.spearman)

    def __len__(self) -> int:
        return int(self.spearman.size)

    def extend(self, other: AlignmentScores) -> AlignmentScores:
        """Append another batch's scores (in place; returns self)."""
        self.spearman = np.concatenate([self.spearman, other.spearman])
        self.dice = np.concatenate([self.dice, other.dice])
        self.iou = np.concatenate([self.iou, other.iou])
        return self

    def summary(self) -> dict[str, float | int]:
        """JSON-ready means; `n_nan` counts images whose Spearman is undefined."""
        return {
            "n_images": len(self),
            "alignment_score": self.alignment,
            "spearman": float(np.mean(self.spearman)) if len(self) else float("nan"),
            "dice": float(np.mean(self.dice)) if len(self) else float("nan"),
            "iou": float(np.mean(self.iou)) if len(self) else float("nan"),
            "n_nan": int(np.isnan(self.spearman).sum()),
        }


def score_saliency(saliency: np.ndarray, human_maps: np.ndarray) -> AlignmentScores:
    """Score model saliency (N, 224, 224) against processed human maps (N, 224, 224).

    Mirrors clickme.py L65-80 for one batch: a trailing channel axis on either input is
    averaged away first (L69-72).
    """
    sal, hum = np.asarray(saliency), np.asarray(human_maps)
    if sal.ndim == 4:
        sal = sal.astype(np.float32).mean(-1)
    if hum.ndim == 4:
        hum = hum.astype(np.float32).mean(-1)
    dice_scores, iou_scores = _overlaps(sal, hum, 10)
    return AlignmentScores(
        spearman=spearman_correlation(sal, hum), dice=dice_scores, iou=iou_scores
    )


def score_clickme(saliency: np.ndarray, raw_heatmaps: np.ndarray) -> AlignmentScores:
    """Score saliency (N, 224, 224) against raw 256x256 ClickMe heatmaps (blurred here)."""
    return score_saliency(saliency, preprocess_clickme_heatmaps(raw_heatmaps))
