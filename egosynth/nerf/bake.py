"""`egosynth scenes bake`: derive a bundle's density grid and sparse colour grid.

Everything comes from the bundle's own field (egosynth.render.nerf's probes), never from the
mesh ground truth, so it works the same on runs imported from other people's nerfstudio
outputs. Steps, each deterministic (fixed grid, fixed probe rays, one torch thread):

1. ln(density) of the field on a `resolution`³ grid over the scene box grown by GRID_MARGIN,
   quantised to uint8 as it will be stored (egosynth.nerf.baked);
2. rays from PROBE_VIEWS free-space points near the box centre (where nerfstudio puts a
   capture's cameras) marched through that grid exactly as guided rendering marches: every
   point of the (coarser) colour grid whose cell gets compositing weight > COLOUR_MIN_WEIGHT on
   some probe ray is "seen", and the weighted mean direction it was seen along is kept;
3. the field's colour at every seen colour-grid point (and its neighbours, so trilinear
   look-ups have all corners), along that mean direction: one colour per point (see
   `bake_colour` for why not spherical harmonics).

The result is written next to bundle.json by egosynth.nerf.baked (a safe npz + JSON).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError
from egosynth.nerf.baked import (
    Baked,
    dequantize_log_density,
    log_density_range,
    quantize_log_density,
    write_bake,
)
from egosynth.nerf.bundle import Bundle, read_bundle

# Density grid points per axis (uint8 on disk), and the colour grid's (at most the density
# grid's). 4 views 128x96, vs the mesh ground truth (full: room_0 29.63, room_1 27.52 dB):
# density 192³ baked 28.25 / 25.21 dB, 256³ 28.72 / 26.01 dB (guided vs full 35.1 -> 36.6,
# 29.5 -> 30.9 dB). Colour 192³ -> 224³ (CPU kernel, refined march): baked 28.80 -> 28.81 /
# 26.44 -> 26.56 dB, bake 16.1 -> 18.4 / 15.5 -> 17.6 MB; 256³ would exceed the 20 MB budget.
BAKE_RESOLUTION = 256
COLOUR_RESOLUTION = 224
# The scene box grown by this factor about its centre: a capture's walls sit at or just past
# nerfstudio's box (room_0's far wall is at y = 1.11 in a [-1, 1] box).
GRID_MARGIN = 1.25
# Free space for probe viewpoints: grid points below this density per model unit.
FREE_LOG_DENSITY = math.log(10.0)
# Probe viewpoints and rays per viewpoint (Fibonacci sphere) that decide which grid points get
# a colour, and the weight a ray must give a grid point's cell for it to count as seen.
PROBE_VIEWS = 64
PROBE_RAYS = 20_000
# Bins per probe ray (the committed bakes were made with 96: more changes their bytes).
PROBE_SAMPLES = 96
COLOUR_MIN_WEIGHT = 1e-2  # 1e-3: 55 % of room_0's grid coloured (21 MB), same PSNR
# Tilt of the two extra view directions the bake reads on a sample of seen points to measure
# how view-dependent the field's colour is (reported in bake.json).
VIEW_TEST_DEG = 30.0
VIEW_TEST_POINTS = 20_000


def grid_bounds(bundle: Bundle, margin: float = GRID_MARGIN) -> NDArray[np.float32]:
    box = np.asarray(bundle.meta.scene_box, np.float64)
    centre, half = box.mean(0), (box[1] - box[0]) / 2 * margin
    return np.stack([centre - half, centre + half]).astype(np.float32)


def _grid_axes(bounds: NDArray, resolution: int) -> list[NDArray[np.float64]]:
    return [np.linspace(bounds[0, i], bounds[1, i], resolution) for i in range(3)]


def density_grid(renderer, bounds: NDArray, resolution: int, progress: bool) -> NDArray:
    """ln(density) at every grid point, (R, R, R) float16, x-major; one x slab at a time."""
    from tqdm import tqdm

    gx, gy, gz = _grid_axes(bounds, resolution)
    yz = np.stack(np.meshgrid(gy, gz, indexing="ij"), -1).reshape(-1, 2)
    out = np.empty((resolution,) * 3, np.float16)
    for i in tqdm(range(resolution), desc="density grid", unit="slab", disable=not progress):
        pts = np.concatenate([np.full((len(yz), 1), gx[i]), yz], axis=1)
        out[i] = renderer.field_log_density(pts).reshape(resolution, resolution)
    return out


def free_level(vol: NDArray) -> float:
    """FREE_LOG_DENSITY, or for a faint field (a short or sparse fit, e.g. someone else's run)
    the 99th percentile of its ln(density), so that its densest 1 % still counts as matter."""
    level = min(FREE_LOG_DENSITY, float(np.percentile(vol, 99)))
    if not vol.min() < level < vol.max():
        raise EgosynthError("the field's density is constant over the scene box: nothing to bake")
    return level


def _probe_points(vol: NDArray, bounds: NDArray, n: int) -> NDArray[np.float64]:
    """`n` free-space grid points in the inner half of the box (seeded: deterministic).

    nerfstudio centres a capture's cameras on the origin, so the inner box is where they were.
    """
    spacing = (bounds[1] - bounds[0]) / (np.array(vol.shape) - 1)
    pos = bounds[0] + np.argwhere(vol < free_level(vol)) * spacing
    centre, quarter = (bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 4
    cand = pos[np.all(np.abs(pos - centre) < quarter, axis=1)]
    if len(cand) == 0:
        raise EgosynthError("no free space near the scene box centre to view the scene from")
    rng = np.random.default_rng(0)
    return cand[rng.choice(len(cand), min(n, len(cand)), replace=False)]


def _sphere_directions(n: int) -> NDArray[np.float64]:
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


def seen_points(
    log_density: NDArray,
    bounds: NDArray,
    near: float,
    resolution: int,
    progress: bool,
    probe_views: int = PROBE_VIEWS,
) -> tuple[NDArray[np.bool_], NDArray[np.float32]]:
    """Colour-grid points (`resolution` per axis) that probe rays give weight to, and the mean
    direction they were seen along.

    Returns the (C, C, C) mask (grown by one point in every direction: a trilinear look-up
    reads the 8 corners of its cell) and (C, C, C, 3) unit directions.
    """
    import torch
    from tqdm import tqdm

    from egosynth.nerf.baked import Baked
    from egosynth.render.grid import BakedGrid

    no_colour = Baked(log_density, bounds, np.zeros(1, np.uint8), np.zeros((0, 3), np.uint8), 2)
    # float64 throughout, like the field in `bake`: which points count as seen, and the
    # directions they are coloured along, must not depend on the CPU's float32 kernels
    f64 = torch.float64
    grid = BakedGrid(no_colour, "cpu", dtype=np.float64)  # a 2³ colour grid, never read
    spacing = torch.tensor((bounds[1] - bounds[0]) / (resolution - 1), dtype=f64)
    lo = torch.tensor(bounds[0], dtype=f64)
    wmax = torch.zeros(resolution**3, dtype=f64)
    wdir = torch.zeros((resolution**3, 3), dtype=f64)
    dirs = torch.tensor(_sphere_directions(PROBE_RAYS), dtype=f64)
    probes = _probe_points(log_density.astype(np.float32), bounds, probe_views)
    for p in tqdm(probes, desc="colour: probe views", unit="view", disable=not progress):
        o = torch.tensor(p, dtype=f64).expand_as(dirs).contiguous()
        with torch.inference_mode():
            m = grid.march(o, dirs, near, PROBE_SAMPLES, kernel="torch", refine=False)
            pts = o[:, None] + dirs[:, None] * m.mid[..., None]
            ijk = ((pts - lo) / spacing).round().long().clamp_(0, resolution - 1)
            flat = ((ijk[..., 0] * resolution + ijk[..., 1]) * resolution + ijk[..., 2]).reshape(-1)
            w = m.w.reshape(-1)
            wmax.scatter_reduce_(0, flat, w, reduce="amax")
            wd = (m.w[..., None] * dirs[:, None]).reshape(-1, 3)
            wdir.index_add_(0, flat, wd)
    seen = (wmax > COLOUR_MIN_WEIGHT).numpy().reshape((resolution,) * 3)
    return _grow(seen), _mean_dirs(wdir.numpy().reshape(*seen.shape, 3), seen, bounds)


def _grow(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3), bool))


def _mean_dirs(wdir: NDArray, seen: NDArray, bounds: NDArray) -> NDArray[np.float32]:
    """Unit view directions per grid point: seen ones their own, grown ones their neighbours',
    any left the direction from the box centre (where the capture's cameras were)."""
    from scipy import ndimage

    wdir = np.where(seen[..., None], wdir, 0.0)
    spread = np.stack([ndimage.uniform_filter(wdir[..., i], 3) for i in range(3)], -1)
    wdir = np.where(seen[..., None], wdir, spread)
    norm = np.linalg.norm(wdir, axis=-1, keepdims=True)
    res = seen.shape[0]
    axes = np.stack(np.meshgrid(*_grid_axes(bounds, res), indexing="ij"), -1)
    outward = axes - (bounds[0] + bounds[1]) / 2
    outward /= np.maximum(np.linalg.norm(outward, axis=-1, keepdims=True), 1e-9)
    return np.where(norm > 1e-12, wdir / np.maximum(norm, 1e-30), outward).astype(np.float32)


def bake_colour(
    renderer, mask: NDArray, dirs: NDArray, bounds: NDArray, progress: bool
) -> tuple[NDArray[np.uint8], float]:
    """The field's colour at each masked grid point along its view direction, as uint8, and
    how much the colour changes when the same points are seen VIEW_TEST_DEG off that direction
    (mean absolute difference, in 0-255 units).

    One colour per point, not spherical harmonics: the committed scenes' ground truth is
    Lambertian, so view-dependent terms could only reproduce the field's own view-dependent
    error; the measured change (bake.json `view_dependence_255`) says how much a user's own
    scene would lose.
    """
    from tqdm import tqdm

    idx = np.argwhere(mask)
    pts = bounds[0] + idx * ((bounds[1] - bounds[0]) / (mask.shape[0] - 1))
    d = dirs[mask]
    out = np.empty((len(pts), 3), np.float32)
    chunk = 1 << 16
    for s in tqdm(range(0, len(pts), chunk), desc="colour: field", unit="chunk",
                  disable=not progress):  # fmt: skip
        out[s : s + chunk] = renderer.field_radiance(pts[s : s + chunk], d[s : s + chunk])
    rng = np.random.default_rng(0)
    pick = rng.choice(len(pts), min(VIEW_TEST_POINTS, len(pts)), replace=False)
    diffs = []
    for sign in (1.0, -1.0):
        tilted = _tilt(d[pick], sign * math.radians(VIEW_TEST_DEG))
        diffs.append(np.abs(renderer.field_radiance(pts[pick], tilted) - out[pick]))
    colour = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
    return colour, float(np.mean(diffs) * 255.0)


def _tilt(d: NDArray, angle: float) -> NDArray[np.float32]:
    """Unit directions `d` rotated by `angle` about an axis perpendicular to each."""
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    axis = np.cross(d, helper)
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return (math.cos(angle) * d + math.sin(angle) * np.cross(axis, d)).astype(np.float32)


def bake(
    root: str | Path,
    resolution: int = BAKE_RESOLUTION,
    progress: bool = True,
    probe_views: int = PROBE_VIEWS,
) -> Baked:
    """Build and write a bundle's bake; returns it. Deterministic: same weights, same bytes.

    `probe_views` below the default colours fewer points (the probes dominate a coarse
    bake's time): for quick looks and tests, not for renders.
    """
    import torch

    from egosynth.render.nerf import NerfRenderer

    if not 16 <= resolution <= 512:
        raise EgosynthError(f"--resolution = {resolution}: choose 16..512")
    if probe_views < 1:
        raise EgosynthError(f"probe_views = {probe_views}: must be at least 1")
    colour_res = min(COLOUR_RESOLUTION, resolution)
    bundle = read_bundle(root)
    t0 = time.perf_counter()
    # One fixed thread count: float reductions then run in the same order on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        renderer = NerfRenderer(bundle, device="cpu", mode="full")
        # The field in float64: float32 matrix products differ in their last bits between CPU
        # types (AVX2 / AVX-512 kernels), and that flipped 17 of 12.6 M uint8 colours between
        # two hosts; in float64 a flip needs a value within ~1e-16 of a rounding edge.
        renderer.model.double()
        bounds = grid_bounds(bundle)
        # as stored (uint8): the colour decisions below see the grid rendering will see
        raw = density_grid(renderer, bounds, resolution, progress)
        value_range = log_density_range(raw, bounds)
        log_density = dequantize_log_density(quantize_log_density(raw, value_range), value_range)
        near = float(renderer.model.config.near_plane)
        mask, dirs = seen_points(log_density, bounds, near, colour_res, progress, probe_views)
        colour, view_dep = bake_colour(renderer, mask, dirs, bounds, progress)
    finally:
        torch.set_num_threads(threads)
    info = {
        "resolution": resolution,
        "colour_resolution": colour_res,
        "grid_margin": GRID_MARGIN,
        "probe_views": probe_views,
        "probe_rays": PROBE_RAYS,
        "colour_min_weight": COLOUR_MIN_WEIGHT,
        "coloured_points": len(colour),
        "coloured_share": round(len(colour) / colour_res**3, 5),
        "view_dependence_255": round(view_dep, 3),
    }
    baked = Baked(log_density, bounds, Baked.pack_mask(mask), colour, colour_res, info)
    write_bake(bundle.root, baked)
    baked.info["seconds"] = round(time.perf_counter() - t0, 1)
    return baked
