"""The CPU kernels of guided and baked rendering: one compiled loop per ray (numba).

The torch code in egosynth.render.grid (`BakedGrid`) is the reference and the GPU path: it
marches every ray through all its bins as whole tensors. On a CPU that is a soup of
(rays x bins) temporaries and cache-hostile `grid_sample` calls (~35 M look-ups/s on 2 threads
for a 256³ grid); here each ray is one loop that reads the uint8 density grid (16 MB instead of
64 MB of float32), stops once it is opaque, and looks colour up at its quantiles in the same
pass. Same bins, same weights, same quantiles: tests hold the two paths to float tolerance.

Conventions shared with BakedGrid: grids are x-major (R, R, R) arrays spanning the box
[lo, hi] with their first and last points on its faces (grid_sample's align_corners=True),
look-ups outside the box clamp to its border, ln(density) is interpolated, then exponentiated.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

# Stop a ray's march once its transmittance is below this: what is left can change its colour
# by at most this much (the torch path marches on, the difference stays below it).
OPAQUE_TRANSMITTANCE = 1e-4
# Bins that take at least REFINE_WEIGHT of a ray's light in the first march are re-read at
# REFINE_STEPS points (their surface is placed 4x finer; see docs/nerf_modes.md).
REFINE_WEIGHT = 0.05
REFINE_STEPS = 4
RAYS_PER_TASK = 256  # rays per parallel task (each task allocates its buffers once)


def use_threads(n: int) -> None:
    """Run the kernels on n threads (at most numba's pool)."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@njit(cache=True, fastmath=True, inline="always")
def _cell(x: float, n: int) -> tuple[int, float]:
    """Lower grid index and fraction of continuous index x on an axis of n points (clamped)."""
    x = min(max(x, 0.0), n - 1.0)
    i = min(int(x), n - 2)
    return i, x - i


@njit(cache=True, fastmath=True, inline="always")
def _density_q(dq: NDArray, gx: float, gy: float, gz: float) -> float:
    """Trilinear uint8 grid value at continuous grid indices (gx, gy, gz)."""
    n = dq.shape[0]
    i, fx = _cell(gx, n)
    j, fy = _cell(gy, n)
    k, fz = _cell(gz, n)
    c00 = dq[i, j, k] * (1 - fz) + dq[i, j, k + 1] * fz
    c01 = dq[i, j + 1, k] * (1 - fz) + dq[i, j + 1, k + 1] * fz
    c10 = dq[i + 1, j, k] * (1 - fz) + dq[i + 1, j, k + 1] * fz
    c11 = dq[i + 1, j + 1, k] * (1 - fz) + dq[i + 1, j + 1, k + 1] * fz
    return (c00 * (1 - fy) + c01 * fy) * (1 - fx) + (c10 * (1 - fy) + c11 * fy) * fx


@njit(cache=True, fastmath=True, inline="always")
def _density(sigma_lut: NDArray, q: float, ld_step: float) -> float:
    """exp(ld_lo + q * ld_step) without a libm call: the table holds exp at whole q, and the
    rest, x = frac(q) * ld_step < 0.07, is its Taylor series (error < x^5 / 120 ~ 1e-8)."""
    qi = min(int(q), 254)
    x = (q - qi) * ld_step
    return sigma_lut[qi] * (1.0 + x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0)))))


@njit(cache=True, fastmath=True, inline="always")
def _alpha(tau: float) -> float:
    """1 - exp(-tau); a series below 0.05 (most bins: error < tau^6 / 720 ~ 2e-11)."""
    if tau >= 0.05:
        return 1.0 - math.exp(-tau)
    return tau * (1.0 - tau * (0.5 - tau * (1.0 / 6.0 - tau * (1.0 / 24.0 - tau / 120.0))))


@njit(cache=True, fastmath=True)
def _colour(col: NDArray, gx: float, gy: float, gz: float, out: NDArray) -> float:
    """Weighted trilinear colour of the (C, C, C, 4) table [r, g, b, weight] into out[:3];
    returns the interpolated share of corners that hold a colour (weight > 0)."""
    n = col.shape[0]
    i, fx = _cell(gx, n)
    j, fy = _cell(gy, n)
    k, fz = _cell(gz, n)
    r = g = b = wsum = known = 0.0
    for a in range(2):
        la = fx if a else 1.0 - fx
        for c in range(2):
            lc = fy if c else 1.0 - fy
            for e in range(2):
                lam = la * lc * (fz if e else 1.0 - fz)
                cell = col[i + a, j + c, k + e]
                w = lam * cell[3]
                r += w * cell[0]
                g += w * cell[1]
                b += w * cell[2]
                wsum += w
                if cell[3] > 0:
                    known += lam
    if wsum > 0:
        out[0], out[1], out[2] = r / wsum / 255.0, g / wsum / 255.0, b / wsum / 255.0
    else:
        out[0] = out[1] = out[2] = 0.0
    return known


