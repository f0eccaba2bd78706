"""The mesh backend: exact ground truth by ray casting triangle meshes with Embree.

One ray per pixel through the pixel centre (egosynth.camera conventions). Embree (through
trimesh's `ray_pyembree`) finds the first triangle hit in float32; the hit distance is then
recomputed in float64 from that triangle's plane, so depth is exact to float64 rounding.
Camera rays have unit z in the camera frame, so the ray parameter IS the z-depth.

The scene itself is built outside the renderer: a `SceneMesh` (egosynth.scenes.mesh) carries
per-face instance ids, part ids and materials, and the procedural generator builds it
(egosynth.scenes.procedural). Rays are cast in chunks so memory stays bounded for any batch
size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import camera_rays
from egosynth.render.base import Frames, batch_intrinsics
from egosynth.scenes.textures import albedo, shade

if TYPE_CHECKING:
    from egosynth.config import SceneConfig
    from egosynth.labels import Label
    from egosynth.scenes.mesh import SceneMesh

CHUNK_RAYS = 1 << 18  # ~260 k rays per embree call: a few tens of MB of temporaries


class MeshRenderer:
    """Renders a SceneMesh: rgb, z-depth, instance and part ids (implements `Renderer`)."""

    def __init__(self, mesh: SceneMesh, chunk_rays: int = CHUNK_RAYS) -> None:
        self.mesh = mesh
        self.chunk_rays = int(chunk_rays)
        self._setup()

    def _setup(self) -> None:
        import trimesh
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        mesh = self.mesh
        tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False, validate=False)
        self._intersector = RayMeshIntersector(tm, scale_to_box=False)
        tri = mesh.vertices[mesh.faces]
        self._v0 = tri[:, 0]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        self._normals = n / np.where(norm > 0, norm, 1.0)

    # Embree scenes cannot be pickled: ship the mesh and rebuild the BVH on arrival (Ray actors)
    def __getstate__(self) -> dict:
        return {"mesh": self.mesh, "chunk_rays": self.chunk_rays}

    def __setstate__(self, state: dict) -> None:
        self.mesh, self.chunk_rays = state["mesh"], state["chunk_rays"]
        self._setup()

    @classmethod
    def from_scene(cls, scene: SceneConfig) -> MeshRenderer:
        """Render a procedural scene: its mesh is rebuilt from `scene.procedural` by the
        generator (egosynth.scenes.procedural.scene_mesh, cached per process)."""
        from egosynth.scenes.procedural import scene_mesh

        return cls(scene_mesh(scene))

    def labels(self) -> list[Label]:
        return list(self.mesh.labels)

    # ------------------------------------------------------------------ casting
    def cast(
        self, origins: NDArray[np.float64], dirs: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """First hit of rays (n, 3): (triangle index or -1, ray parameter t in units of |dir|)."""
        tri = np.asarray(self._intersector.intersects_first(origins, dirs), np.int64)
        t = np.zeros(len(origins))
        hit = tri >= 0
        if hit.any():
            n, v0 = self._normals[tri[hit]], self._v0[tri[hit]]
            o, d = origins[hit], dirs[hit]
            # exact float64 plane intersection of the triangle embree found (float32)
            t[hit] = np.einsum("ij,ij->i", n, v0 - o) / np.einsum("ij,ij->i", n, d)
        return tri, t

    def _shade(self, tri: NDArray[np.int64], points: NDArray, dirs: NDArray) -> NDArray[np.float64]:
        rgb = np.empty((len(tri), 3))
        mat_ids = self.mesh.face_material[tri]
        # group hits by material once (sorting beats one boolean mask per material)
        order = np.argsort(mat_ids, kind="stable")
        sorted_ids = mat_ids[order]
        mats = np.unique(sorted_ids)
        starts = np.searchsorted(sorted_ids, mats, side="left")
        ends = np.searchsorted(sorted_ids, mats, side="right")
        for m, a, b in zip(mats, starts, ends, strict=True):
            sel = order[a:b]
            mat = self.mesh.materials[int(m)]
            p = points[sel]
            base = albedo(mat, p)
            if not mat.emissive:
                base = shade(base, p, self._normals[tri[sel]], dirs[sel], self.mesh.light)
            rgb[sel] = base
        return rgb

    def render(
        self,
        cam_to_world: NDArray[np.floating],
        K: NDArray[np.floating],
        width: int,
        height: int,
    ) -> Frames:
        """Render N views: cam_to_world (N, 4, 4) OpenCV, K (3, 3) or (N, 3, 3)."""
        c2w = np.asarray(cam_to_world, np.float64).reshape(-1, 4, 4)
        n_cam = len(c2w)
        Ks = batch_intrinsics(K, n_cam)
        out = Frames.empty(n_cam, height, width)
        out.accumulation[:] = 1.0
        per_cam = width * height
        # chunks never straddle cameras when a camera fits in one chunk: simpler bookkeeping
        step = max(1, self.chunk_rays)
        for c in range(n_cam):
            d_cam = camera_rays(Ks[c], width, height).reshape(-1, 3)
            # unit z in the camera frame, so t == z-depth. einsum, not `@`: a (n, 3) @ (3, 3)
            # matmul goes through threaded BLAS, measured ~50x slower here on a busy machine
            d_world = np.einsum("ij,kj->ik", d_cam, c2w[c, :3, :3])
            origin = c2w[c, :3, 3]
            for s in range(0, per_cam, step):
                d = d_world[s : s + step]
                o = np.broadcast_to(origin, d.shape).copy()
                self._render_chunk(out, c, s, o, d)
        return out

    def _render_chunk(self, out: Frames, cam: int, start: int, o: NDArray, d: NDArray) -> None:
        tri, t = self.cast(o, d)
        hit = tri >= 0
        safe = np.where(hit, tri, 0)
        rgb = np.zeros((len(d), 3))
        if hit.any():
            rgb[hit] = self._shade(tri[hit], o[hit] + t[hit, None] * d[hit], d[hit])
        end = start + len(d)
        # rows of one camera's image, flattened: chunks are contiguous pixel ranges
        out.depth[cam].reshape(-1)[start:end] = np.where(hit, t, 0.0)
        out.instance[cam].reshape(-1)[start:end] = np.where(hit, self.mesh.face_instance[safe], 0)
        out.part[cam].reshape(-1)[start:end] = np.where(hit, self.mesh.face_part[safe], 0)
        rgb8 = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
        out.rgb[cam].reshape(-1, 3)[start:end] = rgb8
