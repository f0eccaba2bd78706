"""Lifted object masks of a bundle (masks.json + masks.npz): per-object voxel occupancy.

`egosynth scenes onboard` lifts a few 2D instance/part masks to 3D and stores, per object, a
small axis-aligned voxel grid (world metres) saying which cells are that object and which part
each cell is. The NeRF renderer labels a pixel of any new view by looking its rendered surface
point up in these grids; objects without a grid keep their annotation box. Boxes are too coarse
for curved objects (a box around a cat also holds the air between its legs and the floor
beside it); measured on the committed rooms in docs/bundles.md.

    masks.json   format, voxel size, the world_from_scene the grids were built in, and per
                 object: name, grid origin (world metres, the corner of cell 0), grid shape
    masks.npz    occupancy_<k> bool (nx, ny, nz) and part_<k> uint8 (0 = no part, j = the j-th
                 part of the object, in its annotation order) for the k-th object of masks.json

Plain arrays and JSON (never pickles: np.load with allow_pickle=False). The grids stay valid
when world_from_scene is edited later: points are mapped into the frame they were built in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError

if TYPE_CHECKING:
    from egosynth.config import SceneObject

MASKS_JSON = "masks.json"
MASKS_NPZ = "masks.npz"
FORMAT = "egosynth-lifted-masks"


@dataclass
class ObjectGrid:
    name: str
    origin: NDArray[np.float64]  # (3,) world metres of cell (0, 0, 0)'s corner
    occupancy: NDArray[np.bool_]  # (nx, ny, nz)
    part: NDArray[np.uint8]  # (nx, ny, nz), 0 = none, j = j-th part of the object

    def cells(self, points: NDArray[np.floating], voxel: float) -> tuple[NDArray, NDArray]:
        """(mask of points inside the grid, their integer cell indices (n_inside, 3))."""
        ijk = np.floor((points - self.origin) / voxel).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.occupancy.shape)), axis=-1)
        return inside, ijk[inside]


@dataclass
class LiftedMasks:
    voxel: float
    world_from_scene: NDArray[np.float64]  # the similarity the grids were built under
    objects: list[ObjectGrid]

    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    def label(
        self,
        points: NDArray[np.floating],
        surface: NDArray[np.bool_],
        objects: list[SceneObject],
        world_from_scene: NDArray[np.floating] | None = None,
        box_margin: float = 0.02,
    ) -> tuple[NDArray[np.uint16], NDArray[np.uint8]]:
        """Instance and part ids (scene-wide, as the renderer numbers them) of world points.

        `objects` is the renderer's object list: ids are positions in it; part ids number all
        parts of the scene from 1 in object order. Objects without a grid are labelled by
        their box (the smallest containing box wins among those).
        """
        pts = np.asarray(points, np.float64)
        shape = pts.shape[:-1]
        flat = pts.reshape(-1, 3)
        if world_from_scene is not None and not np.allclose(
            world_from_scene, self.world_from_scene, atol=1e-9
        ):  # into the frame the grids were built in
            A = self.world_from_scene @ np.linalg.inv(np.asarray(world_from_scene, np.float64))
            flat = flat @ A[:3, :3].T + A[:3, 3]
        surf = np.asarray(surface, bool).reshape(-1)
        instance = np.zeros(len(flat), np.uint16)
        part = np.zeros(len(flat), np.uint8)
        grids = {g.name: g for g in self.objects}
        first_part = 1
        best = np.full(len(flat), np.inf)
        for i, obj in enumerate(objects, start=1):
            g = grids.get(obj.name)
            if g is None:  # a box annotation: smallest containing box among boxes
                inside = surf & obj.contains(flat, box_margin) & (instance == 0)
                vol = float(np.prod(obj.extents))
                take = inside & (vol < best)
                instance[take], best[take] = i, vol
            else:
                idx = np.nonzero(surf & (instance == 0))[0]
                inside, ijk = g.cells(flat[idx], self.voxel)
                hit = g.occupancy[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
                sel = idx[inside][hit]
                instance[sel] = i
                local = g.part[ijk[hit, 0], ijk[hit, 1], ijk[hit, 2]].astype(np.int64)
                ok = (local > 0) & (local <= len(obj.parts))
                part[sel[ok]] = (first_part + local[ok] - 1).astype(np.uint8)
            first_part += len(obj.parts)
        return instance.reshape(shape), part.reshape(shape)


def has_masks(root: Path) -> bool:
    return (root / MASKS_JSON).is_file()


def write_masks(root: Path, masks: LiftedMasks) -> None:
    arrays: dict[str, NDArray] = {}
    entries = []
    for k, g in enumerate(masks.objects):
        arrays[f"occupancy_{k}"] = g.occupancy.astype(bool)
        arrays[f"part_{k}"] = g.part.astype(np.uint8)
        entries.append({"name": g.name, "origin": [round(float(x), 6) for x in g.origin],
                        "shape": list(g.occupancy.shape)})  # fmt: skip
    np.savez_compressed(root / MASKS_NPZ, **arrays)
    meta = {
        "format": FORMAT,
        "format_version": 1,
        "voxel_m": masks.voxel,
        "frame": "world metres under world_from_scene below (4x4)",
        "world_from_scene": masks.world_from_scene.tolist(),
        "objects": entries,
    }
    (root / MASKS_JSON).write_text(json.dumps(meta, indent=1) + "\n")


def _bad(path: Path, key: str, value: Any, why: str) -> EgosynthError:
    return EgosynthError(f"{path}: field '{key}' = {value!r:.60}: {why}")


def read_masks(root: Path) -> LiftedMasks:
    """A bundle's lifted masks, validated (one-line errors naming file and field)."""
    from egosynth.readers import check_inside, read_json_object

    path = root / MASKS_JSON
    meta = read_json_object(check_inside(root, path), "lifted masks file")
    if meta.get("format") != FORMAT or meta.get("format_version") != 1:
        raise _bad(path, "format", meta.get("format"), f"not a {FORMAT} version 1 file")
    voxel = meta.get("voxel_m")
    if not isinstance(voxel, (int, float)) or isinstance(voxel, bool) or not voxel > 0:
        raise _bad(path, "voxel_m", voxel, "must be a positive number of metres")
    W = np.asarray(meta.get("world_from_scene"), dtype=np.float64)
    if W.shape != (4, 4) or not np.all(np.isfinite(W)):
        raise _bad(path, "world_from_scene", meta.get("world_from_scene"), "not a 4x4 matrix")
    npz = check_inside(root, root / MASKS_NPZ)
    try:
        data = np.load(npz, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EgosynthError(f"{npz}: not a readable npz ({exc!s:.60})") from None
    objects = []
    for k, e in enumerate(meta.get("objects", [])):
        try:
            occ, part = data[f"occupancy_{k}"], data[f"part_{k}"]
            origin = np.asarray(e["origin"], np.float64)
            name = str(e["name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, f"objects.{k}", e, f"unreadable ({exc!s:.40})") from None
        if occ.ndim != 3 or part.shape != occ.shape or list(occ.shape) != list(e.get("shape", [])):
            raise _bad(path, f"objects.{k}.shape", e.get("shape"), f"arrays are {occ.shape}")
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise _bad(path, f"objects.{k}.origin", e.get("origin"), "expected 3 finite numbers")
        objects.append(ObjectGrid(name, origin, occ.astype(bool), part.astype(np.uint8)))
    return LiftedMasks(float(voxel), W, objects)
