"""egosynth's adapter to nerfstudio's model building, trainer and run configs.

Everything of nerfstudio that is not rendering lives here, behind lazy imports (importing
nerfstudio takes ~17 s, and `egosynth --help` must stay light); rendering a bundle (cameras,
ray sampling, the field) is the NeRF backend's, egosynth.render.nerf, which builds its model
here. Imports go one way: egosynth.render.nerf imports this module; nothing here, nor in
egosynth.nerf's fit and import, imports the renderer.

- rebuilding a model from a scene bundle: nerfstudio's method registry + the bundle's plain
  settings + weights read by the weights-only loader (egosynth.nerf.bundle) — never a pickle or
  a python-object YAML from a bundle (`build_model`);
- the trainer adapter used by egosynth.nerf.fit (`trainer_config`, `run_trainer`,
  `start_step`);
- the import adapter used by egosynth.nerf.importer (`read_run_config`).

nerfacto builds an LPIPS metric (which downloads AlexNet weights) whenever a model is
constructed; offline that fails. `offline_model_construction` swaps the metric for a no-op
only while a model is being built (and, for a model built to render, every metric).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from egosynth.errors import EgosynthError
from egosynth.nerf.bundle import BundleError, BundleMeta, numpy_allow_list


# --------------------------------------------------------------------------- offline building
@contextlib.contextmanager
def offline_model_construction(metrics: bool = True) -> Iterator[None]:
    """Build nerfstudio models offline: LPIPS becomes a no-op module for this block only.

    With `metrics=False` (a model built to render, never to score its training views) every
    torchmetrics metric the model builds is a no-op stand-in: importing torchmetrics pulls in
    torchvision and scipy.signal, ~5 s of each render worker's start on a 2-core machine, for
    three metrics only nerfstudio's training evaluation calls. Metrics hold no weights, so the
    model's state dict is the same.
    """
    import sys

    import torch

    class _NoMetric(torch.nn.Module):
        """Stands in for a metric during construction; returns 0 if an evaluation calls it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            return torch.zeros(())

    if not metrics and "torchmetrics" not in sys.modules:
        with _stub_modules(("torchmetrics", "torchmetrics.functional", "torchmetrics.image",
                            "torchmetrics.image.lpip"), _NoMetric):  # fmt: skip
            yield
        return
    import torchmetrics.image.lpip as lpip_mod

    original = lpip_mod.LearnedPerceptualImagePatchSimilarity
    lpip_mod.LearnedPerceptualImagePatchSimilarity = _NoMetric  # type: ignore[misc]
    try:
        yield
    finally:
        lpip_mod.LearnedPerceptualImagePatchSimilarity = original  # type: ignore[misc]


@contextlib.contextmanager
def _stub_modules(names: tuple[str, ...], stand_in: type) -> Iterator[None]:
    """Modules whose every attribute is `stand_in`, in sys.modules for this block only."""
    import sys
    import types

    for name in names:
        mod = types.ModuleType(name)
        mod.__getattr__ = lambda attr, _s=stand_in: _s  # type: ignore[method-assign]
        mod.__path__ = []  # a package, so its submodules import
        sys.modules[name] = mod
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)


# --------------------------------------------------------------------------- settings <-> config
def _plain(value: Any) -> Any:
    """JSON-plain form of a config value, or raise TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError("non-finite float")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), (str, int)):
        return value.value  # enums (e.g. DepthLossType) are stored by value
    raise TypeError(f"{type(value).__name__} is not plain data")


def plain_model_settings(model_config: Any) -> dict[str, Any]:
    """Every plain-data field of a nerfstudio model config (nested configs/classes skipped)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(model_config):
        if f.name.startswith("_"):
            continue
        with contextlib.suppress(TypeError):
            out[f.name] = _plain(getattr(model_config, f.name))
    return out


def _method_config(method: str) -> Any:
    from nerfstudio.configs.method_configs import all_methods

    if method not in all_methods:
        raise EgosynthError(f"unknown nerfstudio method {method!r}")
    return copy.deepcopy(all_methods[method])


# The registry's model configs of the nerfacto family, written out: importing nerfstudio's
# registry (nerfstudio.configs.method_configs) imports every method it knows, the viewer and the
# trainer, ~4.6 s here and ~13 s of a render worker's start on a loaded 2-core machine, to read
# one dataclass. Other methods still come from the registry. tests/test_nerf_backend.py checks
# each entry equals the registry's (nerfstudio is pinned, so they cannot drift apart unseen).
_BIG = {"eval_num_rays_per_chunk": 1 << 15, "num_nerf_samples_per_ray": 128,
        "num_proposal_samples_per_ray": (512, 256), "hidden_dim": 128, "hidden_dim_color": 128,
        "appearance_embed_dim": 128, "max_res": 4096,
        "proposal_weights_anneal_max_num_iters": 5000, "log2_hashmap_size": 21,
        "average_init_density": 0.01}  # fmt: skip
