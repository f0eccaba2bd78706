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
