"""The walkable floor and its obstacles from an occupancy slice of the NeRF's geometry.

On a 2D grid (world metres, +Z up, floor at z = 0) a cell is *floor* where surface points lie
on the floor plane and *blocked* where surface points lie between OBSTACLE_LOW_M and
BODY_HEIGHT_M (anything a walker would bump into: walls, furniture, objects). The walkable
region is the largest connected piece of floor-not-blocked cells; the room outline is that
region with its holes filled; obstacles are the holes (with the height of what stands there).
These are exactly the polygons the motion model's FloorPlan takes (floor minus obstacles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError

CELL_M = 0.05  # grid cell: a walker's clearance is 0.25 m, so 5 cm is fine enough
FLOOR_TOLERANCE_M = 0.03  # |z| below this: a floor point
OBSTACLE_LOW_M = 0.06  # blocked from here (floor fuzz and rugs stay walkable) ...
BODY_HEIGHT_M = 1.8  # ... up to head height: higher things (lamps, shelves) do not block
MIN_BLOCKED_POINTS = 2  # a lone floater does not block a cell
FREE_RATIO = 0.5  # occupied: rays ending in a voxel >= this times the rays crossing it
CARVE_STOP_M = 0.10  # a ray's last 10 cm are not free space (NeRF surfaces are fuzzy)
LOW_FREE_M = 0.25  # "just above the floor"
MIN_FREE_RAYS = 3
HOLE_BLOCKED_SHARE = 0.15  # a hole in the floor with fewer blocked cells is unseen floor
MIN_OBSTACLE_AREA_M2 = 0.01  # smaller holes are noise in the floor, not obstacles
SIMPLIFY_M = 0.05  # polygon simplification by one cell: removes the raster's stair steps


@dataclass
class FloorMap:
    """The recovered floor in world metres: polygons for the scene config, and the grid."""

    floor: list[tuple[float, float]]
    obstacles: list[tuple[list[tuple[float, float]], float]]  # (polygon, height m)
    walkable: NDArray[np.bool_]  # (nx, ny) grid, cell (i, j) centred at origin + (i+.5, j+.5)*cell
    blocked: NDArray[np.bool_]
    origin: tuple[float, float]
    cell: float


def _grid(points: NDArray, origin: NDArray, shape: tuple[int, int], cell: float) -> NDArray:
    ij = np.floor((points[:, :2] - origin) / cell).astype(np.int64)
    ok = (ij[:, 0] >= 0) & (ij[:, 1] >= 0) & (ij[:, 0] < shape[0]) & (ij[:, 1] < shape[1])
    counts = np.zeros(shape, np.int64)
    np.add.at(counts, (ij[ok, 0], ij[ok, 1]), 1)
    return counts


def _polygons(mask: NDArray[np.bool_], origin: NDArray, cell: float) -> list:
    """Shapely polygons of a boolean grid (union of its cells), simplified below a cell."""
    import shapely
    from shapely import affinity
    from shapely.geometry import MultiPolygon, Polygon

    i, j = np.nonzero(mask)
    if len(i) == 0:
        return []
    # Union in integer cell units: float cell corners of neighbours would not coincide exactly.
    cells = shapely.union_all(shapely.box(i, j, i + 1, j + 1))
    union = affinity.affine_transform(cells, [cell, 0, 0, cell, origin[0], origin[1]])
    geoms = union.geoms if isinstance(union, MultiPolygon) else [union]
    out = []
    for g in geoms:
        if isinstance(g, Polygon) and not g.is_empty:
            s = g.simplify(SIMPLIFY_M, preserve_topology=True)
            out.append(s if s.is_valid else g)
    return out


def _ring(poly) -> list[tuple[float, float]]:
    return [(round(float(x), 4), round(float(y), 4)) for x, y in list(poly.exterior.coords)[:-1]]


def _voxel_counts(p: NDArray, lo: NDArray, shape: tuple[int, int, int], cell: float) -> NDArray:
    ijk = np.floor((p - lo) / cell).astype(np.int64)
    ok = np.all((ijk >= 0) & (ijk < np.array(shape)), axis=1)
    return np.bincount(
        np.ravel_multi_index(ijk[ok].T, shape), minlength=int(np.prod(shape))
    ).reshape(shape)


def carve(
    points: NDArray, origins: NDArray, lo: NDArray, shape2: tuple[int, int], cell: float
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(blocked columns, columns seen empty just above the floor) of an occupancy slice.

    Every ray from its camera to its surface point crosses free space. A NeRF floater in the
    middle of a room ends a few rays but is crossed by many more from other views, a wall or a
    sofa is not: a voxel is occupied when at least MIN_BLOCKED_POINTS rays end in it and at
    least FREE_RATIO times as many end as pass through it. Where rays cross the air just
    above the floor (below LOW_FREE_M) the floor under it was in view: floor, even when no
    depth sample happened to land on it.
    """
    nz = int(np.ceil((BODY_HEIGHT_M - OBSTACLE_LOW_M) / cell))
    lo3 = np.array([lo[0], lo[1], OBSTACLE_LOW_M])
    shape = (shape2[0], shape2[1], nz)
    hits = _voxel_counts(points, lo3, shape, cell)
    free = np.zeros(shape, np.int64)
    d = points - origins
    length = np.linalg.norm(d, axis=1)
    steps = np.arange(0.0, float(length.max()), cell)
    for s0 in range(0, len(steps), 16):  # bounded memory: 16 steps of every ray at a time
        t = steps[s0 : s0 + 16]
        keep = t[None, :] < (length[:, None] - CARVE_STOP_M)
        r, k = np.nonzero(keep)
        q = origins[r] + d[r] * (t[k] / length[r])[:, None]
        free += _voxel_counts(q, lo3, shape, cell)
    occupied = (hits >= MIN_BLOCKED_POINTS) & (hits >= FREE_RATIO * free)
    low = max(1, round(LOW_FREE_M / cell))
    return occupied.any(axis=2), free[:, :, :low].sum(axis=2) >= MIN_FREE_RAYS