_HUGE_PROPOSALS = [
    {"hidden_dim": 16, "log2_hashmap_size": 17, "num_levels": n, "max_res": r, "use_linear": False}
    for n, r in ((5, 512), (7, 2048))
]
_HUGE = {**_BIG, "num_nerf_samples_per_ray": 64, "num_proposal_samples_per_ray": (512, 512),
         "proposal_net_args_list": _HUGE_PROPOSALS, "hidden_dim": 256, "hidden_dim_color": 256,
         "appearance_embed_dim": 32, "max_res": 8192}  # fmt: skip
REGISTRY_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "nerfacto": ("nerfacto", {"eval_num_rays_per_chunk": 1 << 15, "average_init_density": 0.01}),
    "nerfacto-big": ("nerfacto", _BIG),
    "nerfacto-huge": ("nerfacto", _HUGE),
    "depth-nerfacto": ("depth_nerfacto", {"eval_num_rays_per_chunk": 1 << 15}),
}


def registry_model_config(method: str) -> Any:
    """`all_methods[method].pipeline.model`, a fresh copy, without the registry where known."""
    if method not in REGISTRY_MODELS:
        return _method_config(method).pipeline.model
    import importlib

    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    module, kwargs = REGISTRY_MODELS[method]
    mod = importlib.import_module(f"nerfstudio.models.{module}")
    cls = mod.DepthNerfactoModelConfig if module == "depth_nerfacto" else mod.NerfactoModelConfig
    return cls(**copy.deepcopy(kwargs), camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"))


def model_config_from_settings(method: str, settings: dict[str, Any], source: Path) -> Any:
    """nerfstudio's registry config for `method`, with plain `settings` applied field by field."""
    cfg = registry_model_config(method)
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in settings.items():
        if key not in fields or key.startswith("_"):
            raise BundleError(
                f"{source}: field 'model_settings.{key}' = {value!r:.40}: not a setting of {method}"
            )
        default = getattr(cfg, key)
        try:
            plain_default = _plain(default)
        except TypeError:
            raise BundleError(
                f"{source}: field 'model_settings.{key}': not a plain-data setting"
            ) from None
        if isinstance(default, tuple):
            value = tuple(value)
        elif hasattr(default, "value") and not isinstance(default, (int, float, str)):
            value = type(default)(value)  # enum restored from its value
        elif isinstance(plain_default, float) and isinstance(value, int):
            value = float(value)
        setattr(cfg, key, value)
    return cfg


# --------------------------------------------------------------------------- model from a bundle
def build_model(meta: BundleMeta, weights: dict[str, Any], device: str, source: Path) -> Any:
    """Construct the nerfstudio model described by `meta` and load `weights` (strictly)."""
    import torch
    from nerfstudio.data.scene_box import SceneBox

    cfg = model_config_from_settings(meta.method, meta.model_settings, source)
    scene_box = SceneBox(aabb=torch.tensor(meta.scene_box, dtype=torch.float32))
    with offline_model_construction(metrics=False):
        model = cfg.setup(scene_box=scene_box, num_train_data=meta.num_train_data, metadata={})
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Training-camera pose refinements are not part of a bundle: rendering never uses them.
    missing = [k for k in missing if not k.startswith("camera_optimizer.")]
    if missing or unexpected:
        shown = (missing or unexpected)[:3]
        what = "missing" if missing else "unexpected"
        raise BundleError(
            f"{source}: weights do not match the {meta.method} settings ({what} tensors, "
            f"e.g. {shown})"
        )
    return model.to(device).eval()


def pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- trainer adapter
def trainer_config(
    method: str,
    data: Path,
    output_dir: Path,
    experiment: str,
    iterations: int,
    model_settings: dict[str, Any],
    rays_per_batch: int | None,
    steps_per_save: int,
    device: str,
    depth_unit_scale: float | None = None,
) -> Any:
    """A nerfstudio TrainerConfig for `method`, for an offline, viewer-less, resumable fit."""
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    cfg = _method_config(method)
    cfg.data = Path(data)
    cfg.output_dir = Path(output_dir)
    cfg.experiment_name = experiment
    cfg.timestamp = "run"  # a fixed run folder, so a second call finds the checkpoint to resume
    cfg.max_num_iterations = iterations
    cfg.steps_per_save = steps_per_save
    cfg.steps_per_eval_batch = cfg.steps_per_eval_image = 10**9  # no eval passes during the fit
    cfg.steps_per_eval_all_images = 10**9
    cfg.save_only_latest_checkpoint = True
    cfg.vis = "none"  # no viewer, no tensorboard/wandb: none of the is_*_enabled() match
    cfg.logging.local_writer.enable = False  # egosynth shows its own progress bar
    cfg.machine.device_type = "cuda" if device.startswith("cuda") else "cpu"
    dm = cfg.pipeline.datamanager
    if device == "cpu" and type(dm).__name__ == "ParallelDataManagerConfig":
        # Worker processes re-import nerfstudio (~17 s each) for no gain on 2 cores.
        cfg.pipeline.datamanager = VanillaDataManagerConfig(
            dataparser=dm.dataparser,
            train_num_rays_per_batch=dm.train_num_rays_per_batch,
            eval_num_rays_per_batch=dm.eval_num_rays_per_batch,
        )
        dm = cfg.pipeline.datamanager
    dm.data = dm.dataparser.data = Path(data)  # what `ns-train --data` sets
    if rays_per_batch:
        dm.train_num_rays_per_batch = dm.eval_num_rays_per_batch = rays_per_batch
    if depth_unit_scale is not None:
        dm.dataparser.depth_unit_scale_factor = depth_unit_scale
    cfg.pipeline.model = model_config_from_settings(method, model_settings, Path("<preset>"))
    if device == "cpu":
        cfg.mixed_precision = False
    return cfg


def run_trainer(cfg: Any, on_step: Callable[[int, float], None]) -> Path:
    """Run nerfstudio's Trainer on `cfg` up to cfg.max_num_iterations TOTAL steps.

    Resumes from the run folder's latest checkpoint if there is one (loaded weights-only with
    the numpy allow-list). `on_step(step, loss)` is called after every iteration. Returns the
    run folder (nerfstudio's base dir: config.yml, dataparser_transforms.json, checkpoints).
    """
    import torch
    from nerfstudio.engine.trainer import Trainer

    total = cfg.max_num_iterations
    ckpt_dir = cfg.get_checkpoint_dir()
    if ckpt_dir.is_dir() and any(ckpt_dir.glob("step-*.ckpt")):
        cfg.load_dir = ckpt_dir
    cfg.get_base_dir().mkdir(parents=True, exist_ok=True)
    cfg.save_config()
    trainer = Trainer(cfg)
    with offline_model_construction(), torch.serialization.safe_globals(numpy_allow_list()):
        trainer.setup()
    # nerfstudio runs max_num_iterations MORE steps after a resume; we want a total.
    trainer.config.max_num_iterations = max(0, total - trainer._start_step)
    if trainer.config.max_num_iterations == 0:
        return cfg.get_base_dir()
    inner = trainer.train_iteration

    def train_iteration(step: int) -> Any:
        out = inner(step)
        on_step(step, float(out[0].detach()))
        return out

    trainer.train_iteration = train_iteration  # type: ignore[method-assign]
    trainer.train()
    return cfg.get_base_dir()


def start_step(cfg: Any) -> int:
    """The step a fit resumes from (0 when there is no checkpoint), without loading it."""
    ckpt_dir = cfg.get_checkpoint_dir()
    steps = (
        [int(p.stem.split("-")[1]) for p in ckpt_dir.glob("step-*.ckpt")]
        if ckpt_dir.is_dir()
        else []
    )
    return max(steps) + 1 if steps else 0


# --------------------------------------------------------------------------- import adapter
def read_run_config(config_yml: Path) -> dict[str, Any]:
    """Read a nerfstudio run's config.yml (python-object YAML) ONCE, at import time only.

    This is the single place egosynth constructs python objects from YAML, and it only ever
    runs on a user's own nerfstudio output folder when they ask to import it; what comes out is
    plain data that goes into the bundle.
    """
    import yaml
    from nerfstudio.engine.trainer import TrainerConfig

    try:
        cfg = yaml.load(config_yml.read_text(), Loader=yaml.Loader)
    except yaml.YAMLError as exc:
        raise EgosynthError(f"{config_yml}: not a readable nerfstudio config ({exc})") from None
    if not isinstance(cfg, TrainerConfig):
        raise EgosynthError(f"{config_yml}: not a nerfstudio TrainerConfig")
    dp = cfg.pipeline.datamanager.dataparser
    return {
        "method": cfg.method_name,
        "model_settings": plain_model_settings(cfg.pipeline.model),
        "scene_scale": float(getattr(dp, "scene_scale", 1.0)),
        "data": str(cfg.data) if cfg.data is not None else None,
    }