@njit(cache=True, fastmath=True, inline="always")
def _colour_at(colour, o, d, t, lo, sc, out):  # fmt: skip
    """`_colour` at distance t along the ray o + t d (sc: colour-grid points per unit)."""
    return _colour(colour, (o[0] + d[0] * t - lo[0]) * sc[0], (o[1] + d[1] * t - lo[1]) * sc[1],
                   (o[2] + d[2] * t - lo[2]) * sc[2], out)  # fmt: skip


@njit(cache=True, fastmath=True)
def _span(o: NDArray, d: NDArray, lo: NDArray, hi: NDArray, near: float) -> tuple[float, bool]:
    """Where a ray leaves the box, and whether its origin is inside it (BakedGrid.span)."""
    t_in, t_out = -np.inf, np.inf
    for a in range(3):
        da = d[a] if abs(d[a]) >= 1e-12 else 1e-12
        t0, t1 = (lo[a] - o[a]) / da, (hi[a] - o[a]) / da
        t_in, t_out = max(t_in, min(t0, t1)), min(t_out, max(t0, t1))
    ok = t_in <= near and t_out > near
    return (t_out if ok else near + 1.0), ok


@njit(parallel=True, cache=True, fastmath=True)
def march_rays(
    o: NDArray[np.float32],
    d: NDArray[np.float32],
    near: float,
    dq: NDArray[np.uint8],
    ld_lo: float,
    ld_step: float,
    lo: NDArray[np.float32],
    hi: NDArray[np.float32],
    samples: int,
    n_colour: int,
    max_escape: float,
    escape_min: float,
    colour: NDArray[np.uint8],
    with_colour: bool,
    min_known: float,
    out_rgb: NDArray[np.float32],
    out_depth: NDArray[np.float32],
    out_acc: NDArray[np.float32],
    out_tc: NDArray[np.float32],
    out_exit: NDArray[np.float32],
    out_flags: NDArray[np.uint8],
    out_known: NDArray[np.float32],
) -> None:
    """March each ray through `samples` uniform bins from `near` to the box exit.

    Writes accumulation, the median depth, the colour quantiles' distances, the box exit and
    flags (bit 0: the grid can answer the ray, bit 1: light escapes past the box); with_colour:
    also the baked colour composite and the least known share among the colour look-ups (the
    exit colour replaces the last quantile's only where its own share reaches min_known).
    """
    n, nd = len(o), dq.shape[0]
    nc = colour.shape[0]
    sigma_lut = np.exp(ld_lo + np.arange(256) * ld_step)
    blocks = (n + RAYS_PER_TASK - 1) // RAYS_PER_TASK
    for blk in prange(blocks):
        # per-task buffers: a heap allocation per ray costs as much as a tenth of its march
        w, tau, tstart = np.empty(samples), np.empty(samples), np.empty(samples)
        sub, refined = np.empty((samples, REFINE_STEPS)), np.empty(samples, np.bool_)
        so, sd, sc = np.empty(3), np.empty(3), np.empty(3)
        targets, places = np.empty(n_colour + 1), np.empty(n_colour + 1)
        c, mean = np.empty(3), np.empty(3)
        for a in range(3):
            sc[a] = (nc - 1) / (hi[a] - lo[a])
        # The ray's body is inline helpers only: one compiled call per ray, with its ~40
        # arrays and scalars, cost more than the march itself (~2x on room_0, 2 threads).
        for ray in range(blk * RAYS_PER_TASK, min(n, (blk + 1) * RAYS_PER_TASK)):
            t_b, ok = _span(o[ray], d[ray], lo, hi, near)
            step = (t_b - near) / samples
            _to_grid(o[ray], d[ray], lo, hi, nd, so, sd)
            trans, acc = _weights(dq, sigma_lut, ld_step, so, sd, near, step, w, tau, tstart,
                                  sub, refined)  # fmt: skip
            ok = ok and trans <= max_escape
            far = ok and trans > escape_min
            out_acc[ray], out_exit[ray] = acc, t_b
            out_flags[ray] = (1 if ok else 0) | (2 if far else 0)
            _quantiles(acc, targets, places, w, tstart, sub, refined, near, step)
            out_depth[ray] = places[0]
            for k in range(n_colour):
                out_tc[ray, k] = places[k + 1]
            if with_colour:
                out_known[ray] = _baked_colour(colour, o[ray], d[ray], places, t_b, far,
                                               acc, min_known, lo, sc, c, mean,
                                               out_rgb[ray])  # fmt: skip


