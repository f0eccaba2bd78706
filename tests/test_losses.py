"""Objectives and diagnostics of the trainer: each loss is low on constructed ideal inputs and
high on adversarial ones; analytic golden values where the answer is closed-form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.errors import EgosynthError
from egosynth.train.diagnostics import (
    context_box,
    dominant_instance,
    effective_rank,
    eta_values,
    frame_categories,
    instance_boxes,
    linear_probe,
    next_frame_errors,
    object_crops,
    wilson_interval,
)
from egosynth.train.encoders import Encoder, EncoderConfig
from egosynth.train.losses import (
    InfoNCE,
    SlowConfig,
    SlowLoss,
    error_units,
    prednet_loss,
    whiten,
)
from egosynth.train.predictive import LatentPredictor, PredNet

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def standardised(b: int, d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """(b, d) samples with exactly zero mean and covariance scale**2 * I (unbiased)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x / (b - 1))
    return (scale * x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T).float()


def ideal_slow(b: int, t: int, e: int, d: int, seed: int) -> torch.Tensor:
    """Constant in time, identical across eyes, varied (and decorrelated) across clips, with
    unit (unbiased) variance over all b * t * e samples."""
    n = b * t * e
    c = standardised(b, d, seed, scale=math.sqrt((n - 1) / (t * e * (b - 1))))
    return c[:, None, None, :].expand(b, t, e, d).contiguous()


def shuffled(b: int, t: int, e: int, d: int, seed: int) -> torch.Tensor:
    """Every (clip, time, eye) an independent draw: no temporal or stereo coherence."""
    return standardised(b * t * e, d, seed).view(b, t, e, d)


# --------------------------------------------------------------------------- slowness
@pytest.mark.parametrize("constraint", ["penalty", "whiten"])
def test_slow_loss_ideal_low_shuffled_high(constraint: str) -> None:
    loss = SlowLoss(SlowConfig(constraint=constraint))
    ideal, parts = loss(ideal_slow(32, 6, 2, 8, seed=1))
    bad, bad_parts = loss(shuffled(32, 6, 2, 8, seed=1))
    assert float(ideal) < 1e-2
    assert float(parts["slow"]) < 1e-6 and float(parts["stereo"]) < 1e-6
    # Independent unit-variance samples: E[(a - b)^2] = 2 per dimension.
    assert float(bad_parts["slow"]) == pytest.approx(2.0, rel=0.15)
    assert float(bad) > 100 * max(float(ideal), 1e-3)


@settings(max_examples=20, deadline=None)
@given(
    b=st.integers(12, 40),
    t=st.integers(2, 6),
    d=st.integers(2, 8),
    seed=st.integers(0, 10_000),
    constraint=st.sampled_from(["penalty", "whiten"]),
)
def test_slow_loss_prefers_slow_over_shuffled(b, t, d, seed, constraint) -> None:
    loss = SlowLoss(SlowConfig(constraint=constraint))
    assert float(loss(ideal_slow(b, t, 2, d, seed))[0]) < float(loss(shuffled(b, t, 2, d, seed))[0])


@pytest.mark.parametrize("constraint", ["penalty", "whiten"])
def test_sfa_constraints_penalise_collapse(constraint: str) -> None:
    loss = SlowLoss(SlowConfig(constraint=constraint))
    collapsed = torch.ones(16, 4, 2, 8) * 3.0  # perfectly slow, but a constant
    total, parts = loss(collapsed)
    assert float(parts["slow"]) == 0.0
    # variance 0 -> (0 - 1)^2 = 1 per dimension; weight 25.
    assert float(parts["var"]) == pytest.approx(1.0, rel=1e-4)
    assert float(total) >= 25.0
    if constraint == "penalty":
        assert float(parts["mean"]) == pytest.approx(9.0)  # mean 3 in every dimension


def test_sfa_penalises_correlated_outputs() -> None:
    base = standardised(64, 1, seed=3).repeat(1, 6)  # six copies of one output
    z = base[:, None, None, :].expand(64, 3, 1, 6).contiguous()
    penalty = SlowLoss(SlowConfig(constraint="penalty"))
    _, parts = penalty(z)
    # Each of the 30 ordered pairs has covariance 1, re-estimated over the 64 x 3 repeated
    # samples (unbiased: factor 3 * 63 / 191); squared, averaged over 6 dims.
    cov = 3 * 63 / 191
    assert float(parts["cov"]) == pytest.approx(30 * cov**2 / 6, rel=1e-4)
    _, ok = penalty(ideal_slow(64, 3, 1, 6, seed=3))
    assert float(ok["cov"]) < 1e-6


