"""Objectives: slowness under SFA constraints, InfoNCE, PredNet error units.

Slow feature analysis (Wiskott & Sejnowski 2002) minimises the mean squared temporal
derivative of each output under three constraints: zero mean, unit variance, decorrelated
outputs. Without the constraints the minimum is a constant (collapse). Two ways to impose them:

- "penalty": soft constraints, in the manner of VICReg: a squared-mean penalty (zero mean), a
  two-sided (var - 1)^2 penalty (unit variance) and lightly's VICReg `covariance_loss`
  (squared off-diagonal covariance, decorrelation);
- "whiten": differentiable whitening (Cholesky, as in W-MSE) of the batch of embeddings, so the
  constraints hold by construction; the penalties are still computed on the whitened output,
  because whitening a collapsed batch gives zeros (and zero slowness) rather than unit variance.

Stereo: the two eyes at one instant are extra positive pairs (their embeddings are pulled
together with the same squared distance as temporal neighbours).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egosynth.errors import EgosynthError

CONSTRAINTS = ("penalty", "whiten")


@dataclass
class SlowConfig:
    """Weights of the slowness objective's terms (VICReg-like magnitudes by default)."""

    constraint: str = "whiten"
    slow: float = 25.0  # temporal neighbours (frame t, t + 1)
    stereo: float = 25.0  # left and right eye at one instant
    mean: float = 1.0
    var: float = 25.0
    cov: float = 1.0
    whiten_eps: float = 1e-4

    def __post_init__(self) -> None:
        if self.constraint not in CONSTRAINTS:
            raise EgosynthError(
                f"slow: constraint = {self.constraint!r}: expected one of {list(CONSTRAINTS)}"
            )

    def to_json(self) -> dict:
        return asdict(self)


def whiten(x: Tensor, eps: float = 1e-4) -> Tensor:
    """Differentiable whitening of (N, D) samples: zero mean, identity covariance.

    Cholesky whitening (W-MSE, Ermolov et al. 2021): with cov + eps I = L L^T, returns
    (x - mean) L^{-T}. Needs N > D for a full-rank covariance.
    """
    n, d = x.shape
    if n <= d:
        raise EgosynthError(
            f"slow: whitening needs more samples than dimensions (batch gives {n} samples "
            f"for embed_dim {d}); use constraint 'penalty' or a larger batch"
        )
    xc = x - x.mean(0, keepdim=True)
    # Whitening is ill-conditioned in half precision: do it in float32 at least.
    xc32 = xc.double() if xc.dtype == torch.float64 else xc.float()
    cov = xc32.T @ xc32 / (n - 1) + eps * torch.eye(d, device=x.device, dtype=xc32.dtype)
    chol = torch.linalg.cholesky(cov)
    return torch.linalg.solve_triangular(chol, xc32.T, upper=False).T.to(x.dtype)


def temporal_slowness(z: Tensor) -> Tensor:
    """Mean squared difference of consecutive frames: z (B, T, ..., D), T >= 2."""
    if z.shape[1] < 2:
        raise EgosynthError(f"slow: windows need >= 2 frames, got {z.shape[1]}")
    return (z[:, 1:] - z[:, :-1]).pow(2).mean()


def sfa_penalties(flat: Tensor) -> dict[str, Tensor]:
    """The three SFA constraints as penalties on (N, D) embeddings (0 when all hold).

    Unit variance is two-sided, (var - 1)^2: VICReg's one-sided hinge (std >= 1) lets one
    output grow without bound and dominate the embedding spectrum, which the effective-rank
    diagnostic reads as (near) collapse. Decorrelation is lightly's VICReg covariance term.
    """
    return {
        "mean": flat.mean(0).pow(2).mean(),
        "var": (flat.var(0) - 1.0).pow(2).mean(),
        "cov": _covariance_loss(flat),
    }


class SlowLoss(nn.Module):
    """Slowness of per-eye embeddings z (B, T, E, D) under SFA constraints.

    Returns (total, parts): parts holds every term unweighted, for logging.
    """

    def __init__(self, cfg: SlowConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SlowConfig()

    def forward(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if z.dim() != 4:
            raise EgosynthError(f"slow: embeddings must be (B, T, E, D), got {tuple(z.shape)}")
        c = self.cfg
        d = z.shape[-1]
        if c.constraint == "whiten":
            z = whiten(z.reshape(-1, d), c.whiten_eps).view(z.shape)
        parts = {"slow": temporal_slowness(z)}
        parts["stereo"] = (
            (z[:, :, 0] - z[:, :, 1]).pow(2).mean() if z.shape[2] > 1 else z.new_zeros(())
        )
        parts.update(sfa_penalties(z.reshape(-1, d)))
        total = (
            c.slow * parts["slow"]
            + c.stereo * parts["stereo"]
            + c.mean * parts["mean"]
            + c.var * parts["var"]
            + c.cov * parts["cov"]
        )
        return total, parts


def _covariance_loss(x: Tensor) -> Tensor:
    # imported on first use: lightly pulls in timm and wandb (~2 s), which `egosynth train
    # --help`, configs and checkpoint readers never need
    from lightly.loss.vicreg_loss import covariance_loss

    return covariance_loss(x)


class InfoNCE(nn.Module):
    """InfoNCE between predictions and targets (N, D): row i of each is the positive pair.

    lightly's NTXentLoss (SimCLR's symmetric InfoNCE on cosine similarity): every other
    prediction and target in the batch is a negative. With `gather_distributed`, negatives are
    gathered from all DDP ranks.
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        from lightly.loss import NTXentLoss  # lightly: ~2 s to import (timm, wandb)

        self.loss = NTXentLoss(temperature=temperature, gather_distributed=gather_distributed)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.dim() != 2:
            raise EgosynthError(
                f"infonce: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be "
                "equal (N, D)"
            )
        # NTXentLoss normalises internally; float32 keeps the logits exact under autocast.
        return self.loss(pred.float(), target.float())


def error_units(actual: Tensor, predicted: Tensor) -> Tensor:
    """PredNet error units: rectified positive and negative errors stacked on channels."""
    return torch.cat([F.relu(actual - predicted), F.relu(predicted - actual)], dim=-3)


def prednet_loss(errors: list[Tensor], layer_weights: tuple[float, ...] | None = None) -> Tensor:
    """PredNet's training loss: weighted mean activity of the error units.

    errors[l]: (B, T, 2C_l, H_l, W_l) for layer l. Time step 0 (prediction from an empty state)
    gets weight 0, as in Lotter et al. (2017); layer weights default to (1, 0.1, 0.1, ...)
    ("L_0"-like: mostly the pixel layer).
    """
    if layer_weights is None:
        layer_weights = (1.0,) + (0.1,) * (len(errors) - 1)
    if len(layer_weights) != len(errors):
        raise EgosynthError(f"pixel: {len(layer_weights)} layer weights for {len(errors)} layers")
    total = errors[0].new_zeros(())
    for w, e in zip(layer_weights, errors, strict=True):
        if e.shape[1] > 1:
            total = total + w * e[:, 1:].mean()
    return total
