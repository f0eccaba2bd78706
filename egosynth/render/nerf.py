"""The NeRF scene backend: renders a trained scene bundle through nerfstudio.

nerfstudio is imported lazily (importing it takes ~17 s, and `egosynth --help` must stay
light). The model is rebuilt from the bundle by egosynth.nerf.nerfstudio (the adapter to
nerfstudio's model building, trainer and run configs, which the NeRF fit and import use too);
this module only renders it:

- the camera conversion (OpenCV camera-to-world in world metres -> nerfstudio cameras in the
  model's scaled, OpenGL-axis frame), in exactly one function, `model_poses`;
- batched, chunked rendering of rgb, z-depth in metres and accumulation, plus instance and part
  masks from the rendered surface points and the bundle's 3D annotations;
- guided and baked rendering from the bundle's bake (egosynth.render.grid).

Imports go one way: this module imports egosynth.nerf's bundle, bake and nerfstudio adapter;
nothing it imports imports it back (tests/test_imports.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from egosynth.camera import distance_to_depth, opencv_to_opengl, unproject
from egosynth.errors import EgosynthError
from egosynth.labels import Label
from egosynth.nerf.bundle import Bundle, BundleError, BundleMeta, model_from_scene, read_bundle
from egosynth.nerf.lifted import LiftedMasks, has_masks, read_masks
from egosynth.nerf.nerfstudio import build_model, pick_device
from egosynth.render.base import Frames, batch_intrinsics
from egosynth.render.grid import BakedGrid

if TYPE_CHECKING:
    from egosynth.config import SceneConfig, SceneObject

# A rendered pixel counts as a surface (for depth and masks) above this opacity.
SURFACE_ACCUMULATION = 0.5
# Grow annotation boxes by this many metres when testing surface points (NeRF surfaces are a
# few millimetres fuzzy; the mesh surface lies exactly on the box faces).
MASK_MARGIN_M = 0.02
# Samples whose compositing weight is below this never reach the colour head (their colour
# changes a pixel by < weight); see `_render_rays`.
WEIGHT_EPS = 1e-4
# Surface points this close above the floor (z = 0 in the world frame, by convention) are floor,
# never an object: annotation boxes of objects standing on the floor reach down to z = 0, so
# without this the floor around an object's legs/wheels inside its box would be labelled too
# (measured on mesh ground truth: box labelling IoU 0.81-0.83 without, 0.98-0.99 with 2 cm).
FLOOR_BAND_M = 0.02
# Render modes of a NeRF scene (docs/bundles.md): nerfacto's own sampling (the reference), the
# field sampled where the baked density grid puts the weight, or the baked grids alone.
RENDER_MODES = ("full", "guided", "baked")
# The mode a scene gets when its config names none and its bundle is baked: baked, which on
# the committed CPU bundles is ~5x faster than guided and within 0.3 dB of it against the
# mesh ground truth (docs/nerf_modes.md).
DEFAULT_BAKED_MODE = "baked"
# Rays per chunk on CPU, per mode (4 views 128x96, 2 threads): the field prefers small chunks
# (guided 82 k rays/s at 4 k, 48 k at 16 k); baked's compiled march does not care (room_0 325 k
# at 8 k, 345 k at 64 k) but its fallback rays batch better in big chunks (room_1 188 k at
# 8 k, 230 k at 16 k, 285 k at 64 k). GPUs get 64 k.
CHUNK_RAYS_CPU = {"full": 4096, "guided": 4096, "baked": 65536}


# --------------------------------------------------------------------------- cameras (ONE place)
def model_poses(
    cam_to_world: NDArray[np.floating], world_from_scene: NDArray[np.floating], meta: BundleMeta
) -> tuple[NDArray[np.float64], float]:
    """OpenCV camera-to-world in world metres (N, 4, 4) -> nerfstudio poses (N, 3, 4).

    world -> scene (the bundle's data frame) undoes the scene's similarity; scene -> model applies
    nerfstudio's dataparser transform and scale; the axes flip OpenCV -> OpenGL. Returns the
    poses and `k`, the model-units-per-metre factor (a ray distance d in the model frame is d / k
    metres in the world).
    """
    c2w = np.asarray(cam_to_world, dtype=np.float64).reshape(-1, 4, 4)
    A = model_from_scene(meta) @ np.linalg.inv(np.asarray(world_from_scene, dtype=np.float64))
    k = float(np.cbrt(np.linalg.det(A[:3, :3])))
    if not k > 0:
        raise EgosynthError("world_from_scene and the dataparser transform must keep handedness")
    P = A @ c2w
    P[:, :3, :3] /= k  # a similarity scales the rotation block; poses need a pure rotation
    return opencv_to_opengl(P)[:, :3, :4], k


def nerfstudio_cameras(
    poses: NDArray[np.floating], K: NDArray[np.floating], width: int, height: int
) -> Any:
    """nerfstudio `Cameras` for N poses (N, 3, 4) and pinhole intrinsics (3,3)/(N,3,3)."""
    import torch
    from nerfstudio.cameras.cameras import Cameras, CameraType

    n = len(poses)
    Ks = batch_intrinsics(K, n)

    def col(a: NDArray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=torch.float32)[:, None]

    return Cameras(
        camera_to_worlds=torch.tensor(np.asarray(poses), dtype=torch.float32),
        fx=col(Ks[:, 0, 0]),
        fy=col(Ks[:, 1, 1]),
        cx=col(Ks[:, 0, 2]),
        cy=col(Ks[:, 1, 2]),
        width=torch.full((n, 1), width, dtype=torch.int64),
        height=torch.full((n, 1), height, dtype=torch.int64),
        camera_type=CameraType.PERSPECTIVE,
    )


# --------------------------------------------------------------------------- masks
def label_surface_points(
    points: NDArray[np.floating],
    surface: NDArray[np.bool_],
    objects: list[SceneObject],
    margin: float = MASK_MARGIN_M,
) -> tuple[NDArray[np.uint16], NDArray[np.uint8]]:
    """Instance and part ids for world surface points (..., 3) from annotation boxes.

    Only the first surface along each ray is ever tested, so an object hidden behind another is
    never labelled (occlusion comes from the rendered depth). Where boxes overlap the smallest
    box wins (the more specific annotation); points within FLOOR_BAND_M of the floor are never
    labelled. Part ids number all parts of the scene from 1, in
    object order, as the procedural mesh scenes do (see `labels_for`).
    """
    shape = points.shape[:-1]
    surface = surface & (points[..., 2] >= FLOOR_BAND_M)
    instance = np.zeros(shape, np.uint16)
    part = np.zeros(shape, np.uint8)
    best = np.full(shape, np.inf)
    part_ids = _part_ids(objects)
    for i, obj in enumerate(objects, start=1):
        inside = surface & obj.contains(points, margin)
        vol = float(np.prod(obj.extents))
        take = inside & (vol < best)
        instance[take], best[take] = i, vol
        part[take] = 0
        part_best = np.full(shape, np.inf)
        for pid, p in zip(part_ids[i - 1], obj.parts, strict=True):
            pvol = float(np.prod(p.extents))
            ptake = take & p.contains(points, margin) & (pvol < part_best)
            part[ptake], part_best[ptake] = pid, pvol
    return instance, part


def _part_ids(objects: list[SceneObject]) -> list[list[int]]:
    ids, next_id = [], 1
    for o in objects:
        ids.append(list(range(next_id, next_id + len(o.parts))))
        next_id += len(o.parts)
    if next_id - 1 > 255:
        raise EgosynthError(f"{next_id - 1} parts in one scene; part masks hold at most 255")
    return ids


def labels_for(objects: list[SceneObject]) -> list[Label]:
    """Label table matching `label_surface_points`' ids, with each object's diagnostic part
    as its annotations name it (None where they do not: the twin then falls back)."""
    return [
        Label(
            instance_id=i,
            name=o.name,
            category=o.category,
            parts={pid: p.name for pid, p in zip(pids, o.parts, strict=True)},
            diagnostic_part=o.diagnostic_part,
        )
        for i, (o, pids) in enumerate(zip(objects, _part_ids(objects), strict=True), start=1)
    ]


# --------------------------------------------------------------------------- fast hash grid
def _hash_grid_fwd(enc: Any, in_tensor: Any) -> Any:
    """nerfstudio's torch HashEncoding.pytorch_fwd, same arithmetic, less work.

    The per-axis prime products are computed once (not once per corner), the 8 corner hashes
    share them, and the 8 table lookups are one gather. The interpolation is nerfstudio's, in
    the same order, so outputs match it to float rounding.
    """
    import torch

    from egosynth.render.hashgrid import HASH_PRIMES

    table = enc.hash_table
    if (
        in_tensor.device.type == "cpu"
        and not torch.is_grad_enabled()
        and in_tensor.dtype == table.dtype == torch.float32
    ):
        return _hash_grid_numba(enc, in_tensor)
    x = in_tensor[..., None, :]
    scaled = x * enc.scalings.view(-1, 1).to(x.device)  # [..., L, 3]
    c = torch.ceil(scaled).to(torch.int64)
    f = torch.floor(scaled).to(torch.int64)
    offset = scaled - f
    primes = torch.tensor(HASH_PRIMES, device=x.device)
    hc, hf = c * primes, f * primes
    ax = (hc[..., 0], hf[..., 0])
    ay = (hc[..., 1], hf[..., 1])
    az = (hc[..., 2], hf[..., 2])
    # Corner order of nerfstudio's hashed_0..7 as (x, y, z) with 0 = ceil, 1 = floor.
    corners = (
        (0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1), (1, 0, 1)
    )  # fmt: skip
    idx = torch.stack([ax[i] ^ ay[j] ^ az[k] for i, j, k in corners])
    idx = idx % enc.hash_table_size + enc.hash_offset.to(x.device)
    f0, f1, f2, f3, f4, f5, f6, f7 = enc.hash_table[idx]
    o0, o1, o2 = offset[..., 0:1], offset[..., 1:2], offset[..., 2:3]
    f03 = f0 * o0 + f3 * (1 - o0)
    f12 = f1 * o0 + f2 * (1 - o0)
    f56 = f5 * o0 + f6 * (1 - o0)
    f47 = f4 * o0 + f7 * (1 - o0)
    f0312 = f03 * o1 + f12 * (1 - o1)
    f4756 = f47 * o1 + f56 * (1 - o1)
    out = f0312 * o2 + f4756 * (1 - o2)
    return torch.flatten(out, start_dim=-2, end_dim=-1)


def _hash_grid_numba(enc: Any, in_tensor: Any) -> Any:
    """`_hash_grid_fwd` on the CPU without autograd: one compiled loop per point
    (egosynth.render.hashgrid), 5.4x nerfstudio's torch path on room_0's table."""
    import torch

    from egosynth.render.hashgrid import hash_encode

    x = in_tensor.reshape(-1, 3).contiguous().numpy()
    scalings = np.ascontiguousarray(enc.scalings.detach().cpu().numpy().reshape(-1), np.float32)
    table = enc.hash_table.detach().contiguous().numpy()
    out = np.empty((len(x), len(scalings) * table.shape[1]), np.float32)
    hash_encode(x, scalings, table, int(enc.hash_table_size), out)
    return torch.from_numpy(out).reshape(*in_tensor.shape[:-1], out.shape[1])


@contextlib.contextmanager
def fast_hash_grids(model: Any) -> Iterator[None]:
    """Use `_hash_grid_fwd` for the model's torch hash grids inside this block only."""
    import types

    from nerfstudio.field_components.encodings import HashEncoding

    grids = [m for m in model.modules() if isinstance(m, HashEncoding) and m.tcnn_encoding is None]
    for g in grids:
        g.pytorch_fwd = types.MethodType(_hash_grid_fwd, g)
    try:
        yield
    finally:
        for g in grids:
            del g.pytorch_fwd  # back to the class's own method


# --------------------------------------------------------------------------- renderer
class NerfRenderer:
    """Renders a scene bundle through nerfstudio; implements egosynth.render.base.Renderer."""

    def __init__(
        self,
        bundle: Bundle,
        world_from_scene: NDArray[np.floating] | None = None,
        objects: list[SceneObject] | None = None,
        device: str | None = None,
        chunk_rays: int | None = None,
        mode: str | None = "full",
    ) -> None:
        self.bundle = bundle
        self.device = pick_device(device)
        self.world_from_scene = (
            np.asarray(world_from_scene, dtype=np.float64)
            if world_from_scene is not None
            else bundle.meta.world_from_scene.matrix()
        )
        ann = bundle.annotations
        self.objects: list[SceneObject] = list(
            objects if objects is not None else (ann.objects if ann is not None else [])
        )
        self._chunk_rays = chunk_rays  # None: CHUNK_RAYS_CPU for the mode, or 64 k on GPUs
        # Lifted masks (`egosynth scenes onboard`) label the objects they name; boxes the rest.
        self.lifted: LiftedMasks | None = (
            read_masks(bundle.root) if has_masks(bundle.root) else None
        )
        self.model = build_model(bundle.meta, bundle.load_weights(), self.device, bundle.root)
        self.mode = "full"
        self._grid: BakedGrid | None = None
        self.fallback_rays = 0  # rays the last render_raw sent to full sampling
        self.set_mode(mode)

    def set_mode(self, mode: str | None) -> str:
        """Choose full | guided | baked; None: DEFAULT_BAKED_MODE if baked, else full.

        guided and baked need the bundle's bake (`egosynth scenes bake`); a stale or corrupt
        bake is refused with one line, never used.
        """
        from egosynth.nerf.baked import has_bake, read_bake

        if mode is None:
            mode = DEFAULT_BAKED_MODE if has_bake(self.bundle.root) else "full"
        if mode not in RENDER_MODES:
            raise EgosynthError(f"render mode {mode!r}: choose one of {list(RENDER_MODES)}")
        if mode != "full" and self._grid is None:
            if not has_bake(self.bundle.root):
                raise BundleError(
                    f"{self.bundle.root}: render mode {mode!r} needs a bake: run "
                    f"`egosynth scenes bake {self.bundle.root}`"
                )
            self._grid = BakedGrid(read_bake(self.bundle.root), self.device)
        self.mode = mode
        return mode

    @classmethod
    def from_bundle(
        cls, path: str | Path, device: str | None = None, mode: str | None = "full"
    ) -> NerfRenderer:
        return cls(read_bundle(path), device=device, mode=mode)

    @classmethod
    def from_scene(
        cls, scene: SceneConfig, device: str | None = None, mode: str | None = None
    ) -> NerfRenderer:
        """Open the bundle a `backend: nerf` scene config points at.

        Fields the scene config sets explicitly (world_from_scene, objects) override the
        bundle's own annotations; otherwise the bundle's are used.
        """
        bundle = read_bundle(scene.bundle_path())
        given = scene.model_fields_set
        wfs = scene.world_from_scene.matrix() if "world_from_scene" in given else None
        objects = list(scene.objects) if "objects" in given else None
        mode = mode or scene.render
        return cls(bundle, world_from_scene=wfs, objects=objects, device=device, mode=mode)

    # ----------------------------------------------------------------- public API
    def labels(self) -> list[Label]:
        return labels_for(self.objects)

    def cameras(
        self, cam_to_world: NDArray[np.floating], K: NDArray[np.floating], width: int, height: int
    ) -> tuple[Any, float]:
        """nerfstudio Cameras for OpenCV world-metre poses, and the model-units-per-metre k."""
        poses, k = model_poses(cam_to_world, self.world_from_scene, self.bundle.meta)
        return nerfstudio_cameras(poses, K, width, height), k

    def render_raw(
        self, cam_to_world: NDArray[np.floating], K: NDArray[np.floating], width: int, height: int
    ) -> dict[str, NDArray[np.float32]]:
        """rgb (N,H,W,3) float in [0,1], distance (N,H,W) in model units, accumulation (N,H,W)."""
        import torch

        cams, _ = self.cameras(cam_to_world, K, width, height)
        n = len(cams)
        cams = cams.to(self.device)
        hw = height * width
        # Pixel grid shared by all cameras; rays are generated chunk by chunk to bound memory.
        ii, jj = torch.meshgrid(
            torch.arange(height, device=self.device),
            torch.arange(width, device=self.device),
            indexing="ij",
        )
        coords = torch.stack([ii, jj], -1).reshape(-1, 2).float() + 0.5  # nerfstudio's offset
        total = n * hw
        rgb = torch.empty((total, 3), dtype=torch.float32)
        dist = torch.empty((total,), dtype=torch.float32)
        acc = torch.empty((total,), dtype=torch.float32)
        chunk_rays = self._chunk_rays or (
            CHUNK_RAYS_CPU[self.mode] if self.device == "cpu" else 1 << 16
        )
        render_chunk = {
            "full": self._render_rays,
            "guided": self._render_guided,
            "baked": self._render_baked,
        }[self.mode]
        self.fallback_rays = 0
        with torch.inference_mode(), fast_hash_grids(self.model):
            for start in range(0, total, chunk_rays):
                idx = torch.arange(start, min(start + chunk_rays, total), device=self.device)
                cam_idx = (idx // hw)[:, None]
                bundle = cams.generate_rays(camera_indices=cam_idx, coords=coords[idx % hw])
                # Appearance embeddings are averaged at eval; index 0 keeps lookups in range.
                bundle.camera_indices = torch.zeros_like(bundle.camera_indices)
                out = render_chunk(bundle)
                sl = slice(start, start + len(idx))
                rgb[sl] = out["rgb"].float().cpu()
                dist[sl] = out["depth"].float().reshape(-1).cpu()
                acc[sl] = out["accumulation"].float().reshape(-1).cpu()
        return {
            "rgb": rgb.reshape(n, height, width, 3).numpy(),
            "distance": dist.reshape(n, height, width).numpy(),
            "accumulation": acc.reshape(n, height, width).numpy(),
        }

    def render(
        self,
        cam_to_world: NDArray[np.floating],
        K: NDArray[np.floating],
        width: int,
        height: int,
    ) -> Frames:
        c2w = np.asarray(cam_to_world, dtype=np.float64).reshape(-1, 4, 4)
        Ks = batch_intrinsics(K, len(c2w))
        return self.frames_from_raw(self.render_raw(c2w, Ks, width, height), c2w, Ks)

    def frames_from_raw(
        self, raw: dict[str, NDArray], cam_to_world: NDArray, K: NDArray[np.floating]
    ) -> Frames:
        """`render_raw`'s output as Frames: uint8 rgb, z-depth in metres, instance/part masks."""
        c2w = np.asarray(cam_to_world, dtype=np.float64).reshape(-1, 4, 4)
        n, height, width = raw["distance"].shape
        Ks = batch_intrinsics(K, n)
        _, k = model_poses(c2w[:1], self.world_from_scene, self.bundle.meta)
        frames = Frames.empty(n, height, width)
        frames.rgb[:] = np.clip(np.round(raw["rgb"] * 255.0), 0, 255).astype(np.uint8)
        frames.accumulation[:] = raw["accumulation"]
        surface = raw["accumulation"] > SURFACE_ACCUMULATION
        from egosynth.camera import pixel_centers

        uv = pixel_centers(width, height)
        for i in range(n):
            z = distance_to_depth(raw["distance"][i] / k, Ks[i])
            z = np.where(surface[i], z, 0.0)
            frames.depth[i] = z
            if self.objects:
                pts = unproject(uv, z, Ks[i], c2w[i])
                frames.instance[i], frames.part[i] = self._label(pts, surface[i])
        return frames

    # ----------------------------------------------------------------- internals
    def _label(self, pts: NDArray, surface: NDArray) -> tuple[NDArray, NDArray]:
        """Instance and part ids of world surface points: lifted masks, else boxes."""
        if self.lifted is None:
            return label_surface_points(pts, surface, self.objects)
        surface = surface & (pts[..., 2] >= FLOOR_BAND_M)
        return self.lifted.label(pts, surface, self.objects, self.world_from_scene, MASK_MARGIN_M)

    def _render_rays(self, ray_bundle: Any) -> dict[str, Any]:
        """nerfacto's eval forward pass, computing colour only where it can show.

        Same samplers, field and renderers as nerfacto's get_outputs; the difference is that the
        colour head runs only on samples whose compositing weight exceeds WEIGHT_EPS (empty and
        occluded space cannot change a pixel by more than that).
        """
        import torch
        from nerfstudio.field_components.field_heads import FieldHeadNames

        m = self.model
        ray_bundle = m.collider(ray_bundle)
        ray_samples, _, _ = m.proposal_sampler(ray_bundle, density_fns=m.density_fns)
        density, embedding = m.field.get_density(ray_samples)
        weights = ray_samples.get_weights(density)
        keep = weights[..., 0] > WEIGHT_EPS
        rgb_samples = torch.zeros((*weights.shape[:-1], 3), device=weights.device)
        if bool(keep.any()):
            kept = m.field.get_outputs(ray_samples[keep], density_embedding=embedding[keep])
            rgb_samples[keep] = kept[FieldHeadNames.RGB].to(rgb_samples.dtype)
        return {
            "rgb": m.renderer_rgb(rgb=rgb_samples, weights=weights),
            "depth": m.renderer_depth(weights=weights, ray_samples=ray_samples),
            "accumulation": m.renderer_accumulation(weights=weights),
        }

    def _render_guided(self, rb: Any) -> dict[str, Any]:
        """The field at GUIDED_FIELD_SAMPLES points per ray, placed by the baked density grid.

        The grid stands in for nerfacto's proposal networks (their cost is ~70 % of a full
        render on CPU): accumulation and the median depth come from a dense march through the
        grid; the field is evaluated at the grid weights' quantiles, so those points are drawn
        from the grid's light distribution along the ray. Each sample's colour is weighted by
        field density / grid density there (self-normalised importance sampling: the grid is
        a blurred copy of the field, so a quantile that lands in the air just in front of a
        surface, where the field is thin, counts less). The field's density comes free with
        its colour. room_1, 4 views: 33.5 -> 35.2 dB against full (docs/nerf_modes.md).
        Rays the grid cannot answer (origin outside it, or light escaping past its far side)
        are rendered by full sampling.
        """
        grid = self._grid
        assert grid is not None
        o, d = rb.origins, rb.directions
        m = grid.march(o, d, float(self.model.config.near_plane))
        c, density = self._field_at(o, d, m.t_colour)
        weight = density / grid.density(o[:, None] + d[:, None] * m.t_colour[..., None])
        # what is left is coloured by the field at the box exit (where the grid stops
        # knowing), else by the last quantile, as nerfacto's "last_sample" background does
        rest = c[:, -1].clone()
        if bool(m.far.any()):
            rest[m.far] = self._field_rgb(o[m.far], d[m.far], m.t_exit[m.far, None])[:, 0]
        return self._with_fallback(rb, m.ok, m.composite(c, rest, weight))

    def _render_baked(self, rb: Any) -> dict[str, Any]:
        """guided's march with the colour looked up in the baked colour table: no network.

        Rays whose colour points fall where the table holds no colour (far from every grid
        point the bake's probe rays saw) are rendered guided; guided itself sends the rays the
        grid cannot answer to full sampling.
        """
        grid = self._grid
        assert grid is not None
        out, ok = grid.shade(rb.origins, rb.directions, float(self.model.config.near_plane))
        return self._with_fallback(rb, ok, out, self._render_guided)

    def _samples(self, o: Any, d: Any, t: Any) -> Any:
        """nerfstudio RaySamples at distances t (n, k) along rays o + t d (points, no bins)."""
        import torch
        from nerfstudio.cameras.rays import Frustums, RaySamples

        n, k = t.shape
        return RaySamples(
            frustums=Frustums(
                origins=o[:, None].expand(n, k, 3),
                directions=d[:, None].expand(n, k, 3),
                starts=t[..., None],
                ends=t[..., None],
                pixel_area=torch.ones((n, k, 1), dtype=o.dtype, device=o.device),
            ),
            camera_indices=torch.zeros((n, k, 1), dtype=torch.long, device=o.device),
        )

    def _field_rgb(self, o: Any, d: Any, t: Any) -> Any:
        """The field's colour (n, k, 3) at distances t (n, k) along rays o + t d."""
        return self._field_at(o, d, t)[0]

    def _field_at(self, o: Any, d: Any, t: Any) -> tuple[Any, Any]:
        """The field's colour (n, k, 3) and density (n, k) at distances t (n, k) along rays."""
        from nerfstudio.field_components.field_heads import FieldHeadNames

        samples = self._samples(o, d, t)
        density, embedding = self.model.field.get_density(samples)
        out = self.model.field.get_outputs(samples, density_embedding=embedding)
        return out[FieldHeadNames.RGB].float(), density[..., 0].float()

    def _with_fallback(
        self, rb: Any, ok: Any, out: dict[str, Any], via: Callable[[Any], dict] | None = None
    ) -> dict[str, Any]:
        """Replace the rays not `ok` by `via`'s rendering of them (default: nerfacto's own)."""
        bad = (~ok).nonzero()[:, 0]
        if len(bad):
            if via is None:  # counts rays rendered by full sampling only
                self.fallback_rays += len(bad)
            ref = (via or self._render_rays)(rb[bad])
            for key in out:
                out[key][bad] = ref[key].to(out[key].dtype).reshape(out[key][bad].shape)
        return out

    # ----------------------------------------------------------------- field probes (baking)
    def _dtype(self) -> Any:
        """The field's float type: float32, or float64 where the bake asked for it."""
        return next(self.model.field.parameters()).dtype

    def field_log_density(self, points: NDArray[np.floating], chunk: int = 1 << 16) -> NDArray:
        """ln(density) of the field at model-frame points (N, 3) -> (N,) float32."""
        import torch

        out = np.empty(len(points), np.float32)
        dt = self._dtype()
        up = torch.tensor([0.0, 0.0, 1.0], dtype=dt, device=self.device)  # no direction needed
        with torch.inference_mode(), fast_hash_grids(self.model):
            for s in range(0, len(points), chunk):
                p = torch.as_tensor(points[s : s + chunk], dtype=dt).to(self.device)
                t = torch.zeros((len(p), 1), dtype=dt, device=self.device)
                den, _ = self.model.field.get_density(self._samples(p, up.expand_as(p), t))
                out[s : s + len(p)] = torch.log(den.reshape(-1).clamp_min(1e-8)).cpu().numpy()
        return out

    def field_radiance(
        self, points: NDArray[np.floating], dirs: NDArray[np.floating], chunk: int = 1 << 15
    ) -> NDArray[np.float32]:
        """The field's colour (N, 3) in [0, 1] at model-frame points seen along unit dirs."""
        import torch

        out = np.empty((len(points), 3), np.float32)
        dt = self._dtype()
        with torch.inference_mode(), fast_hash_grids(self.model):
            for s in range(0, len(points), chunk):
                p = torch.as_tensor(points[s : s + chunk], dtype=dt).to(self.device)
                v = torch.as_tensor(dirs[s : s + chunk], dtype=dt).to(self.device)
                t = torch.zeros((len(p), 1), dtype=dt, device=self.device)
                out[s : s + len(p)] = self._field_rgb(p, v, t)[:, 0].cpu().numpy()
        return out

    def render_reference(
        self, cam_to_world: NDArray[np.floating], K: NDArray[np.floating], width: int, height: int
    ) -> dict[str, NDArray[np.float32]]:
        """The same views through nerfstudio's own per-camera `get_outputs_for_camera` loop."""
        cams, _ = self.cameras(cam_to_world, K, width, height)
        cams = cams.to(self.device)
        rgb, dist, acc = [], [], []
        for i in range(len(cams)):
            out = self.model.get_outputs_for_camera(cams[i : i + 1])
            rgb.append(out["rgb"].cpu().numpy())
            dist.append(out["depth"][..., 0].cpu().numpy())
            acc.append(out["accumulation"][..., 0].cpu().numpy())
        return {"rgb": np.stack(rgb), "distance": np.stack(dist), "accumulation": np.stack(acc)}