def test_stereo_positives() -> None:
    z = ideal_slow(16, 4, 2, 4, seed=0)
    _, same = SlowLoss()(z)
    z2 = z.clone()
    z2[:, :, 1] = -z2[:, :, 1]  # right eye disagrees with left
    _, diff = SlowLoss()(z2)
    assert float(same["stereo"]) == 0.0
    assert float(diff["stereo"]) > 1.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(10, 60), d=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_whiten_gives_identity_covariance(n: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 5.0
    y = whiten(x.double(), eps=0.0)
    cov = y.T @ y / (n - 1)
    assert torch.allclose(y.mean(0), torch.zeros(d, dtype=y.dtype), atol=1e-8)
    assert torch.allclose(cov, torch.eye(d, dtype=y.dtype), atol=1e-6)


def test_whiten_needs_more_samples_than_dims() -> None:
    with pytest.raises(EgosynthError, match="more samples than dimensions"):
        whiten(torch.randn(4, 8))


def test_slow_rejects_single_frame_windows() -> None:
    with pytest.raises(EgosynthError, match=">= 2 frames"):
        SlowLoss()(torch.randn(8, 1, 2, 4))


# --------------------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("n,tau", [(8, 0.1), (16, 0.5), (4, 1.0)])
def test_infonce_golden_orthonormal(n: int, tau: float) -> None:
    q = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(n)))[0]
    z = q[:n]  # orthonormal rows: positives have cosine 1, everything else 0
    nce = InfoNCE(temperature=tau)
    right = float(nce(z, z))
    golden = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert right == pytest.approx(golden, rel=1e-3, abs=1e-6)
    perm = torch.roll(torch.arange(n), 1)  # a derangement: every pairing wrong
    wrong = float(nce(z, z[perm]))
    # Positive at cosine 0; one negative (the true partner) at cosine 1, 2n - 3 at 0.
    assert wrong == pytest.approx(math.log(1 + math.exp(1 / tau) + (2 * n - 3)), rel=1e-4)
    assert wrong > right


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 24), seed=st.integers(0, 10_000))
def test_infonce_correct_pairing_beats_permuted(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    noisy = z + 0.1 * torch.randn(n, 64, generator=g)
    nce = InfoNCE(0.1)
    assert float(nce(noisy, z)) < float(nce(noisy, torch.roll(z, 1, 0)))


def test_infonce_shape_error() -> None:
    with pytest.raises(EgosynthError, match="must be equal"):
        InfoNCE()(torch.randn(4, 3), torch.randn(5, 3))


# --------------------------------------------------------------------------- pixel / PredNet
def test_error_units_golden() -> None:
    a = torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1)
    ahat = torch.tensor([0.25, 0.5, 0.5]).view(1, 3, 1, 1)
    e = error_units(a, ahat).flatten().tolist()
    assert e == [0.75, 0.0, 0.0, 0.0, 0.5, 0.0]


def test_prednet_loss_perfect_zero_copy_positive() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 5, 3, 8, 8, generator=g)
    perfect = [error_units(frames, frames)]
    assert float(prednet_loss(perfect)) == 0.0
    copy = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, :-1]], 1)
    assert float(prednet_loss([error_units(frames, copy)])) > 0.1
    # Step 0 (prediction from an empty state) does not count.
    first_only = error_units(frames, torch.cat([copy[:, :1], frames[:, 1:]], 1))
    assert float(prednet_loss([first_only])) == 0.0


@torch.no_grad()
def test_prednet_is_causal_and_shaped() -> None:
    torch.manual_seed(0)
    net = PredNet((3, 8, 16))
    x = torch.rand(2, 4, 3, 8, 12)
    pred, errs = net(x)
    assert pred.shape == x.shape
    assert [tuple(e.shape) for e in errs] == [(2, 4, 6, 8, 12), (2, 4, 16, 4, 6), (2, 4, 32, 2, 3)]
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    y = x.clone()
    y[:, 2:] = torch.rand(2, 2, 3, 8, 12)  # change the future from frame 2 on
    pred2, _ = net(y)
    assert torch.equal(pred[:, :3], pred2[:, :3])  # predictions of frames 0..2 see only < 2
    assert not torch.equal(pred[:, 3], pred2[:, 3])


