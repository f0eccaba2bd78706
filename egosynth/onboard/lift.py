"""Lift a few views' 2D instance/part masks to per-object voxel occupancy (world metres).

1. Every labelled pixel with depth becomes a world point carrying its view's id (background
   pixels too: they are evidence of where objects are NOT).
2. Vote: each point is projected into the other labelled views; where that view sees the same
   surface (its depth agrees), its mask votes for its own id there. A point is kept only when
   at least as many views agree with its id as disagree (its own view counts once), which
   rejects mask bleed at silhouettes and points lifted with a wrong depth.
3. Kept points fill voxels (VOXEL_M); a voxel takes its majority id.
4. Each object's grid covers its voxels plus REACH_M; a cell is the object's when the nearest
   labelled voxel (object or background) is the object's and within REACH_M: surfaces no
   labelled view saw (an object's back) join the nearest labelled surface, background wins
   where it was seen closer. Detached pieces under MIN_PIECE_SHARE of the largest are dropped.
   Parts: the nearest voxel of the object with a part vote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import pixel_centers, project, unproject
from egosynth.errors import EgosynthError
from egosynth.nerf.lifted import LiftedMasks, ObjectGrid

VOXEL_M = 0.02
REACH_M = 0.10
FLOOR_BAND_M = 0.02  # as the renderer: points this close to the floor are never objects
DEPTH_TOLERANCE_M = 0.03  # + DEPTH_TOLERANCE_REL * z: "the same surface" in another view
DEPTH_TOLERANCE_REL = 0.03
MAX_POINTS_PER_VIEW = 60_000  # large photos are subsampled on a regular pixel stride
MIN_PIECE_SHARE = 0.2  # an object's detached piece smaller than this share of its largest goes


@dataclass
class MaskView:
    """One labelled view in world metres: pose, intrinsics, z-depth, ids."""

    cam_to_world: NDArray[np.float64]
    K: NDArray[np.float64]
    depth: NDArray[np.floating]  # (H, W) z-depth metres, 0 = no surface
    instance: NDArray[np.integer]  # (H, W)
    part: NDArray[np.integer] | None = None  # (H, W) scene part ids


def _stride(h: int, w: int) -> int:
    return max(1, math.ceil(math.sqrt(h * w / MAX_POINTS_PER_VIEW)))


def _points(v: MaskView) -> tuple[NDArray, NDArray, NDArray]:
    """(world points, instance ids, part ids) of a view's pixels with depth."""
    h, w = v.depth.shape
    s = _stride(h, w)
    uv = pixel_centers(w, h)[::s, ::s]
    z = np.asarray(v.depth, np.float64)[::s, ::s]
    ok = z > 0
    pts = unproject(uv[ok], z[ok], v.K, v.cam_to_world)
    ids = np.asarray(v.instance)[::s, ::s][ok].astype(np.int64)
    parts = (
        np.asarray(v.part)[::s, ::s][ok].astype(np.int64)
        if v.part is not None
        else np.zeros_like(ids)
    )
    return pts, ids, parts


def _votes(pts: NDArray, ids: NDArray, own: int, views: list[MaskView]) -> NDArray[np.bool_]:
    """Points whose id at least as many views confirm as contradict (own view included)."""
    agree = np.ones(len(pts), np.int64)
    disagree = np.zeros(len(pts), np.int64)
    for u, v in enumerate(views):
        if u == own:
            continue
        h, w = v.depth.shape
        uv, z = project(pts, v.K, v.cam_to_world)
        j, i = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        ok = (z > 0) & (j >= 0) & (i >= 0) & (j < w) & (i < h)
        seen = np.zeros(len(pts), bool)
        d = np.asarray(v.depth, np.float64)[i[ok], j[ok]]
        seen[ok] = np.abs(d - z[ok]) < DEPTH_TOLERANCE_M + DEPTH_TOLERANCE_REL * z[ok]
        other = np.asarray(v.instance).astype(np.int64)[i[seen], j[seen]]
        same = other == ids[seen]
        agree[seen] += same
        disagree[seen] += ~same
    return agree >= disagree


