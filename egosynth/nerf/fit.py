"""`egosynth scenes fit`: fit a NeRF on a capture with nerfstudio's own trainer, offline.

Presets:
- cpu-small: a small nerfacto that fits on a 2-core CPU in tens of minutes and gives bundles
  well under 10 MB (proposal-network hash tables shrunk from 2^17 to 2^13 entries: they were
  10.5 MB of a 13 MB model). With depth in the capture, nerfstudio's depth-nerfacto (nerfacto
  plus its depth loss) is used: sparse synthetic captures generalise far better with it.
- gpu: nerfstudio's nerfacto defaults (30 k iterations, 4096 rays per batch).

The run folder is a standard nerfstudio output (config.yml, dataparser_transforms.json,
nerfstudio_models/); a second call with the same output resumes from its latest checkpoint.
The fitted run is then imported into a bundle (egosynth.nerf.importer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egosynth.config import SceneConfig
from egosynth.errors import EgosynthError


@dataclass(frozen=True)
class Preset:
    method: str  # nerfstudio method when the capture has no depth
    depth_method: str  # ... and when it has
    iterations: int
    rays_per_batch: int | None
    steps_per_save: int
    model_settings: dict[str, Any] = field(default_factory=dict)
    camera_optimizer: str | None = None  # None keeps nerfstudio's default (SO3xR3)


_SMALL_PROPOSALS = [
    {
        "hidden_dim": 16,
        "log2_hashmap_size": 13,
        "num_levels": 5,
        "max_res": 128,
        "use_linear": False,
    },
    {
        "hidden_dim": 16,
        "log2_hashmap_size": 13,
        "num_levels": 5,
        "max_res": 256,
        "use_linear": False,
    },
]

PRESETS: dict[str, Preset] = {
    "cpu-small": Preset(
        method="nerfacto",
        depth_method="depth-nerfacto",
        iterations=2000,
        rays_per_batch=1024,
        steps_per_save=100,
        model_settings={
            "implementation": "torch",
            "log2_hashmap_size": 15,
            "num_levels": 8,
            "max_res": 1024,
            "hidden_dim": 32,
            "hidden_dim_color": 32,
            "num_proposal_samples_per_ray": [64, 32],
            "num_nerf_samples_per_ray": 24,
            "proposal_net_args_list": _SMALL_PROPOSALS,
            "eval_num_rays_per_chunk": 4096,
            "depth_sigma": 0.05,  # depth-nerfacto only (ignored for nerfacto)
        },
        # Captures of procedural scenes have exact poses: nothing to refine.
        camera_optimizer="off",
    ),
    "gpu": Preset(
        method="nerfacto",
        depth_method="nerfacto",
        iterations=30000,
        rays_per_batch=None,
        steps_per_save=2000,
    ),
}


def _capture_has_depth(capture: Path) -> bool:
    from egosynth.readers import read_json

    try:
        frames = read_json(capture / "transforms.json", "capture transforms file")["frames"]
    except (KeyError, TypeError) as exc:
        raise EgosynthError(f"{capture / 'transforms.json'}: unreadable capture ({exc})") from None
    return bool(frames) and all("depth_file_path" in f for f in frames)


def _settings_for(method: str, preset: Preset) -> dict[str, Any]:
    settings = dict(preset.model_settings)
    if method == "nerfacto":
        settings.pop("depth_sigma", None)
    return settings


def fit_capture(
    capture: str | Path,
    run_dir: str | Path,
    preset: str = "cpu-small",
    iterations: int | None = None,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    depth_unit_scale: float = 1e-3,
) -> Path:
    """Fit (or resume fitting) a NeRF on a nerfstudio-format capture; returns the run folder.

    `run_dir` is nerfstudio's output dir; the run lives in <run_dir>/<experiment>/<method>/run.
    `overrides` replaces model settings of the preset (plain data, e.g. for tests).
    """
    from tqdm import tqdm

    from egosynth.nerf import nerfstudio as ns

    if preset not in PRESETS:
        raise EgosynthError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[preset]
    capture = Path(capture).resolve()
    if not (capture / "transforms.json").is_file():
        raise EgosynthError(f"{capture}: not a capture (no transforms.json)")
    method = p.depth_method if _capture_has_depth(capture) else p.method
    settings = {**_settings_for(method, p), **(overrides or {})}
    device = ns.pick_device(device)
    total = iterations or p.iterations
    cfg = ns.trainer_config(
        method=method,
        data=capture,
        output_dir=Path(run_dir).resolve(),
        experiment=capture.name,
        iterations=total,
        model_settings=settings,
        rays_per_batch=p.rays_per_batch,
        steps_per_save=min(p.steps_per_save, max(1, total)),
        device=device,
        depth_unit_scale=depth_unit_scale,
    )
    if p.camera_optimizer is not None:
        cfg.pipeline.model.camera_optimizer.mode = p.camera_optimizer
    first = ns.start_step(cfg)
    bar = tqdm(
        total=total,
        initial=min(first, total),
        desc=f"fit {capture.name}",
        unit="it",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        return ns.run_trainer(cfg, on_step)
    finally:
        bar.close()


def fit_scene(
    scene: SceneConfig,
    capture: str | Path,
    bundle_out: str | Path,
    run_dir: str | Path,
    preset: str = "cpu-small",
    iterations: int | None = None,
    device: str | None = None,
) -> Path:
    """Fit a NeRF on `capture` of `scene` and write the bundle (with its annotations)."""
    from egosynth.nerf.importer import import_run

    run = fit_capture(capture, run_dir, preset=preset, iterations=iterations, device=device)
    return import_run(run, bundle_out, annotations=scene, provenance={"preset": preset})


# Capture settings for fitting: views at the resolution egocentric clips are rendered at.
CAPTURE_VIEWS = {"cpu-small": 200, "gpu": 400}
CAPTURE_SIZE = {"cpu-small": (128, 96), "gpu": (256, 192)}


def default_paths(scene: SceneConfig, preset: str) -> tuple[Path, Path, Path]:
    """(capture folder, nerfstudio run dir, bundle folder) for `egosynth scenes fit <scene>`."""
    from egosynth.config import REPO_ROOT

    out = Path("outputs")
    return (
        out / "captures" / f"{scene.name}_{preset}",
        out / "nerf_runs" / preset,
        REPO_ROOT / "scene_bundles" / scene.name,
    )


def ensure_capture(scene: SceneConfig, folder: Path, preset: str) -> Path:
    """Render the scene's multi-view capture into `folder` unless it is already there."""
    if (folder / "transforms.json").is_file():
        return folder
    from egosynth.scenes.capture import CaptureSettings, write_capture

    w, h = CAPTURE_SIZE[preset]
    write_capture(scene, folder, CaptureSettings(n_views=CAPTURE_VIEWS[preset], width=w, height=h))
    return folder