def test_prednet_size_error() -> None:
    with pytest.raises(EgosynthError, match="divisible by 4"):
        PredNet((3, 4, 4))(torch.rand(1, 2, 3, 6, 8))


# --------------------------------------------------------------------------- latent predictor
@pytest.mark.parametrize("context", ["gru", "tcn"])
def test_latent_context_is_causal(context: str) -> None:
    torch.manual_seed(0)
    lp = LatentPredictor(6, hidden=8, context=context, horizons=(1, 2))
    z = torch.randn(3, 7, 6)
    z2 = z.clone()
    z2[:, 4:] += 1.0
    c, c2 = lp.contexts(z), lp.contexts(z2)
    assert torch.allclose(c[:, :4], c2[:, :4])
    assert not torch.allclose(c[:, 4:], c2[:, 4:])
    loss, parts = lp(z)
    assert set(parts) == {"nce_k1", "nce_k2"} and math.isfinite(float(loss))


def test_latent_window_too_short() -> None:
    with pytest.raises(EgosynthError, match="too short"):
        LatentPredictor(4, 8, horizons=(3,))(torch.randn(2, 3, 4))


# --------------------------------------------------------------------------- encoders
@pytest.mark.parametrize(
    "eyes,fusion,dim", [("both", "mean", 16), ("both", "concat", 32), ("left", "mean", 16)]
)
def test_encoder_shapes(eyes: str, fusion: str, dim: int) -> None:
    cfg = EncoderConfig(width=4, layers=(1, 1), embed_dim=16, eyes=eyes, fusion=fusion)
    per_eye, fused = Encoder(cfg)(torch.rand(3, 2, 3, 16, 16))
    assert per_eye.shape == (3, 2 if eyes == "both" else 1, 16)
    assert fused.shape == (3, dim)
    assert cfg.out_dim == dim


def test_encoder_width_and_depth_change_parameters() -> None:
    def count(**kw) -> int:
        return sum(p.numel() for p in Encoder(EncoderConfig(**kw)).parameters())

    assert count(width=8, layers=(1, 1)) < count(width=16, layers=(1, 1))
    assert count(width=8, layers=(1, 1)) < count(width=8, layers=(2, 2))
    assert count(width=8, layers=(1, 1)) < count(width=8, layers=(1, 1, 1))


@pytest.mark.parametrize(
    "kw,match",
    [({"arch": "vgg"}, "arch"), ({"eyes": "third"}, "eyes"), ({"layers": (0, 1)}, "layers")],
)
def test_encoder_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(EgosynthError, match=match):
        EncoderConfig(**kw)


# --------------------------------------------------------------------------- diagnostics
def test_effective_rank_golden() -> None:
    d = 6
    iso = torch.cat([torch.eye(d), -torch.eye(d)])  # centred, all singular values equal
    assert effective_rank(iso) == pytest.approx(d, rel=1e-5)
    line = torch.randn(50, 1) * torch.randn(1, d)
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.ones(10, d)) == 0.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 30), d=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_effective_rank_bounds(n: int, d: int, seed: int) -> None:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    assert 1.0 - 1e-5 <= effective_rank(z) <= min(n - 1, d) + 1e-4


@pytest.mark.parametrize("k,t", [(1, 16), (2, 20), (0.5, 10)])
def test_eta_of_sines_golden(k: float, t: int) -> None:
    b = 64  # evenly spaced phases: sample moments are exact
    phase = torch.arange(b)[:, None] * 2 * math.pi / b
    y = torch.sin(2 * math.pi * k * torch.arange(t)[None] / t + phase)
    y2 = torch.sin(2 * math.pi * 2 * k * torch.arange(t)[None] / t + phase)
    eta = eta_values(torch.stack([y, y2], -1))
    # Discrete derivative of a sine: eta = (T / pi) sin(pi k / T) (-> k for slow sines).
    n = b * t
    shrink = math.sqrt((n - 1) / n)  # unbiased vs population variance of the sine
    assert float(eta[0]) == pytest.approx(
        t / math.pi * math.sin(math.pi * k / t) * shrink, rel=0.02
    )
    assert float(eta[1]) > float(eta[0])