@njit(cache=True, fastmath=True, inline="always")
def _sigma_step(dq, sigma_lut, ld_step, so, sd, t, length):  # fmt: skip
    """Optical depth of `length` of ray around distance t (density at t times length)."""
    q = _density_q(dq, so[0] + sd[0] * t, so[1] + sd[1] * t, so[2] + sd[2] * t)
    return _density(sigma_lut, q, ld_step) * length


@njit(cache=True, fastmath=True, inline="always")
def _weights(dq, sigma_lut, ld_step, so, sd, near, step, w, tau, tstart, sub, refined):  # fmt: skip
    """Compositing weights of one ray's bins (BakedGrid._torch_march, same rule): a first march
    at the bin centres; bins with >= REFINE_WEIGHT of the light re-read at REFINE_STEPS
    points; the weights composited again. Returns (transmittance left, accumulation)."""
    samples, R = len(w), REFINE_STEPS
    trans, acc, last = 1.0, 0.0, samples
    for s in range(samples):  # first march; stop where it is opaque
        tau[s] = _sigma_step(dq, sigma_lut, ld_step, so, sd, near + (s + 0.5) * step, step)
        a = _alpha(tau[s])
        tstart[s], w[s], refined[s] = trans, trans * a, False
        acc += w[s]
        trans *= 1.0 - a
        if trans < OPAQUE_TRANSMITTANCE:
            last = s + 1
            break
    first = last
    for s in range(last):  # the bins that hold the light, re-read finer
        if w[s] >= REFINE_WEIGHT:
            refined[s], first = True, min(first, s)
            tot = 0.0
            for r in range(R):
                t = near + (s + (r + 0.5) / R) * step
                sub[s, r] = _sigma_step(dq, sigma_lut, ld_step, so, sd, t, step / R)
                tot += sub[s, r]
            tau[s] = tot
    if first < last:  # composite again from the first refined bin, and on past `last` if
        trans = tstart[first]  # the finer reading let light through (the torch rule)
        acc = 0.0
        for s in range(first):
            acc += w[s]
        for s in range(first, samples):
            if s >= last:
                if trans < OPAQUE_TRANSMITTANCE:
                    break
                t = near + (s + 0.5) * step
                tau[s] = _sigma_step(dq, sigma_lut, ld_step, so, sd, t, step)
                refined[s] = False
                last = s + 1
            a = _alpha(tau[s])
            tstart[s], w[s] = trans, trans * a
            acc += w[s]
            trans *= 1.0 - a
    for s in range(last, samples):  # bins never reached hold no light
        tstart[s], w[s], refined[s] = trans, 0.0, False
    return trans, acc


@njit(cache=True, fastmath=True, inline="always")
def _place(qv, s, before, w, tstart, sub, refined, near, step):  # fmt: skip
    """Where the cumulative weight reaches qv, scanning on from bin s (cumulative weight
    `before` ahead of it): linear inside a bin, or inside the sub-bin of a refined one.
    Returns (bin, weight ahead of it, distance)."""
    samples = len(w)
    while s < samples - 1 and before + w[s] < qv:
        before += w[s]
        s += 1
    if not refined[s]:
        f = (qv - before) / w[s] if w[s] > 1e-12 else 1.0
        return s, before, near + step * (s + min(max(f, 0.0), 1.0))
    R = sub.shape[1]
    trans, cum = tstart[s], before
    for r in range(R):
        sw = trans * _alpha(sub[s, r])
        if cum + sw >= qv or r == R - 1:
            f = (qv - cum) / sw if sw > 1e-12 else 1.0
            return s, before, near + step * (s + (r + min(max(f, 0.0), 1.0)) / R)
        cum += sw
        trans *= 1.0 - _alpha(sub[s, r])
    return s, before, near + step * (s + 1.0)  # not reached


