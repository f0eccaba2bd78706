"""`egosynth scenes bake`: derive a bundle's density grid, proxy surface and baked colour.

Everything comes from the bundle's own field (egosynth.render.nerf's probes), never from the
mesh ground truth, so it works the same on runs imported from other people's nerfstudio
outputs. Steps, each deterministic (fixed grid, fixed directions, fixed chunking):

1. ln(density) of the field on a `resolution`³ grid over the scene box grown by GRID_MARGIN;
2. marching cubes of that grid at ISO_LOG_DENSITY: the proxy surface;
3. per proxy vertex, the field's colour seen from 1 + COLOUR_AZIMUTHS directions around the
   vertex normal, averaged (the ground truth is Lambertian: view-dependent terms would cost
   storage and cannot bring baked frames closer to it).

The result is written next to bundle.json by egosynth.nerf.baked (a safe npz + JSON).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError
from egosynth.nerf.baked import Baked, write_bake
from egosynth.nerf.bundle import Bundle, read_bundle

BAKE_RESOLUTION = 192
# The scene box grown by this factor about its centre: a capture's walls sit at or just past
# nerfstudio's box (room_0's far wall is at y = 1.11 in a [-1, 1] box).
GRID_MARGIN = 1.25
# Proxy surface level: density 10 per model unit. On the committed bundles the first crossing
# of this level lies a median 2 % of the ray length before full rendering's median depth, and
# 99.6 % of egocentric rays cross it (higher levels are missed by soft surfaces).
ISO_LOG_DENSITY = math.log(10.0)
# Proxy clean-up (see proxy_surface): Gaussian smoothing of ln(density) in voxels; probe
# viewpoints, rays per viewpoint and the dilation (voxels) around their hits that keeps faces.
SMOOTH_VOXELS = 1.5
MIN_COMPONENT_FACES = 20_000  # at 192³; scaled with the grid's face count (∝ resolution²)
PROBE_VIEWS = 64
PROBE_RAYS = 20_000
PROBE_DILATE = 2
# View directions per vertex for the averaged colour: the normal and 4 at 45° around it.
COLOUR_TILT_DEG = 45.0
COLOUR_AZIMUTHS = 4


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


def proxy_surface(log_density: NDArray, bounds: NDArray) -> tuple[NDArray, NDArray, NDArray]:
    """The proxy: the visible part of the smoothed grid's ISO_LOG_DENSITY surface.

    A CPU-fitted nerfacto is foggy (its free space holds density, its surfaces are soft), so
    the raw level set is full of small bubbles and of surfaces behind the walls. Smoothing by
    SMOOTH_VOXELS removes the bubbles; keeping only faces near what PROBE_VIEWS viewpoints in
    the free space around the box centre see removes the hidden rest (measured on room_0 at
    192³: 3.2 M faces raw, 0.53 M kept). A face dropped wrongly leaves a hole, and a ray through
    a hole misses the proxy and is rendered by full sampling: slower, never wrong.
    """
    from scipy import ndimage

    vol = ndimage.gaussian_filter(log_density.astype(np.float32), SMOOTH_VOXELS)
    level = proxy_level(vol)
    verts, faces, normals = _level_set(vol, bounds, level)
    min_faces = max(8, round(MIN_COMPONENT_FACES * (vol.shape[0] / BAKE_RESOLUTION) ** 2))
    keep = _large_components(verts, faces, min_faces) & _visible_faces(vol, bounds, verts, faces)
    if not keep.any():
        raise EgosynthError(
            "the proxy surface is empty: no large surface is visible from the "
            "free space near the scene box centre"
        )
    used = np.unique(faces[keep])
    remap = np.full(len(verts), -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces[keep]].astype(np.int32), normals[used]


def proxy_level(vol: NDArray) -> float:
    """ISO_LOG_DENSITY, or for a faint field (a short or sparse fit, e.g. someone else's run)
    the 99th percentile of its ln(density), so that its densest 1 % still makes a surface."""
    level = min(ISO_LOG_DENSITY, float(np.percentile(vol, 99)))
    if not vol.min() < level < vol.max():
        raise EgosynthError("the field's density is constant over the scene box: nothing to bake")
    return level


def _level_set(vol: NDArray, bounds: NDArray, level: float) -> tuple[NDArray, NDArray, NDArray]:
    from skimage.measure import marching_cubes

    spacing = (bounds[1] - bounds[0]) / (np.array(vol.shape) - 1)
    verts, faces, normals, _ = marching_cubes(
        vol, level=level, spacing=tuple(float(s) for s in spacing)
    )
    verts = (verts + bounds[0]).astype(np.float32)
    # skimage's normals point down the gradient: out of the dense side, towards the viewer
    n = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return verts, faces.astype(np.int32), n


def _large_components(verts: NDArray, faces: NDArray, min_faces: int) -> NDArray[np.bool_]:
    """Faces of connected components with at least `min_faces` faces.

    Fog blobs above the proxy level float in free space; as opaque proxy pieces they would
    speckle baked frames with dark spots, where full rendering sees through them.
    """
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=False, validate=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    sizes = np.bincount(labels)
    # a faint field (a short fit) may have no component that large: keep its largest then
    return sizes[labels] >= min(min_faces, int(sizes.max()))


def _probe_points(vol: NDArray, bounds: NDArray, n: int) -> NDArray[np.float64]:
    """`n` free-space grid points in the inner half of the box (seeded: deterministic).

    nerfstudio centres a capture's cameras on the origin, so the inner box is where they were.
    """
    spacing = (bounds[1] - bounds[0]) / (np.array(vol.shape) - 1)
    pos = bounds[0] + np.argwhere(vol < proxy_level(vol)) * spacing
    centre, quarter = (bounds[0] + bounds[1]) / 2, (bounds[1] - bounds[0]) / 4
    cand = pos[np.all(np.abs(pos - centre) < quarter, axis=1)]
    if len(cand) == 0:
        raise EgosynthError("no free space near the scene box centre to view the proxy from")
    rng = np.random.default_rng(0)
    return cand[rng.choice(len(cand), min(n, len(cand)), replace=False)]


def _sphere_directions(n: int) -> NDArray[np.float64]:
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


def _visible_faces(vol: NDArray, bounds: NDArray, verts: NDArray, faces: NDArray) -> NDArray:
    """Faces whose centre lies within PROBE_DILATE voxels of a probe ray's first hit."""
    import trimesh
    from scipy import ndimage
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    mesh = trimesh.Trimesh(verts, faces, process=False, validate=False)
    embree = RayMeshIntersector(mesh, scale_to_box=False)
    spacing = (bounds[1] - bounds[0]) / (np.array(vol.shape) - 1)
    dirs = _sphere_directions(PROBE_RAYS)
    seen = np.zeros(vol.shape, bool)

    def cell(p: NDArray) -> tuple[NDArray, ...]:
        i = np.clip(np.round((p - bounds[0]) / spacing).astype(np.int64), 0, vol.shape[0] - 1)
        return i[:, 0], i[:, 1], i[:, 2]

    for p in _probe_points(vol, bounds, PROBE_VIEWS):
        origins = np.broadcast_to(p, dirs.shape).copy()
        loc, _, _ = embree.intersects_location(origins, dirs, multiple_hits=False)
        seen[cell(loc)] = True
    seen = ndimage.binary_dilation(seen, iterations=PROBE_DILATE)
    return seen[cell(verts[faces].mean(1))]


def view_directions(normals: NDArray) -> list[NDArray[np.float64]]:
    """Unit ray directions looking INTO the surface: along -normal and tilted around it."""
    n = np.asarray(normals, np.float64)
    helper = np.where(np.abs(n[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    t1 = np.cross(n, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(n, t1)
    tilt = math.radians(COLOUR_TILT_DEG)
    dirs = [-n]
    for k in range(COLOUR_AZIMUTHS):
        a = 2 * math.pi * k / COLOUR_AZIMUTHS
        side = math.cos(a) * t1 + math.sin(a) * t2
        dirs.append(-(math.cos(tilt) * n + math.sin(tilt) * side))
    return dirs


def bake_colour(renderer, verts: NDArray, normals: NDArray, progress: bool) -> NDArray[np.uint8]:
    """The field's colour at each vertex, averaged over `view_directions`, as uint8.

    Read at the vertex: 0.02 model units deeper was measured 1.3 dB worse against the ground
    truth on room_0, and guided rays ending at the vertex 0.8 dB worse against full and 8x
    slower to bake.
    """
    from tqdm import tqdm

    dirs = view_directions(normals)
    acc = np.zeros((len(verts), 3), np.float64)
    for d in tqdm(dirs, desc="baked colour", unit="view", disable=not progress):
        acc += renderer.field_radiance(verts, d)
    return np.clip(np.round(acc / len(dirs) * 255.0), 0, 255).astype(np.uint8)


def bake(root: str | Path, resolution: int = BAKE_RESOLUTION, progress: bool = True) -> Baked:
    """Build and write a bundle's bake; returns it. Deterministic: same weights, same bytes."""
    import torch

    from egosynth.render.nerf import NerfRenderer

    if not 16 <= resolution <= 512:
        raise EgosynthError(f"--resolution = {resolution}: choose 16..512")
    bundle = read_bundle(root)
    t0 = time.perf_counter()
    # One fixed thread count: float reductions then run in the same order on every machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        renderer = NerfRenderer(bundle, device="cpu", mode="full")
        bounds = grid_bounds(bundle)
        log_density = density_grid(renderer, bounds, resolution, progress)
        verts, faces, normals = proxy_surface(log_density, bounds)
        colour = bake_colour(renderer, verts, normals, progress)
    finally:
        torch.set_num_threads(threads)
    info = {
        "resolution": resolution,
        "grid_margin": GRID_MARGIN,
        "iso_density": round(math.exp(ISO_LOG_DENSITY), 6),
        "colour_directions": 1 + COLOUR_AZIMUTHS,
        "n_vertices": len(verts),
        "n_faces": len(faces),
    }
    baked = Baked(log_density, bounds, verts, faces, colour, info)
    write_bake(bundle.root, baked)
    baked.info["seconds"] = round(time.perf_counter() - t0, 1)
    return baked
