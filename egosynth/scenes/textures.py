"""Procedural solid textures and simple Lambertian shading for the mesh backend.

Textures are functions of the WORLD point (solid textures), so they need no UV maps, look the
same from every view (what a NeRF needs) and are cheap to evaluate for a batch of ray hits.
All noise comes from an integer hash of lattice coordinates: no random state, same bytes on
every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

TextureKind = Literal["solid", "noise", "checker", "planks", "stripes", "bricks"]
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Material:
    """A surface: texture kind, two colours in [0, 1], feature size in metres.

    `emissive` surfaces ignore lighting (lamps, vehicle lights).
    """

    kind: TextureKind
    color_a: RGB
    color_b: RGB = (0.0, 0.0, 0.0)
    scale: float = 0.5
    emissive: bool = False


def _hash01(ix: NDArray, iy: NDArray, iz: NDArray) -> NDArray[np.float64]:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    h = (
        ix.astype(np.int64).astype(np.uint32) * np.uint32(73856093)
        ^ iy.astype(np.int64).astype(np.uint32) * np.uint32(19349663)
        ^ iz.astype(np.int64).astype(np.uint32) * np.uint32(83492791)
    )
    # murmur-style finaliser: decorrelates neighbouring lattice points
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h.astype(np.float64) / 4294967296.0


_PERIOD = 64  # lattice period of the noise table; octaves are offset so repeats don't align


def _noise_table() -> NDArray[np.float32]:
    i = np.arange(_PERIOD)
    ix, iy, iz = np.meshgrid(i, i, i, indexing="ij")
    return _hash01(ix, iy, iz).astype(np.float32).ravel()


_TABLE = _noise_table()


def value_noise(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """Smooth value noise in [0, 1] at points (n, 3) (lattice spacing 1, period 64)."""
    i = np.floor(p)
    f = p - i
    w = f * f * (3.0 - 2.0 * f)  # smoothstep: continuous gradient across cells
    i0 = i.astype(np.int64) & (_PERIOD - 1)
    i1 = (i0 + 1) & (_PERIOD - 1)
    x0, x1 = i0[:, 0] * _PERIOD**2, i1[:, 0] * _PERIOD**2
    y0, y1 = i0[:, 1] * _PERIOD, i1[:, 1] * _PERIOD
    z0, z1 = i0[:, 2], i1[:, 2]
    T = _TABLE
    wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
    a = T[x0 + y0 + z0] + wz * (T[x0 + y0 + z1] - T[x0 + y0 + z0])
    b = T[x0 + y1 + z0] + wz * (T[x0 + y1 + z1] - T[x0 + y1 + z0])
    c = T[x1 + y0 + z0] + wz * (T[x1 + y0 + z1] - T[x1 + y0 + z0])
    d = T[x1 + y1 + z0] + wz * (T[x1 + y1 + z1] - T[x1 + y1 + z0])
    ab = a + wy * (b - a)
    cd = c + wy * (d - c)
    return ab + wx * (cd - ab)


def fbm(p: NDArray[np.float64], octaves: int = 3) -> NDArray[np.float64]:
    """Fractal sum of value noise, normalised to [0, 1]."""
    total, amp, norm = np.zeros(len(p)), 1.0, 0.0
    for o in range(octaves):
        total += amp * value_noise(p * (2.0**o) + 17.0 * o)
        norm += amp
        amp *= 0.5
    return total / norm


def _mix(a: RGB, b: RGB, t: NDArray[np.float64]) -> NDArray[np.float64]:
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    return a_ + (b_ - a_) * t[:, None]


def albedo(mat: Material, p: NDArray[np.float64]) -> NDArray[np.float64]:
    """Surface colour (n, 3) in [0, 1] of material `mat` at world points p (n, 3)."""
    s = mat.scale
    # fine variation everywhere: gives NeRFs texture to lock onto
    grain = value_noise(p / (0.25 * s))
    if mat.kind == "solid":
        return _mix(mat.color_a, mat.color_b, 0.12 * grain)
    if mat.kind == "noise":
        return _mix(mat.color_a, mat.color_b, fbm(p / s, 3))
    if mat.kind == "checker":
        c = (np.floor(p[:, 0] / s) + np.floor(p[:, 1] / s) + np.floor(p[:, 2] / s)) % 2
        return _mix(mat.color_a, mat.color_b, c) * (0.92 + 0.08 * grain)[:, None]
    if mat.kind == "planks":
        # boards along x, `s` wide; each board has its own tone and a stretched grain
        board = np.floor(p[:, 1] / s)
        tone = _hash01(board, np.zeros_like(board), np.floor(p[:, 0] / (4 * s)))
        streak = fbm(p * np.array([2.0, 40.0, 40.0]) / s, 2)
        return _mix(mat.color_a, mat.color_b, 0.6 * tone + 0.4 * streak)
    if mat.kind == "stripes":
        # vertical stripes on axis-aligned walls: x + y runs along either wall direction
        u = p[:, 0] + p[:, 1]
        c = np.floor(u / s) % 2
        return _mix(mat.color_a, mat.color_b, 0.8 * c + 0.2 * grain)
    if mat.kind == "bricks":
        bh, bw = 0.5 * s, s
        row = np.floor(p[:, 2] / bh)
        u = p[:, 0] + p[:, 1] + 0.5 * bw * (row % 2)
        col = np.floor(u / bw)
        fu, fz = u / bw - col, p[:, 2] / bh - row
        mortar = (fu < 0.05) | (fz < 0.1)
        tone = _hash01(col, row, np.zeros_like(row))
        brick = _mix(mat.color_a, np.asarray(mat.color_a) * 0.75, tone)
        return np.where(mortar[:, None], np.asarray(mat.color_b, float), brick)
    raise ValueError(f"unknown texture kind {mat.kind!r}")


def shade(
    base: NDArray[np.float64],
    points: NDArray[np.float64],
    normals: NDArray[np.float64],
    view_dirs: NDArray[np.float64],
    light: NDArray[np.float64],
    ambient: float = 0.35,
) -> NDArray[np.float64]:
    """Lambertian shading under one point light plus ambient; two-sided, no shadows.

    View-independent on purpose: a surface point has one colour from every camera, which the
    photo-consistency checks and NeRF fitting rely on.
    """
    n = np.where((np.einsum("ij,ij->i", normals, view_dirs) > 0)[:, None], -normals, normals)
    to_light = light - points
    to_light /= np.linalg.norm(to_light, axis=1, keepdims=True)
    lam = np.clip(np.einsum("ij,ij->i", n, to_light), 0.0, 1.0)
    return base * (ambient + (1.0 - ambient) * lam)[:, None]
