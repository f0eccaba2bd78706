"""Onboarding against ground truth: how far the recovered scene is from the procedural truth.

The truth: the mesh scene (world metres) and `world_from_colmap` S, the similarity the test
scene's frame was moved by. The recovered world is W (the onboarded world_from_scene), so
M = W S^-1 maps true world points to recovered world points; yaw and the horizontal origin are
a free choice of onboarding (a gauge), everything else must match.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from egosynth.config import SceneConfig, Similarity


@dataclass
class FrameErrors:
    up_error_deg: float
    floor_height_error_cm: float  # mean |recovered z| of true floor points
    scale_error_pct: float
    walkable_iou: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def true_to_recovered(W: Similarity, S: Similarity) -> NDArray[np.float64]:
    return W.matrix() @ np.linalg.inv(S.matrix())


def _apply(T: NDArray, p: NDArray) -> NDArray:
    return np.asarray(p, np.float64) @ T[:3, :3].T + T[:3, 3]


def walkable_polygon(floor: list, obstacles: list) -> object:
    """Floor minus obstacle footprints: where a (zero-clearance) walker may stand."""
    from shapely.geometry import Polygon
    from shapely.ops import unary_union

    poly = Polygon(floor)
    if obstacles:
        poly = poly.difference(unary_union([Polygon(o) for o in obstacles]))
    return poly


def frame_errors(
    W: Similarity, S: Similarity, truth: SceneConfig, recovered: SceneConfig
) -> FrameErrors:
    """Up axis, floor height, scale and walkable-region errors of an onboarded scene."""
    from shapely import affinity
    from shapely.geometry import Polygon

    up_rec = np.asarray(W.rotation).T @ [0, 0, 1.0]  # scene-frame direction W maps to +Z
    up_true = np.asarray(S.rotation).T @ [0, 0, 1.0]
    up_err = math.degrees(math.acos(float(np.clip(up_rec @ up_true, -1, 1))))
    M = true_to_recovered(W, S)
    floor = Polygon(truth.floor)
    x0, y0, x1, y1 = floor.bounds
    gx, gy = np.meshgrid(np.linspace(x0, x1, 30), np.linspace(y0, y1, 30))
    pts = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], -1)
    floor_err = float(np.mean(np.abs(_apply(M, pts)[:, 2]))) * 100
    # The recovered walkable region in the true world: M^-1 restricted to the plane z = 0.
    Minv = np.linalg.inv(M)
    rec = walkable_polygon(recovered.floor, [o.polygon for o in recovered.obstacles])
    rec_true = affinity.affine_transform(
        rec, [Minv[0, 0], Minv[0, 1], Minv[1, 0], Minv[1, 1], Minv[0, 3], Minv[1, 3]]
    )
    true = walkable_polygon(truth.floor, [o.polygon for o in truth.obstacles])
    iou = true.intersection(rec_true).area / true.union(rec_true).area
    return FrameErrors(up_err, floor_err, 100 * (W.scale / S.scale - 1), float(iou))
