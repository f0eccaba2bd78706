"""`egosynth scenes check`: fidelity of a NeRF bundle against its mesh ground truth.

Held-out egocentric views (a walker's stereo eyes from egosynth's motion model, with a seed the
capture never used) are rendered by both backends; reported: PSNR and SSIM of rgb, median
depth error (metres and relative), and per-object instance-mask IoU, plus a side-by-side PNG
(rows: views; columns: NeRF rgb | mesh rgb | NeRF depth | mesh depth | NeRF ids | mesh ids).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.config import MotionConfig, RigConfig, SceneConfig, load_scene
from egosynth.errors import EgosynthError
from egosynth.render.base import Frames

CHECK_SEED = 7_777  # distinct from capture seeds: these views are held out
MIN_OBJECT_PIXELS = 20  # objects smaller than this in the ground truth are not scored


@dataclass
class CheckResult:
    psnr_db: float
    ssim: float
    depth_median_error_m: float
    depth_median_rel_error: float
    instance_iou: float  # mean over (view, object) pairs with enough ground-truth pixels
    n_views: int
    n_objects_scored: int

    def lines(self) -> list[str]:
        return [
            f"PSNR            {self.psnr_db:6.2f} dB",
            f"SSIM            {self.ssim:6.3f}",
            f"depth median    {self.depth_median_error_m:6.3f} m "
            f"({100 * self.depth_median_rel_error:.1f} %)",
            f"instance IoU    {self.instance_iou:6.3f}  ({self.n_objects_scored} object views)",
            f"views           {self.n_views}",
        ]

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def egocentric_views(
    scene: SceneConfig, n_frames: int, width: int, height: int, seed: int = CHECK_SEED
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(2*n_frames, 4, 4) left/right eye poses of an adult walker, and their intrinsics."""
    from egosynth.camera import intrinsics_from_fov
    from egosynth.motion import generate_trajectory

    rig, motion = RigConfig(), MotionConfig()
    # 2 fps spreads the held-out frames over a longer walk than a video's consecutive frames.
    traj = generate_trajectory(scene, rig, motion, n_frames, 2.0, seed)
    return traj.eye_to_world.reshape(-1, 4, 4), intrinsics_from_fov(width, height, rig.hfov_deg)


def psnr(a: NDArray, b: NDArray) -> float:
    """PSNR in dB of two uint8 (or [0,1] float) images/batches."""
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    mse = np.mean((a.astype(np.float64) / scale - b.astype(np.float64) / scale) ** 2)
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def ssim(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    from skimage.metrics import structural_similarity

    return float(
        np.mean(
            [
                structural_similarity(x, y, channel_axis=-1, data_range=255)
                for x, y in zip(a, b, strict=True)
            ]
        )
    )


def depth_errors(pred: NDArray, gt: NDArray) -> tuple[float, float]:
    """Median absolute (metres) and relative z-depth error where the ground truth has depth."""
    m = gt > 0
    if not m.any():
        return float("nan"), float("nan")
    err = np.abs(pred[m].astype(np.float64) - gt[m])
    return float(np.median(err)), float(np.median(err / gt[m]))


def instance_ious(pred: NDArray, gt: NDArray, min_pixels: int = MIN_OBJECT_PIXELS) -> list[float]:
    """IoU per (view, object id) with at least `min_pixels` ground-truth pixels."""
    out = []
    for p, g in zip(pred, gt, strict=True):
        for i in np.unique(g):
            if i == 0 or (g == i).sum() < min_pixels:
                continue
            inter = np.logical_and(p == i, g == i).sum()
            union = np.logical_or(p == i, g == i).sum()
            out.append(inter / union)
    return out


def compare(nerf: Frames, mesh: Frames) -> CheckResult:
    ious = instance_ious(nerf.instance, mesh.instance)
    d_abs, d_rel = depth_errors(nerf.depth, mesh.depth)
    return CheckResult(
        psnr_db=psnr(nerf.rgb, mesh.rgb),
        ssim=ssim(nerf.rgb, mesh.rgb),
        depth_median_error_m=d_abs,
        depth_median_rel_error=d_rel,
        instance_iou=float(np.mean(ious)) if ious else float("nan"),
        n_views=len(nerf),
        n_objects_scored=len(ious),
    )


def _colour_ids(ids: NDArray) -> NDArray[np.uint8]:
    rng = np.random.default_rng(0)
    lut = rng.integers(40, 255, size=(int(ids.max(initial=0)) + 1, 3)).astype(np.uint8)
    lut[0] = 0
    return lut[ids]


def _colour_depth(d: NDArray, far: float) -> NDArray[np.uint8]:
    g = np.clip(1.0 - d / far, 0, 1) * (d > 0)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, -1)


