"""The numba hash-grid kernel against nerfstudio's own torch HashEncoding (same table)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.nerf

torch = pytest.importorskip("torch")
encodings = pytest.importorskip("nerfstudio.field_components.encodings")


def _encoding(levels: int, log2_size: int, seed: int):
    torch.manual_seed(seed)
    enc = encodings.HashEncoding(
        num_levels=levels, min_res=16, max_res=1024, log2_hashmap_size=log2_size,
        features_per_level=2, implementation="torch",
    )  # fmt: skip
    with torch.no_grad():  # features far from nerfstudio's tiny initial scale
        enc.hash_table.uniform_(-2.0, 2.0)
    return enc


@settings(max_examples=25)
@given(
    levels=st.integers(1, 8),
    log2_size=st.integers(8, 15),
    seed=st.integers(0, 2**16),
    lattice=st.sampled_from([0, 16, 64]),
)
def test_numba_hash_grid_equals_nerfstudio(levels: int, log2_size: int, seed: int, lattice: int):
    from egosynth.render.nerf import _hash_grid_fwd

    enc = _encoding(levels, log2_size, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((7, 33, 3), generator=g)
    if lattice:  # points on grid corners: ceil == floor, a zero offset
        x = torch.round(x * lattice) / lattice
    with torch.inference_mode():
        ref = encodings.HashEncoding.pytorch_fwd(enc, x)
        got = _hash_grid_fwd(enc, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)


def test_hash_grid_keeps_autograd_when_gradients_are_on():
    from egosynth.render.nerf import _hash_grid_fwd

    enc = _encoding(4, 10, 0)
    x = torch.rand((50, 3))
    out = _hash_grid_fwd(enc, x)  # gradients enabled: the torch path, differentiable
    out.sum().backward()
    assert enc.hash_table.grad is not None and enc.hash_table.grad.abs().sum() > 0
    with torch.no_grad():
        np.testing.assert_allclose(
            out.detach().numpy(), encodings.HashEncoding.pytorch_fwd(enc, x).numpy(), atol=1e-6
        )
