"""Walkable space: the floor polygon minus obstacles, shrunk by the walker's clearance.

Paths are shortest paths in the visibility graph of the free region (exact and collision-free
for polygons), then corner-smoothed; a smoothed path that would leave the free region falls
back to a less smoothed one, so the result is always inside.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.ops import unary_union

from egosynth.errors import EgosynthError

# Paths are planned this far inside the free region so corner smoothing has room.
_PLAN_MARGIN = 0.05


def _largest(geom) -> Polygon:
    if isinstance(geom, MultiPolygon):
        return max(geom.geoms, key=lambda g: g.area)
    if geom.geom_type == "GeometryCollection":
        polys = [g for g in geom.geoms if isinstance(g, Polygon)]
        return max(polys, key=lambda g: g.area) if polys else Polygon()
    return geom


class FloorPlan:
    """Free space for a walker of radius `clearance` on a floor with obstacle footprints."""

    def __init__(
        self,
        floor: Sequence[Sequence[float]],
        obstacles: Sequence[Sequence[Sequence[float]]] = (),
        clearance: float = 0.25,
    ) -> None:
        self.floor = Polygon(floor)
        self.obstacles = [Polygon(o) for o in obstacles]
        self.clearance = float(clearance)
        blocked = unary_union([o.buffer(clearance) for o in self.obstacles]) if obstacles else None
        free = self.floor.buffer(-clearance)
        if blocked is not None:
            free = free.difference(blocked)
        # One connected component: a walker cannot teleport between disconnected rooms.
        self.free = _largest(free)
        self.plan_region = _largest(self.free.buffer(-_PLAN_MARGIN))
        if self.plan_region.is_empty or self.plan_region.area < 1e-3:
            raise EgosynthError(
                f"no walkable space: the floor minus obstacles has no room for a walker "
                f"with clearance {clearance} m"
            )
        self._plan_prepared = shapely.prepared.prep(self.plan_region.buffer(1e-7))
        self._vertices = self._graph_vertices()

    # ---------------------------------------------------------------- queries
    def walkable(self, xy: np.ndarray) -> np.ndarray:
        """Mask of points (..., 2) on the floor and outside every obstacle (no clearance)."""
        xy = np.asarray(xy, float)
        inside = shapely.contains_xy(self.floor, xy[..., 0], xy[..., 1])
        for o in self.obstacles:
            inside &= ~shapely.contains_xy(o, xy[..., 0], xy[..., 1])
        return inside

    def distance_to_blocked(self, xy: np.ndarray) -> np.ndarray:
        """Distance (m) from points (..., 2) to the nearest wall or obstacle footprint."""
        xy = np.asarray(xy, float)
        pts = shapely.points(xy[..., 0], xy[..., 1])
        d = shapely.distance(self.floor.exterior, pts)
        for o in self.obstacles:
            d = np.minimum(d, shapely.distance(o, pts))
        return d

    def sample_point(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random point of the planning region."""
        x0, y0, x1, y1 = self.plan_region.bounds
        for _ in range(10_000):
            p = rng.uniform((x0, y0), (x1, y1))
            if self._plan_prepared.contains(Point(p)):
                return p
        raise EgosynthError("could not sample a walkable point (walkable region too thin)")

    # ---------------------------------------------------------------- planning
    def _graph_vertices(self) -> np.ndarray:
        poly = self.plan_region.simplify(0.02)
        rings = [poly.exterior, *poly.interiors]
        pts = [np.asarray(r.coords)[:-1] for r in rings]
        return np.concatenate(pts, axis=0) if pts else np.zeros((0, 2))

    def _visible(self, a: np.ndarray, b: np.ndarray) -> bool:
        if np.allclose(a, b):
            return True
        return self._plan_prepared.covers(LineString([a, b]))

    def shortest_path(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Shortest collision-free polyline (N, 2) from start to goal (both in the region)."""
        start, goal = np.asarray(start, float), np.asarray(goal, float)
        if self._visible(start, goal):
            return np.stack([start, goal])
        nodes = np.concatenate([start[None], goal[None], self._vertices])
        n = len(nodes)
        dist = np.full(n, np.inf)
        prev = np.full(n, -1)
        dist[0] = 0.0
        heap = [(0.0, 0)]
        done = np.zeros(n, bool)
        while heap:
            d, i = heapq.heappop(heap)
            if done[i]:
                continue
            done[i] = True
            if i == 1:
                break
            for j in range(1, n):
                if done[j] or not self._visible(nodes[i], nodes[j]):
                    continue
                nd = d + float(np.linalg.norm(nodes[j] - nodes[i]))
                if nd < dist[j]:
                    dist[j], prev[j] = nd, i
                    heapq.heappush(heap, (nd, j))
        if not np.isfinite(dist[1]):
            return np.stack([start, start])  # unreachable: stay (caller treats as a pause)
        path, i = [], 1
        while i != -1:
            path.append(nodes[i])
            i = prev[i]
        return np.asarray(path[::-1])

    def smooth_path(self, path: np.ndarray, iterations: int = 3) -> np.ndarray:
        """Chaikin corner cutting, keeping endpoints, never leaving the free region."""
        free = shapely.prepared.prep(self.free.buffer(1e-7))
        for it in range(iterations, 0, -1):
            p = path
            for _ in range(it):
                q = 0.75 * p[:-1] + 0.25 * p[1:]
                r = 0.25 * p[:-1] + 0.75 * p[1:]
                mid = np.stack([q, r], axis=1).reshape(-1, 2)
                p = np.concatenate([p[:1], mid[1:-1], p[-1:]]) if len(p) > 2 else p
            if free.covers(LineString(p)) if len(p) > 1 else True:
                return p
        return path