def test_next_frame_errors_perfect_and_copy() -> None:
    frames = torch.rand(2, 4, 3, 5, 5)
    perfect = next_frame_errors(frames, frames)
    assert perfect["mse_pred"] == 0.0 and perfect["ratio"] > 1e6
    copy = torch.cat([frames[:, :1], frames[:, :-1]], 1)
    assert next_frame_errors(copy, frames)["ratio"] == pytest.approx(1.0)


def test_frame_categories_golden() -> None:
    inst = np.zeros((3, 4, 4), np.uint16)
    inst[0, :2] = 2  # 8 pixels of instance 2
    inst[0, 3, :3] = 5  # 3 pixels of instance 5
    inst[2, 0, 0] = 7  # unknown id
    assert dominant_instance(inst).tolist() == [2, 0, 7]
    assert frame_categories(inst, {2: 1, 5: 0}).tolist() == [1, -1, -1]


def test_linear_probe_separable_and_random() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = torch.randn(90, 5, generator=g) * 0.1
    x[torch.arange(90), y] += 3.0  # class = which coordinate is large
    good = linear_probe(x[:60], y[:60], x[60:], y[60:])
    assert good["accuracy"] == 1.0
    noise = torch.randn(90, 5, generator=g)
    bad = linear_probe(noise[:60], y[:60], noise[60:], y[60:])
    assert bad["accuracy"] < 0.7


# --------------------------------------------------------------------------- object crops
def test_instance_boxes_golden() -> None:
    inst = np.zeros((6, 8), np.int32)
    inst[1:3, 2:5] = 4  # 6 pixels
    inst[5, 7] = 9  # 1 pixel
    assert instance_boxes(inst) == {4: (1, 3, 2, 5), 9: (5, 6, 7, 8)}
    assert instance_boxes(inst, min_pixels=2) == {4: (1, 3, 2, 5)}


@settings(max_examples=60, deadline=None)
@given(y0=st.integers(0, 95), x0=st.integers(0, 127), h=st.integers(1, 96), w=st.integers(1, 128))
def test_context_box_inside_image_with_target_aspect(y0: int, x0: int, h: int, w: int) -> None:
    y1, x1 = min(y0 + h, 96), min(x0 + w, 128)
    top, bottom, left, right = context_box((y0, y1, x0, x1), (96, 128), (64, 48))
    assert 0 <= top < bottom <= 96 and 0 <= left < right <= 128
    assert (right - left) / (bottom - top) == pytest.approx(4 / 3, abs=0.05)
    if (y1 - y0) * 1.5 <= 96 and (x1 - x0) * 1.5 <= 96 * 4 / 3:  # fits with context: inside
        assert top <= y0 and bottom >= y1 and left <= x0 and right >= x1


def test_object_crops_one_per_visible_labelled_object() -> None:
    rgb = np.zeros((2, 2, 48, 64, 3), np.uint8)
    inst = np.zeros((2, 2, 48, 64), np.int32)
    rgb[0, :, 10:20, 10:20] = (255, 0, 0)  # frame 0: object 1 (red) in both eyes
    inst[0, :, 10:20, 10:20] = 1
    rgb[0, :, 30:40, 40:50] = (0, 0, 255)  # object 2 (blue), labelled in the left eye only
    inst[0, 0, 30:40, 40:50] = 2
    inst[1, :, 0:2, 0:2] = 1  # frame 1: 8 pixels of object 1, below min_pixels
    inst[1, :, 20:30, 20:30] = 7  # unlabelled id
    crops, cats = object_crops(rgb, inst, {1: 0, 2: 2}, (16, 12), min_pixels=30)
    assert crops.shape == (2, 2, 12, 16, 3) and crops.dtype == np.uint8
    assert cats.tolist() == [0, 2]
    centre = crops[:, :, 6, 8]  # the object sits at the centre of its crop, in each eye
    assert (centre[0] == (255, 0, 0)).all()
    assert (centre[1] == (0, 0, 255)).all()  # the right eye borrows the left eye's box
    empty, none = object_crops(rgb[1:], inst[1:], {1: 0}, (16, 12), min_pixels=30)
    assert empty.shape == (0, 2, 12, 16, 3) and none.shape == (0,)


def test_wilson_interval_golden() -> None:
    low, high = wilson_interval(50, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
