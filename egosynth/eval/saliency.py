"""Saliency maps of torch models, pluggable by name, as (N, H, W) numpy arrays for the metric.

Default ("gradient"): |d score / d input| with the max over colour channels, where the score is
the true-class logit. This is what the reference evaluation uses (xplique's `Saliency`:
absolute gradient of the target output, reducer "max" over channels; clickme.py L50-67).
As in the reference, the gradient is taken with respect to the model's input *after* any
model-specific preprocessing (clickme.py L47 maps preprocessing over the dataset first).

Other methods come from captum, by name: "saliency" (captum's own), "integrated_gradients",
"smoothgrad", "input_x_gradient", "guided_backprop". Every method's attribution goes through
the same reduction (absolute value, max over channels) so they are comparable. Register more
with `register_saliency`.

The score is pluggable too: `target="logit"` (default) or `target="embedding_norm"` (squared
L2 norm of the output: a label-free saliency for an encoder without a classifier head), or
any callable (outputs, labels) -> (N,) tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

TargetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (model, inputs NCHW requiring no grad, labels, target_fn, **kwargs) -> attributions NCHW
SaliencyMethod = Callable[..., torch.Tensor]


def logit_target(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The true-class logit of each example (xplique's default operator f(x)[y])."""
    return outputs.gather(1, labels.view(-1, 1).long()).squeeze(1)


def embedding_norm_target(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm of each example's output vector: needs no labels."""
    del labels
    return outputs.flatten(1).pow(2).sum(1)


TARGETS: dict[str, TargetFn] = {"logit": logit_target, "embedding_norm": embedding_norm_target}


def _gradient(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, target_fn: TargetFn
) -> torch.Tensor:
    x = inputs.detach().clone().requires_grad_(True)
    score = target_fn(model(x), labels).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


def _captum_forward(model: nn.Module, target_fn: TargetFn) -> Callable[..., torch.Tensor]:
    # Labels travel as an additional forward argument so that captum expands them along with
    # the inputs (integrated-gradient steps, smoothgrad samples).
    def forward(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return target_fn(model(x), labels)

    return forward


def _captum_saliency(model, inputs, labels, target_fn, **kwargs) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(_captum_forward(model, target_fn)).attribute(
        inputs, additional_forward_args=(labels,), abs=True, **kwargs
    )


def _integrated_gradients(model, inputs, labels, target_fn, **kwargs) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    kwargs.setdefault("n_steps", 32)
    return IntegratedGradients(_captum_forward(model, target_fn)).attribute(
        inputs, additional_forward_args=(labels,), **kwargs
    )


def _smoothgrad(model, inputs, labels, target_fn, **kwargs) -> torch.Tensor:
    from captum.attr import NoiseTunnel, Saliency

    kwargs.setdefault("nt_samples", 16)
    # SmoothGrad's usual noise: 15 % of the input range (Smilkov et al. 2017).
    span = float(inputs.max() - inputs.min()) or 1.0
    kwargs.setdefault("stdevs", 0.15 * span)
    return NoiseTunnel(Saliency(_captum_forward(model, target_fn))).attribute(
        inputs, additional_forward_args=(labels,), nt_type="smoothgrad", abs=True, **kwargs
    )


def _input_x_gradient(model, inputs, labels, target_fn, **kwargs) -> torch.Tensor:
    from captum.attr import InputXGradient

    return InputXGradient(_captum_forward(model, target_fn)).attribute(
        inputs, additional_forward_args=(labels,), **kwargs
    )


def _guided_backprop(model, inputs, labels, target_fn, **kwargs) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    if target_fn is not logit_target:
        raise ValueError("guided_backprop hooks the model's own ReLUs: only target='logit'")
    return GuidedBackprop(model).attribute(inputs, target=labels.long(), **kwargs)


METHODS: dict[str, SaliencyMethod] = {
    "gradient": lambda model, x, y, t, **kw: _gradient(model, x, y, t),
    "saliency": _captum_saliency,
    "integrated_gradients": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "input_x_gradient": _input_x_gradient,
    "guided_backprop": _guided_backprop,
}


def register_saliency(name: str, method: SaliencyMethod) -> None:
    """Add a method: method(model, inputs NCHW, labels (N,), target_fn, **kw) -> NCHW."""
    METHODS[name] = method


def reduce_channels(attributions: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): absolute value, then the max over channels (xplique's)."""
    if attributions.dim() == 3:
        return attributions.abs()
    return attributions.abs().amax(dim=1)


def _resolve_target(target: str | TargetFn) -> TargetFn:
    if callable(target):
        return target
    if target not in TARGETS:
        raise ValueError(f"unknown saliency target {target!r}; choose from {sorted(TARGETS)}")
    return TARGETS[target]


def saliency_maps(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | None = None,
    method: str = "gradient",
    target: str | TargetFn = "logit",
    batch_size: int = 32,
    channels_last: bool = False,
    **method_kwargs: Any,
) -> np.ndarray:
    """Saliency (N, H, W) float32 of `model` for `images` (N, C, H, W), or (N, H, W, C) with
    channels_last=True (the ClickMe loader's layout). Labels are class indices (N,).

    The model runs in eval mode (restored afterwards) on its own device, with gradients on
    even inside torch.no_grad(); parameter gradients are left untouched.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose from {sorted(METHODS)}")
    target_fn = _resolve_target(target)
    x_all = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    if channels_last:
        x_all = x_all.permute(0, 3, 1, 2)
    x_all = x_all.float()
    n = x_all.shape[0]
    if labels is None:
        if target_fn is logit_target:
            raise ValueError("target='logit' needs labels")
        y_all = torch.zeros(n, dtype=torch.long)
    else:
        y_all = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
        y_all = y_all.long().view(-1)
        if y_all.shape[0] != n:
            raise ValueError(f"{n} images but {y_all.shape[0]} labels")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.enable_grad():
            for start in range(0, n, batch_size):
                x = x_all[start : start + batch_size].to(device).requires_grad_(True)
                y = y_all[start : start + batch_size].to(device)
                attributions = METHODS[method](model, x, y, target_fn, **method_kwargs)
                out.append(reduce_channels(attributions.detach()).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, *x_all.shape[2:]), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)