def side_by_side(nerf: Frames, mesh: Frames, path: Path, max_rows: int = 6) -> Path:
    """Write the comparison picture; one row per view."""
    import imageio.v3 as iio

    far = float(max(mesh.depth.max(initial=0), 1e-3))
    rows = []
    for i in range(min(len(nerf), max_rows)):
        cells = [
            nerf.rgb[i], mesh.rgb[i],
            _colour_depth(nerf.depth[i], far), _colour_depth(mesh.depth[i], far),
            _colour_ids(nerf.instance[i]), _colour_ids(mesh.instance[i]),
        ]  # fmt: skip
        rows.append(np.concatenate(cells, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(rows, axis=0))
    return path


def resolve_target(
    target: str | Path, need_annotations: bool = True
) -> tuple[SceneConfig | None, Path]:
    """(scene config for the NeRF backend, bundle folder) from a bundle or a nerf scene config."""
    from egosynth.nerf.bundle import read_bundle

    target = Path(target)
    if target.is_dir():
        bundle = read_bundle(target)
        if not need_annotations:
            return bundle.annotations, bundle.root
        if bundle.annotations is None:
            raise EgosynthError(f"{target}: bundle has no annotations, nothing to check against")
        return bundle.annotations, bundle.root
    scene = load_scene(target)
    if scene.backend != "nerf":
        raise EgosynthError(f"{target}: field 'backend' = {scene.backend!r}: need a nerf scene")
    return scene, scene.bundle_path()


def _nerf_and_truth(
    target: str | Path, n_frames: int, width: int, height: int, device: str | None
) -> tuple[Any, Path, NDArray, NDArray, Frames]:
    """(full-mode NeRF renderer, bundle folder, held-out views c2w and K, mesh frames)."""
    from egosynth.nerf.bundle import read_bundle
    from egosynth.render.mesh import MeshRenderer
    from egosynth.render.nerf import NerfRenderer

    scene, root = resolve_target(target)
    gt_scene = read_bundle(root).ground_truth_scene()
    if gt_scene is None:
        raise EgosynthError(f"{root}: bundle records no procedural scene to compare against")
    c2w, K = egocentric_views(gt_scene, n_frames, width, height)
    if scene.source is not None:
        nerf = NerfRenderer.from_scene(scene, device=device, mode="full")
    else:
        nerf = NerfRenderer.from_bundle(root, device=device, mode="full")
    return nerf, root, c2w, K, MeshRenderer.from_scene(gt_scene).render(c2w, K, width, height)


@dataclass
class ModeResult:
    mode: str
    result: CheckResult
    rays_per_s: float
    fallback: float  # fraction of rays rendered by full sampling
    psnr_vs_full: float  # nan for full itself


def check_modes(
    target: str | Path,
    n_frames: int = 4,
    width: int = 128,
    height: int = 96,
    picture: Path | None = None,
    device: str | None = None,
    modes: list[str] | None = None,
) -> str:
    """Render the same held-out views in each mode; a table against the mesh ground truth."""
    import time

    from egosynth.nerf.baked import has_bake
    from egosynth.render.nerf import RENDER_MODES

    nerf, root, c2w, K, want = _nerf_and_truth(target, n_frames, width, height, device)
    modes = modes or (list(RENDER_MODES) if has_bake(root) else ["full"])
    rows: list[ModeResult] = []
    frames: dict[str, Frames] = {}
    for mode in ["full", *[m for m in modes if m != "full"]]:
        nerf.set_mode(mode)
        t0 = time.perf_counter()
        got = nerf.render(c2w, K, width, height)
        dt = time.perf_counter() - t0
        frames[mode] = got
        vs_full = psnr(got.rgb, frames["full"].rgb) if mode != "full" else float("nan")
        rays = got.rgb.shape[0] * width * height
        rows.append(ModeResult(mode, compare(got, want), rays / dt, nerf.fallback_rays / rays,
                               vs_full))  # fmt: skip
    if picture is not None:
        modes_picture([frames[r.mode] for r in rows], [r.mode for r in rows], want, picture)
    return mode_table(rows)


def mode_table(rows: list[ModeResult]) -> str:
    head = (
        f"{'mode':7s} {'rays/s':>9s} {'fallback':>8s} {'PSNR':>6s} {'SSIM':>6s} "
        f"{'depth':>6s} {'IoU':>6s} {'vs full':>8s}"
    )
    lines = [head]
    for r in rows:
        c = r.result
        lines.append(
            f"{r.mode:7s} {r.rays_per_s:9.0f} {100 * r.fallback:7.1f}% {c.psnr_db:6.2f} "
            f"{c.ssim:6.3f} {100 * c.depth_median_rel_error:5.1f}% {c.instance_iou:6.3f} "
            f"{r.psnr_vs_full:6.2f}dB"
        )
    lines.append("PSNR, SSIM, median relative depth error and instance IoU against the mesh "
                 "ground truth; 'vs full': PSNR against full rendering")  # fmt: skip
    return "\n".join(lines)


def modes_picture(nerfs: list[Frames], names: list[str], mesh: Frames, path: Path) -> Path:
    """Rows: views; columns: rgb of each mode | mesh rgb | depth of each mode | mesh depth."""
    import imageio.v3 as iio

    far = float(max(mesh.depth.max(initial=0), 1e-3))
    rows = []
    for i in range(min(len(mesh), 4)):
        cells = [f.rgb[i] for f in nerfs] + [mesh.rgb[i]]
        cells += [_colour_depth(f.depth[i], far) for f in nerfs] + [
            _colour_depth(mesh.depth[i], far)
        ]
        rows.append(np.concatenate(cells, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.concatenate(rows, axis=0))
    return path


def check(
    target: str | Path,
    n_frames: int = 4,
    width: int = 128,
    height: int = 96,
    picture: Path | None = None,
    device: str | None = None,
) -> CheckResult:
    """Render held-out egocentric views with the bundle and its mesh ground truth; compare."""
    nerf, _, c2w, K, want = _nerf_and_truth(target, n_frames, width, height, device)
    got = nerf.render(c2w, K, width, height)
    if picture is not None:
        side_by_side(got, want, picture)
    return compare(got, want)


# --------------------------------------------------------------------------- a store's own frames
@dataclass
class StoreFidelity:
    scene: str
    result: CheckResult
    clips: int


def store_fidelity(
    store_path: str | Path, sset: Any, every: int = 8, picture: Path | None = None
) -> list[StoreFidelity]:
    """A rendered store's NeRF frames against the mesh ground truth at the same eye poses.

    Every `every`-th frame of each clip of a `backend: nerf` scene of the scene set `sset`
    (the set the store was rendered from; it locates the bundles) is rendered again by the
    bundle's procedural mesh and compared, both eyes: the fidelity of the data a trainer
    actually reads, on the store's own trajectories. Scenes without a recorded procedural
    ground truth are skipped.
    """
    from egosynth.nerf.bundle import read_bundle
    from egosynth.render.mesh import MeshRenderer
    from egosynth.store import ClipStore

    if every < 1:
        raise EgosynthError(f"--every = {every}: must be at least 1")
    store = ClipStore(store_path)
    scenes = {s.name: s for s in sset.scene_configs if s.backend == "nerf"}
    by_scene: dict[str, list[Any]] = {}
    for cid in store.clip_ids():
        clip = store.clip(cid)
        if clip.scene in scenes:
            by_scene.setdefault(clip.scene, []).append(clip)
    out, shown = [], []
    for name, clips in by_scene.items():
        gt = read_bundle(scenes[name].bundle_path()).ground_truth_scene()
        if gt is None:
            continue
        mesh = MeshRenderer.from_scene(gt)
        got, want = [], []
        for clip in clips:
            got_c, want_c = _clip_against_mesh(clip, mesh, every)
            got.append(got_c)
            want.append(want_c)
        got_f, want_f = Frames.concat(got), Frames.concat(want)
        out.append(StoreFidelity(name, compare(got_f, want_f), len(clips)))
        shown.append((got_f, want_f))
    if picture is not None and shown:
        rows = max(1, 6 // len(shown))
        side_by_side(
            Frames.concat([g[:rows] for g, _ in shown]),
            Frames.concat([w[:rows] for _, w in shown]),
            picture,
        )
    return out


def _clip_against_mesh(clip: Any, mesh: Any, every: int) -> tuple[Frames, Frames]:
    """(the clip's stored frames, the mesh's frames at the same poses), both eyes, every n-th."""
    data = clip.read(names=("rgb", "depth", "instance", "part", "cam_to_world", "intrinsics"))
    keep = slice(None, None, every)
    rgb = data["rgb"][keep]
    n, eyes, h, w = rgb.shape[:4]
    flat = (n * eyes, h, w)
    stored = Frames(
        rgb=rgb.reshape(*flat, 3),
        depth=data["depth"][keep].astype(np.float32).reshape(flat),
        instance=data["instance"][keep].reshape(flat),
        part=data["part"][keep].reshape(flat),
        accumulation=np.ones(flat, np.float32),
    )
    c2w = data["cam_to_world"][keep].astype(np.float64).reshape(-1, 4, 4)
    K = np.broadcast_to(data["intrinsics"].astype(np.float64), (n, eyes, 3, 3)).reshape(-1, 3, 3)
    return stored, mesh.render(c2w, K, w, h)
