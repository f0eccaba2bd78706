"""A CPU kernel for the multiresolution hash encoding of nerfacto's field (numba).

Guided rendering spends half its time in the field's hash grid: nerfstudio's torch fallback
(`HashEncoding.pytorch_fwd`, used where tiny-cuda-nn is absent, i.e. on every CPU) builds
8 corner-index tensors and 8 gathered feature tensors per level before interpolating. Here each
point is one loop over levels and corners that reads the table in place: the committed rooms'
2 MB table stays in cache, and nothing of size (points x levels x 8) is ever allocated.

Same arithmetic as nerfstudio, in float32 and in its order (hash = (x * 1) ^ (y * 2654435761) ^
(z * 805459861) mod table size, plus the level's offset; the corner whose coordinate is the
ceiling is weighted by the offset from the floor): a test holds the two to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

# nerfstudio's HashEncoding.hash_fn primes, one per axis (the torch path uses them too)
HASH_PRIMES = (1, 2654435761, 805459861)
_, PRIME_Y, PRIME_Z = HASH_PRIMES


@njit(cache=True, inline="always")
def _hash(ix: int, iy: int, iz: int, size: int, base: int) -> int:
    """Table row of a grid corner at one level (nerfstudio's hash_fn)."""
    return (ix ^ (iy * PRIME_Y) ^ (iz * PRIME_Z)) % size + base


@njit(parallel=True, cache=True)
def hash_encode(
    x: NDArray[np.float32],
    scalings: NDArray[np.float32],
    table: NDArray[np.float32],
    size: int,
    out: NDArray[np.float32],
) -> None:
    """Encode points x (n, 3) in [0, 1] into out (n, L * F): for each of the L levels
    (grid resolution scalings[l], rows l * size ... of the (L * size, F) table), the
    trilinear interpolation of the F features at the point's 8 surrounding corners."""
    n, levels, feats = x.shape[0], scalings.shape[0], table.shape[1]
    one = np.float32(1.0)
    for p in prange(n):
        for lv in range(levels):
            s, base = scalings[lv], lv * size
            sx, sy, sz = x[p, 0] * s, x[p, 1] * s, x[p, 2] * s
            fx, fy, fz = math.floor(sx), math.floor(sy), math.floor(sz)
            cx, cy, cz = math.ceil(sx), math.ceil(sy), math.ceil(sz)
            ox, oy, oz = sx - np.float32(fx), sy - np.float32(fy), sz - np.float32(fz)
            # nerfstudio's corners hashed_0 .. hashed_7
            h0, h1 = _hash(cx, cy, cz, size, base), _hash(cx, fy, cz, size, base)
            h2, h3 = _hash(fx, fy, cz, size, base), _hash(fx, cy, cz, size, base)
            h4, h5 = _hash(cx, cy, fz, size, base), _hash(cx, fy, fz, size, base)
            h6, h7 = _hash(fx, fy, fz, size, base), _hash(fx, cy, fz, size, base)
            for k in range(feats):
                f03 = table[h0, k] * ox + table[h3, k] * (one - ox)
                f12 = table[h1, k] * ox + table[h2, k] * (one - ox)
                f56 = table[h5, k] * ox + table[h6, k] * (one - ox)
                f47 = table[h4, k] * ox + table[h7, k] * (one - ox)
                f0312 = f03 * oy + f12 * (one - oy)
                f4756 = f47 * oy + f56 * (one - oy)
                out[p, lv * feats + k] = f0312 * oz + f4756 * (one - oz)