@njit(cache=True, fastmath=True, inline="always")
def _to_grid(o, d, lo, hi, nd, so, sd):  # fmt: skip
    """The ray o + t d in continuous density-grid indices: so + t sd."""
    for a in range(3):
        scale = (nd - 1) / (hi[a] - lo[a])
        so[a] = (o[a] - lo[a]) * scale
        sd[a] = d[a] * scale


@njit(cache=True, fastmath=True, inline="always")
def _quantiles(acc, targets, places, w, tstart, sub, refined, near, step):  # fmt: skip
    """places[0]: the median depth; places[1:]: the n colour quantiles (k + 0.5) / n of the
    accumulation, found in one scan of the cumulative weight each."""
    n_colour = len(targets) - 1
    targets[0] = 0.5
    for k in range(n_colour):
        targets[k + 1] = (k + 0.5) / n_colour * acc
    s, before = 0, 0.0
    for qi in range(n_colour + 1):
        if qi == 1:  # quantiles start again from the first bin (0.5 may lie beyond them)
            s, before = 0, 0.0
        s, before, places[qi] = _place(targets[qi], s, before, w, tstart, sub, refined, near, step)


@njit(cache=True, fastmath=True, inline="always")
def _baked_colour(colour, o, d, places, t_b, far, acc, min_known, lo, sc, c, mean,
                  rgb):  # fmt: skip
    """The baked colour composite of one ray into rgb: the mean of the colour look-ups at the
    quantiles places[1:], what is left coloured by the box exit (where its own known share
    reaches min_known, on rays whose light escapes) else by the last quantile. Returns the
    least known share among the quantile look-ups."""
    n_colour = len(places) - 1
    mean[:] = 0.0
    least = 1.0
    for k in range(n_colour):
        least = min(least, _colour_at(colour, o, d, places[k + 1], lo, sc, c))
        for a in range(3):
            mean[a] += c[a] / n_colour
    rest0, rest1, rest2 = c[0], c[1], c[2]  # the last quantile's colour
    if far:
        if _colour_at(colour, o, d, t_b, lo, sc, c) >= min_known:
            rest0, rest1, rest2 = c[0], c[1], c[2]
    rgb[0] = mean[0] * acc + (1.0 - acc) * rest0
    rgb[1] = mean[1] * acc + (1.0 - acc) * rest1
    rgb[2] = mean[2] * acc + (1.0 - acc) * rest2
    return least


@njit(parallel=True, cache=True)
def fill_colour(
    rgb: NDArray[np.uint8], known: NDArray[np.bool_]
) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """One layer of colour grown around the known points: each unknown point with known
    neighbours (26-neighbourhood) gets their mean colour."""
    n = known.shape[0]
    out, got = rgb.copy(), known.copy()
    for i in prange(n):
        for j in range(n):
            for k in range(n):
                if known[i, j, k]:
                    continue
                s0 = s1 = s2 = 0.0
                m = 0
                for a in range(max(i - 1, 0), min(i + 2, n)):
                    for b in range(max(j - 1, 0), min(j + 2, n)):
                        for c in range(max(k - 1, 0), min(k + 2, n)):
                            if known[a, b, c]:
                                s0 += rgb[a, b, c, 0]
                                s1 += rgb[a, b, c, 1]
                                s2 += rgb[a, b, c, 2]
                                m += 1
                if m:
                    out[i, j, k, 0] = np.uint8(round(s0 / m))
                    out[i, j, k, 1] = np.uint8(round(s1 / m))
                    out[i, j, k, 2] = np.uint8(round(s2 / m))
                    got[i, j, k] = True
    return out, got


@njit(parallel=True, cache=True, fastmath=True)
def confidence(
    dq: NDArray[np.uint8],
    ld_lo: float,
    ld_step: float,
    known: NDArray[np.bool_],
    depth: float,
    floor: float,
) -> NDArray[np.uint8]:
    """Weight of each known colour-grid point: the field's opacity over `depth` model units at
    the point (from the density grid), plus `floor`, scaled to 1..255; 0 where unknown."""
    n, nd = known.shape[0], dq.shape[0]
    out = np.zeros(known.shape, np.uint8)
    scale = (nd - 1) / (n - 1)
    for i in prange(n):
        for j in range(n):
            for k in range(n):
                if known[i, j, k]:
                    q = _density_q(dq, i * scale, j * scale, k * scale)
                    a = 1.0 - math.exp(-math.exp(ld_lo + q * ld_step) * depth)
                    out[i, j, k] = max(1, min(255, round(255.0 * (a + floor) / (1.0 + floor))))
    return out