def fused_points(views: list[MaskView]) -> tuple[NDArray, NDArray, NDArray]:
    """All views' points that survive the vote, with their instance and part ids."""
    all_pts, all_ids, all_parts = [], [], []
    for k, v in enumerate(views):
        pts, ids, parts = _points(v)
        keep = _votes(pts, ids, k, views)
        ids = np.where(pts[:, 2] < FLOOR_BAND_M, 0, ids)  # mask bleed onto the floor
        all_pts.append(pts[keep])
        all_ids.append(ids[keep])
        all_parts.append(np.where(ids[keep] > 0, parts[keep], 0))
    return np.concatenate(all_pts), np.concatenate(all_ids), np.concatenate(all_parts)


def _voxel_majority(keys: NDArray, values: NDArray) -> tuple[NDArray, NDArray]:
    """Unique voxel keys (n, 3) and the majority value of each."""
    pair = np.concatenate([keys, values[:, None]], axis=1)
    upair, counts = np.unique(pair, axis=0, return_counts=True)
    order = np.lexsort((-counts, *upair[:, :3].T[::-1]))
    upair = upair[order]
    first = np.ones(len(upair), bool)
    first[1:] = np.any(upair[1:, :3] != upair[:-1, :3], axis=1)
    return upair[first, :3], upair[first, 3]


def _main_pieces(occ: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Drop small detached blobs (points lifted with a floater's depth that won the vote)."""
    from scipy import ndimage

    labels, n = ndimage.label(occ, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return occ
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= MIN_PIECE_SHARE * sizes.max())[0] + 1
    return np.isin(labels, keep)


def lift(
    views: list[MaskView],
    names: dict[int, str],
    world_from_scene: NDArray[np.floating],
    part_index: dict[int, tuple[int, int]] | None = None,
    voxel: float = VOXEL_M,
    reach: float = REACH_M,
) -> LiftedMasks:
    """Per-object voxel occupancy from labelled views.

    `names`: instance id -> object name (grid order follows the ids); `part_index`: scene part
    id -> (instance id, 1-based index of the part in that object's part list).
    """
    from scipy.spatial import cKDTree

    pts, ids, parts = fused_points(views)
    if not np.any(ids > 0):
        raise EgosynthError("lifting: no labelled object pixel survived the vote across views")
    key = np.floor(pts / voxel).astype(np.int64)
    vox, vid = _voxel_majority(key, ids)
    centres = (vox + 0.5) * voxel
    tree = cKDTree(centres)
    grids = []
    for iid in sorted(names):
        mine = vid == iid
        if not mine.any():
            continue  # no view saw it (a label without pixels)
        lo = vox[mine].min(axis=0) - math.ceil(reach / voxel)
        hi = vox[mine].max(axis=0) + math.ceil(reach / voxel) + 1
        shape = tuple(int(x) for x in hi - lo)
        cell = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
        cc = ((cell.reshape(-1, 3) + lo) + 0.5) * voxel
        dist, near = tree.query(cc, distance_upper_bound=reach)
        occ = np.zeros(len(cc), bool)
        found = np.isfinite(dist)
        occ[found] = vid[near[found]] == iid
        occ &= cc[:, 2] >= FLOOR_BAND_M
        occ = _main_pieces(occ.reshape(shape)).reshape(-1)
        part_grid = np.zeros(len(cc), np.uint8)
        if part_index:
            pmask = (ids == iid) & (parts > 0)
            if pmask.any():
                pkey = np.floor(pts[pmask] / voxel).astype(np.int64)
                pvox, pval = _voxel_majority(pkey, parts[pmask])
                local = np.array([part_index.get(int(p), (iid, 0))[1] for p in pval], np.uint8)
                _, pnear = cKDTree((pvox + 0.5) * voxel).query(cc[occ])
                part_grid[occ] = local[pnear]
        grids.append(
            ObjectGrid(names[iid], lo * voxel, occ.reshape(shape), part_grid.reshape(shape))
        )
    return LiftedMasks(voxel, np.asarray(world_from_scene, np.float64), grids)
