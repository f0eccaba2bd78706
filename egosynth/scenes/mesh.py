"""Scene geometry: a triangle soup with per-face instance ids, part ids and materials.

The procedural generator (egosynth.scenes.procedural) builds a `SceneMesh` with `MeshBuilder`;
the mesh backend (egosynth.render.mesh) only renders one. Every triangle carries an instance id
(0 = room and furniture, 1..N = scene.objects in order), a part id (0 = no part; a per-scene
table) and a material (solid texture, egosynth.scenes.textures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from egosynth.labels import Label
from egosynth.scenes.textures import Material

if TYPE_CHECKING:
    import trimesh


@dataclass
class SceneMesh:
    """A triangle soup with per-face ids and materials, plus the light and label table."""

    vertices: NDArray[np.float64]  # (V, 3) world metres
    faces: NDArray[np.int64]  # (F, 3)
    face_instance: NDArray[np.uint16]  # (F,)
    face_part: NDArray[np.uint8]  # (F,)
    face_material: NDArray[np.int32]  # (F,) index into materials
    materials: list[Material]
    light: NDArray[np.float64]  # (3,) point light position
    labels: list[Label] = field(default_factory=list)

    @property
    def n_faces(self) -> int:
        return len(self.faces)


class MeshBuilder:
    """Accumulates mesh pieces (each with a material, instance id and part id) into a SceneMesh."""

    def __init__(self) -> None:
        self._verts: list[NDArray] = []
        self._faces: list[NDArray] = []
        self._inst: list[NDArray] = []
        self._part: list[NDArray] = []
        self._mat: list[NDArray] = []
        self._materials: dict[Material, int] = {}
        self._nv = 0

    def material(self, mat: Material) -> int:
        """Index of `mat` in the table (identical materials share one entry)."""
        return self._materials.setdefault(mat, len(self._materials))

    def add(self, mesh: trimesh.Trimesh, mat: Material, instance: int = 0, part: int = 0) -> None:
        """Add one piece; its faces get the given material, instance id and part id."""
        f = np.asarray(mesh.faces, np.int64)
        self._verts.append(np.asarray(mesh.vertices, np.float64))
        self._faces.append(f + self._nv)
        self._nv += len(mesh.vertices)
        n = len(f)
        self._inst.append(np.full(n, instance, np.uint16))
        self._part.append(np.full(n, part, np.uint8))
        self._mat.append(np.full(n, self.material(mat), np.int32))

    def build(self, light: Sequence[float], labels: list[Label] | None = None) -> SceneMesh:
        mats = sorted(self._materials, key=self._materials.__getitem__)
        return SceneMesh(
            vertices=np.concatenate(self._verts),
            faces=np.concatenate(self._faces),
            face_instance=np.concatenate(self._inst),
            face_part=np.concatenate(self._part),
            face_material=np.concatenate(self._mat),
            materials=mats,
            light=np.asarray(light, np.float64),
            labels=list(labels or []),
        )