def floor_map(
    points_world: NDArray[np.floating],
    origins_world: NDArray[np.floating] | None = None,
    cell: float = CELL_M,
) -> FloorMap:
    """The floor map of world surface points (N, 3) (metres, floor at z = 0).

    With the rays' origins (the cameras), free space carves floaters out of the slice.
    """
    from scipy import ndimage

    p = np.asarray(points_world, np.float64).reshape(-1, 3)
    on_floor = np.abs(p[:, 2]) < FLOOR_TOLERANCE_M
    standing = (p[:, 2] > OBSTACLE_LOW_M) & (p[:, 2] < BODY_HEIGHT_M)
    if on_floor.sum() < 100:
        raise EgosynthError(f"floor map: only {int(on_floor.sum())} points on the floor plane")
    lo = p[on_floor | standing, :2].min(axis=0) - 2 * cell
    hi = p[on_floor | standing, :2].max(axis=0) + 2 * cell
    shape = tuple(int(v) for v in np.ceil((hi - lo) / cell))
    floor_n = _grid(p[on_floor], lo, shape, cell)
    if origins_world is None:
        blocked = _grid(p[standing], lo, shape, cell) >= MIN_BLOCKED_POINTS
    else:
        o = np.asarray(origins_world, np.float64).reshape(-1, 3)
        blocked, low_free = carve(p, o, lo, shape, cell)
        floor_n = floor_n + (low_free & ~blocked)
    # Unseen floor between seen floor cells (gaps between sparse samples) is floor; blocked
    # cells never become floor.
    seen = ndimage.binary_closing(floor_n > 0, iterations=2) & ~blocked
    free = ndimage.binary_opening(seen & ~blocked, iterations=1)
    labels, n = ndimage.label(free)
    if n == 0:
        raise EgosynthError("floor map: no walkable floor found")
    sizes = ndimage.sum(free, labels, index=range(1, n + 1))
    walkable = labels == (1 + int(np.argmax(sizes)))
    room = ndimage.binary_fill_holes(walkable)
    # Holes where nothing stands are floor no depth sample happened to see: walkable.
    hole_labels, n_holes = ndimage.label(room & ~walkable)
    blocked_share = ndimage.mean(blocked, hole_labels, index=range(1, n_holes + 1))
    empty = np.nonzero(np.asarray(blocked_share) < HOLE_BLOCKED_SHARE)[0] + 1
    walkable |= np.isin(hole_labels, empty)
    rooms = _polygons(room, lo, cell)
    outline = max(rooms, key=lambda g: g.area)
    holes = room & ~walkable
    top = np.zeros(shape)
    ij = np.floor((p[standing, :2] - lo) / cell).astype(np.int64)
    np.maximum.at(top, (ij[:, 0], ij[:, 1]), p[standing, 2])
    obstacles = []
    hole_labels, n_holes = ndimage.label(holes)
    for k in range(1, n_holes + 1):
        m = hole_labels == k
        for poly in _polygons(m, lo, cell):
            if poly.area >= MIN_OBSTACLE_AREA_M2:
                height = float(max(top[m].max(), OBSTACLE_LOW_M))
                obstacles.append((_ring(poly), round(height, 3)))
    return FloorMap(
        _ring(outline), obstacles, walkable, blocked, (float(lo[0]), float(lo[1])), cell
    )
