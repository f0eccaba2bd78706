"""The harmonizer loss (Fel et al. 2022) in torch, mirroring serre-lab/Harmonization's
harmonization/training/loss.py and pyramid.py line for line (see docs/eval.md):

    loss = CE(label smoothing 0.1) + lambda_h * mean_{5 pyramid levels} MSE(
               standardize_cut(saliency), standardize_cut(human) rescaled to saliency's max)

where the saliency is d(true-class logit)/d(input) averaged over colour channels (signed, as
the reference's training code does; its *evaluation* uses |grad| max over channels instead).
The input gradient is built with create_graph=True so the loss trains the model's weights
through it (double back-propagation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# pyramid.py L13-18: the 5-tap binomial filter, outer product, normalised.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def standardize_cut(heatmaps: torch.Tensor, epsilon: float = 1e-5) -> torch.Tensor:
    """(N, H, W): per-map zero mean, unit (population) std, then ReLU. loss.py L14-40."""
    means = heatmaps.mean(dim=(1, 2), keepdim=True)
    stds = heatmaps.std(dim=(1, 2), keepdim=True, unbiased=False)
    return F.relu((heatmaps - means) / (stds + epsilon))


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pyramid(maps: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """[maps, down1, ..., down_num_levels] for (N, 1, H, W) maps. pyramid.py L9-42.

    Each step: binomial 5x5 filter, stride 2, TF 'SAME' zero padding (one more pixel after
    than before on even sizes).
    """
    kernel = torch.outer(_BINOMIAL, _BINOMIAL)
    kernel = (kernel / kernel.sum()).to(maps)[None, None]
    levels = [maps]
    for _ in range(num_levels):
        top, bottom = _same_pad(maps.shape[-2], 5, 2)
        left, right = _same_pad(maps.shape[-1], 5, 2)
        maps = F.conv2d(F.pad(maps, (left, right, top, bottom)), kernel, stride=2)
        levels.append(maps)
    return levels


def pyramidal_mse_with_tokens(
    heatmaps_a: torch.Tensor,
    heatmaps_b: torch.Tensor,
    tokens: torch.Tensor,
    num_levels: int = 5,
) -> torch.Tensor:
    """Mean over the first `num_levels` pyramid levels (the full-size map is level 0) of the
    token-weighted MSE. loss.py L43-92: the pyramid is built with num_levels downsamplings
    but only levels 0..num_levels-1 enter the mean.
    """
    pa = pyramid(heatmaps_a[:, None], num_levels)
    pb = pyramid(heatmaps_b[:, None], num_levels)
    w = tokens.to(heatmaps_a)[:, None, None, None]
    return torch.stack([((pa[i] - pb[i]) ** 2 * w).mean() for i in range(num_levels)]).mean()


def input_gradient_saliency(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, saliency (N, H, W)): d sum(logits * onehot) / d images, mean over channels,
    kept differentiable in the weights. loss.py L124-133 (images are NCHW here)."""
    x = images if images.requires_grad else images.detach().requires_grad_(True)
    logits = model(x)
    score = logits.gather(1, labels.view(-1, 1).long()).sum()
    (grad,) = torch.autograd.grad(score, x, create_graph=True)
    return logits, grad.mean(dim=1)


@dataclass
class HarmonizerLoss:
    """The total and its parts (all scalar tensors; `total` is what to backpropagate)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    harmonization: torch.Tensor


def harmonizer_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    human_maps: torch.Tensor,
    tokens: torch.Tensor | None = None,
    lambda_harmonization: float = 1.0,
    label_smoothing: float = 0.1,
    num_levels: int = 5,
) -> HarmonizerLoss:
    """Cross-entropy + lambda_harmonization * pyramidal MSE of standardised saliency vs human
    maps. loss.py L95-161, without the L2 weight penalty (use the optimiser's weight decay, or
    add `l2_penalty(model)` times the reference's 1e-5 yourself).

    images (N, C, H, W) already preprocessed for the model; labels (N,) class indices;
    human_maps (N, H, W) at the image's size (e.g. ClickMe maps or synthetic part maps);
    tokens (N,) weights, 1 where a human map exists (default all ones). The model is run in
    whatever mode the caller set (the reference uses training=True).
    """
    if human_maps.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"human_maps {tuple(human_maps.shape)} must be (N, H, W) of images "
            f"{tuple(images.shape)}"
        )
    if tokens is None:
        tokens = torch.ones(images.shape[0], device=images.device)
    logits, saliency = input_gradient_saliency(model, images, labels)
    sa = standardize_cut(saliency)
    hm = standardize_cut(human_maps.to(sa))
    # loss.py L139-143: rescale the human maps to the saliency's (detached) peak.
    hm_max = hm.amax(dim=(1, 2), keepdim=True) + 1e-6
    sa_max = sa.detach().amax(dim=(1, 2), keepdim=True) + 1e-6
    hm = hm / hm_max * sa_max
    harmonization = pyramidal_mse_with_tokens(sa, hm, tokens, num_levels)
    ce = F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)
    return HarmonizerLoss(
        total=ce + lambda_harmonization * harmonization,
        cross_entropy=ce,
        harmonization=harmonization,
    )


_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.Embedding,
)
_SKIPPED_NAMES = ("class_token", "cls_token", "pos_embed", "embed")


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """sum(w**2) / 2 over trainable weights outside normalisation layers, embeddings and class
    tokens: tf.nn.l2_loss over the reference's filtered variables (loss.py L149-157). The
    reference filters by TF variable names; torch names are arbitrary, so we filter by module
    type and keep the name test for token and position embeddings."""
    skipped = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters()}
    terms = [
        p.pow(2).sum() / 2
        for name, p in model.named_parameters()
        if p.requires_grad and id(p) not in skipped and not any(s in name for s in _SKIPPED_NAMES)
    ]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()
