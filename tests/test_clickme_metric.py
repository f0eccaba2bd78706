"""The ClickMe alignment metric, saliency methods and harmonizer loss (egosynth.eval).

Golden values marked "TF" were produced by running the reference code (serre-lab/Harmonization
blur.py / clickme_dataset.py / loss.py / pyramid.py, TensorFlow 2.21 CPU) on the same
formula-generated inputs; see docs/eval.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from egosynth.eval import metrics as M

CEILING = 0.65753


# --------------------------------------------------------------------------- spearman & score
def test_identical_maps_give_rho_one_and_alignment_over_ceiling():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 224, 224)).astype(np.float32)
    scores = M.score_saliency(maps, maps.copy())
    np.testing.assert_allclose(scores.spearman, 1.0, atol=1e-12)
    assert scores.alignment == pytest.approx(1 / CEILING, abs=1e-12)
    np.testing.assert_allclose(scores.dice, 1.0, atol=1e-9)
    np.testing.assert_allclose(scores.iou, 1.0, atol=1e-9)


def test_reversed_ranks_give_minus_one():
    rng = np.random.default_rng(1)
    a = rng.permutation(50176).reshape(1, 224, 224).astype(np.float32)
    reversed_ranks = (50175 - a).astype(np.float32)
    assert M.spearman_correlation(a, reversed_ranks)[0] == pytest.approx(-1.0, abs=1e-12)
    assert M.spearman_correlation(a, -a)[0] == pytest.approx(-1.0, abs=1e-12)
    assert M.alignment_score([-1.0, -1.0]) == pytest.approx(-1 / CEILING)


def _maps(min_side: int = 4):
    shape = st.tuples(st.integers(1, 3), st.integers(min_side, 12), st.integers(min_side, 12))
    return shape.flatmap(
        lambda s: st.tuples(
            hnp.arrays(np.int64, s, elements=st.integers(0, 40)),
            hnp.arrays(np.int64, s, elements=st.integers(0, 40)),
        )
    )


INCREASING = [
    lambda x: 3.0 * x + 7.0,
    lambda x: x**3,
    lambda x: np.exp(x / 20.0),
    lambda x: np.log1p(x),
]


@settings(max_examples=60, deadline=None)
@given(_maps(), st.sampled_from(range(len(INCREASING))), st.sampled_from(["a", "b", "both"]))
def test_monotone_transform_leaves_scores_unchanged(pair, which_fn, side):
    a, b = (x.astype(np.float32) for x in pair)
    fn = INCREASING[which_fn]
    ta = fn(a).astype(np.float32) if side in ("a", "both") else a
    tb = fn(b).astype(np.float32) if side in ("b", "both") else b
    base, moved = M.score_saliency(a, b), M.score_saliency(ta, tb)
    np.testing.assert_array_equal(np.isnan(base.spearman), np.isnan(moved.spearman))
    np.testing.assert_allclose(moved.spearman, base.spearman, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(moved.dice, base.dice, atol=1e-12)
    np.testing.assert_allclose(moved.iou, base.iou, atol=1e-12)
    # A decreasing transform of one side flips the sign.
    flipped = M.spearman_correlation(a, -b)
    np.testing.assert_allclose(flipped, -base.spearman, atol=1e-12, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(_maps(min_side=2))
def test_spearman_matches_scipy_with_ties(pair):
    from scipy.stats import spearmanr

    a, b = (x.astype(np.float32) for x in pair)
    ours = M.spearman_correlation(a, b)
    for k in range(a.shape[0]):
        x, y = a[k].ravel(), b[k].ravel()
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            assert math.isnan(ours[k])  # scipy: undefined for a constant input
            continue
        assert ours[k] == pytest.approx(spearmanr(x, y)[0], abs=1e-12)


def test_constant_map_gives_nan_like_the_reference():
    a = np.zeros((2, 8, 8), np.float32)
    b = np.arange(128, dtype=np.float32).reshape(2, 8, 8)
    a[1] = b[1]
    scores = M.score_saliency(a, b)
    assert math.isnan(scores.spearman[0]) and scores.spearman[1] == pytest.approx(1.0)
    assert math.isnan(scores.alignment)  # np.mean, as clickme.py L83
    assert scores.summary()["n_nan"] == 1


def test_dice_and_iou_golden_case():
    # 10x10 maps, 90th percentile of 0..99 is 89.1: the top set is exactly 10 pixels.
    a = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    b = a.copy().ravel()
    # Swap five of a's top ten (90..94) with five low values (0..4): 5 shared top pixels.
    b[90:95], b[0:5] = a.ravel()[0:5], a.ravel()[90:95]
    b = b.reshape(1, 10, 10)
    assert M.dice(a, b)[0] == pytest.approx(2 * 5 / 20)
    assert M.intersection_over_union(a, b)[0] == pytest.approx(5 / 15)


def test_score_saliency_accepts_channel_axis_and_rejects_shape_mismatch():
    rng = np.random.default_rng(2)
    s = rng.random((2, 16, 16)).astype(np.float32)
    h = rng.random((2, 16, 16)).astype(np.float32)
    flat = M.score_saliency(s, h)
    with_axis = M.score_saliency(s[..., None], h[..., None])
    np.testing.assert_allclose(with_axis.spearman, flat.spearman)
    with pytest.raises(ValueError, match="differ in shape"):
        M.spearman_correlation(s, h[:, :8])
    merged = M.AlignmentScores().extend(flat).extend(flat)
    assert len(merged) == 4 and merged.alignment == pytest.approx(flat.alignment)


# --------------------------------------------------------------------------- blur
def test_kernel_matches_reference_formula_and_tf():
    k = M.gaussian_kernel()
    assert k.shape == (10, 10) and k.dtype == np.float32
    # Independent restatement: x runs -5..4 left to right, y runs 4..-5 top to bottom.
    expected = np.array(
        [[math.exp(-((c - 5) ** 2 + (4 - r) ** 2) / 200.0) for c in range(10)] for r in range(10)]
    )
    expected /= expected.sum()
    np.testing.assert_allclose(k, expected, rtol=1e-6)
    assert np.unravel_index(np.argmax(k), k.shape) == (4, 5)  # off-centre peak
    # TF values of the reference kernel at [0,0], [4,5], [4,0], [9,9].
    tf_values = [0.008855815045535564, 0.01087073516100645, 0.009593389928340912]
    np.testing.assert_array_equal(
        k[[0, 4, 4, 9], [0, 5, 0, 9]], np.float32([*tf_values, tf_values[0]])
    )
    assert k.sum() == pytest.approx(1.0, abs=1e-6)


def test_blur_is_tf_same_cross_correlation_with_zero_padding():
    k = M.gaussian_kernel()
    img = np.zeros((20, 20), np.float32)
    img[7, 11] = 1.0
    out = M.gaussian_blur(img)
    # Delta response of a cross-correlation padded 4 before / 5 after: out[i, j] = k[7-i+4, 11-j+4].
    expected = np.zeros((20, 20))
    for i in range(20):
        for j in range(20):
            r, c = 7 - i + 4, 11 - j + 4
            if 0 <= r < 10 and 0 <= c < 10:
                expected[i, j] = k[r, c]
    np.testing.assert_allclose(out, expected, atol=1e-9)
    # Zero padding: a constant image loses mass at the borders, keeps it inside.
    flat = M.gaussian_blur(np.ones((20, 20), np.float32))
    assert flat[10, 10] == pytest.approx(1.0, abs=1e-6)
    assert flat[0, 0] < 0.5 and flat[19, 19] < 0.5


# --------------------------------------------------------------------------- resize
def test_tf_bilinear_hand_cases():
    up = M.tf_resize_bilinear(np.array([[0.0, 4.0]])[..., None], (1, 4))[..., 0]
    np.testing.assert_array_equal(up, [[0.0, 1.0, 3.0, 4.0]])  # half-pixel, edge-clamped
    down = M.tf_resize_bilinear(np.array([[0.0, 1.0, 2.0, 3.0]])[..., None], (1, 2))[..., 0]
    np.testing.assert_array_equal(down, [[0.5, 2.5]])
    # 256 -> 64 samples at 4d + 1.5 (no antialiasing): a ramp gives exactly that.
    ramp = np.tile(np.arange(256, dtype=np.float32), (4, 1))[..., None]
    np.testing.assert_array_equal(
        M.tf_resize_bilinear(ramp, (4, 64))[0, :, 0], 4 * np.arange(64) + 1.5
    )
    same = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert M.tf_resize_bilinear(same, (2, 2)).dtype == np.float32


def test_tf_bilinear_agrees_with_torch_half_pixel_upsampling():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 64, 64, 1)).astype(np.float32)
    ours = M.tf_resize_bilinear(x, (224, 224))
    theirs = (
        torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            size=(224, 224),
            mode="bilinear",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_heatmap_pipeline_matches_tensorflow_golden_values():
    i, j = np.mgrid[:256, :256]
    raw = np.round(
        127.5
        + 127.5
        * np.sin(i / 7.0)
        * np.cos(j / 11.0)
        * np.exp(-((i - 90) ** 2 + (j - 160) ** 2) / 6000.0)
    ).astype(np.uint8)
    out = M.preprocess_clickme_heatmaps(raw)
    assert out.shape == (1, 224, 224) and out.dtype == np.float32
    tf_points = {  # TF
        (0, 0): 46.590484619140625,
        (0, 223): 35.72443389892578,
        (100, 37): 127.5794906616211,
        (223, 223): 31.923049926757812,
        (57, 180): 124.50598907470703,
        (131, 5): 91.71994018554688,
    }
    for (y, x), value in tf_points.items():
        assert out[0, y, x] == pytest.approx(value, rel=1e-6)
    assert out[0].astype(np.float64).sum() == pytest.approx(5916959.991153717, rel=1e-7)
    assert np.unravel_index(np.argmax(out[0]), (224, 224)) == (64, 149)


def test_score_clickme_blurs_raw_maps_first():
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, (2, 256, 256)).astype(np.uint8)
    human = M.preprocess_clickme_heatmaps(raw)
    scores = M.score_clickme(human, raw)
    np.testing.assert_allclose(scores.spearman, 1.0, atol=1e-12)


# --------------------------------------------------------------------------- saliency (torch)
def _linear_model(torch, channels=3, side=8, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(channels * side * side, classes)
    )
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, channels * side * side, generator=gen))
    return model


def test_gradient_saliency_is_abs_weight_max_over_channels():
    torch = pytest.importorskip("torch")
    from egosynth.eval.saliency import saliency_maps

    model = _linear_model(torch)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 1])
    sal = saliency_maps(model, x, labels)
    w = model[1].weight.detach().view(4, 3, 8, 8)
    expected = w[labels].abs().amax(dim=1).numpy()
    np.testing.assert_allclose(sal, expected, rtol=1e-6)
    # Same through captum's Saliency, and with channels-last numpy input.
    np.testing.assert_allclose(
        saliency_maps(model, x, labels, method="saliency"), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        saliency_maps(model, x.permute(0, 2, 3, 1).numpy(), labels.numpy(), channels_last=True),
        expected,
        rtol=1e-6,
    )
    assert model.training  # Sequential starts in training mode: restored afterwards


def test_integrated_gradients_on_linear_model_is_input_times_weight():
    torch = pytest.importorskip("torch")
    from egosynth.eval.saliency import saliency_maps

    model = _linear_model(torch)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, 0, 2])
    w = model[1].weight.detach().view(4, 3, 8, 8)
    expected = (x * w[labels]).abs().amax(dim=1).numpy()
    ig = saliency_maps(model, x, labels, method="integrated_gradients", n_steps=8)
    np.testing.assert_allclose(ig, expected, rtol=1e-4, atol=1e-6)
    ixg = saliency_maps(model, x, labels, method="input_x_gradient")
    np.testing.assert_allclose(ixg, expected, rtol=1e-5, atol=1e-6)


def test_label_free_embedding_saliency_and_bad_method():
    torch = pytest.importorskip("torch")
    from egosynth.eval.saliency import saliency_maps

    model = _linear_model(torch)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    sal = saliency_maps(model, x, None, target="embedding_norm")
    # d ||Wx + b||^2 / dx = 2 W^T (Wx + b)
    with torch.no_grad():
        out = model(x)
    w = model[1].weight.detach()
    expected = (2 * out @ w).view(2, 3, 8, 8).abs().amax(dim=1).numpy()
    np.testing.assert_allclose(sal, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown saliency method"):
        saliency_maps(model, x, torch.tensor([0, 1]), method="nope")
    with pytest.raises(ValueError, match="needs labels"):
        saliency_maps(model, x, None)


# --------------------------------------------------------------------------- harmonizer (torch)
def _formula_maps():
    n, y, x = np.mgrid[:3, :224, :224]
    sal = (np.sin(0.05 * y * (n + 1)) * np.cos(0.03 * x) + 0.1 * n).astype(np.float32)
    hm = ((1 + np.cos(0.02 * (y - 50 * n))) * np.exp(-(((x - 112) / 60.0) ** 2))).astype(np.float32)
    return sal, hm


def test_harmonizer_parts_match_tensorflow_golden_values():
    torch = pytest.importorskip("torch")
    from egosynth.eval import harmonizer as H

    sal, hm = (torch.from_numpy(a) for a in _formula_maps())
    sa = H.standardize_cut(sal)
    hh = H.standardize_cut(hm)
    hh = hh / (hh.amax((1, 2), keepdim=True) + 1e-6) * (sa.amax((1, 2), keepdim=True) + 1e-6)
    levels = H.pyramid(sa[:, None], 5)
    assert [tuple(level.shape[-2:]) for level in levels] == [
        (224, 224),
        (112, 112),
        (56, 56),
        (28, 28),
        (14, 14),
        (7, 7),
    ]
    assert levels[3][1, 0, 0, 0].item() == pytest.approx(1.0135252475738525, rel=1e-5)  # TF
    assert levels[4][2, 0, 13, 13].item() == pytest.approx(0.31342846155166626, rel=1e-5)  # TF
    tokens = torch.tensor([1.0, 0.5, 1.0])
    mse = H.pyramidal_mse_with_tokens(sa, hh, tokens)
    assert mse.item() == pytest.approx(0.44206300377845764, rel=1e-5)  # TF
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.5, 3.0], [-2.0, 0.0, 1.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 0, 3]), label_smoothing=0.1)
    assert ce.item() == pytest.approx(1.102317452430725, rel=1e-6)  # TF (Keras, smoothing 0.1)


def test_harmonizer_loss_trains_weights_through_the_input_gradient():
    torch = pytest.importorskip("torch")
    from egosynth.eval.harmonizer import harmonizer_loss, l2_penalty

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.Tanh(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 5),
    )
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 4])
    human = torch.rand(4, 32, 32)
    loss = harmonizer_loss(model, images, labels, human, lambda_harmonization=2.0)
    assert loss.total.item() == pytest.approx(
        loss.cross_entropy.item() + 2.0 * loss.harmonization.item(), rel=1e-6
    )
    (grad,) = torch.autograd.grad(loss.harmonization, model[0].weight)
    assert grad.abs().sum() > 0  # double backprop reaches the first layer's weights
    zero = harmonizer_loss(model, images, labels, human, tokens=torch.zeros(4))
    assert zero.harmonization.item() == 0.0
    with pytest.raises(ValueError, match="human_maps"):
        harmonizer_loss(model, images, labels, human[:, :16])
    # BatchNorm's weight and bias stay out of the weight penalty.
    expected = sum(
        (p**2).sum() / 2 for p in (model[0].weight, model[0].bias, model[5].weight, model[5].bias)
    )
    assert l2_penalty(model).item() == pytest.approx(expected.item(), rel=1e-6)
