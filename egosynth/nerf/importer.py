"""Turn a nerfstudio output folder (ours from `scenes fit`, or a user's own run) into a bundle.

A nerfstudio run folder holds `config.yml` (python-object YAML), `dataparser_transforms.json`
and `nerfstudio_models/step-*.ckpt` (a pickle with weights AND optimizer state). The import
reads the checkpoint with the weights-only loader (a pickle naming anything but tensors and
plain numpy scalars is refused before anything runs), keeps only the model's weights, reads
config.yml once (egosynth.nerf.nerfstudio.read_run_config) and writes plain files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from egosynth.config import SceneConfig, Similarity
from egosynth.errors import EgosynthError
from egosynth.nerf.bundle import (
    SUPPORTED_METHODS,
    BundleMeta,
    safe_torch_load,
    write_bundle,
)
from egosynth.nerf.cameras import CAMERAS, cameras_from_transforms, find_transforms, write_cameras

# Tensors the renderer never needs: pose refinements of the training cameras.
_DROP_PREFIXES = ("camera_optimizer.",)


def find_run(folder: str | Path) -> Path:
    """The nerfstudio run folder under `folder` (the one holding config.yml)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise EgosynthError(f"{folder}: nerfstudio output folder not found")
    runs = sorted(p.parent for p in folder.rglob("config.yml"))
    if not runs:
        raise EgosynthError(f"{folder}: no nerfstudio run found (no config.yml below it)")
    if len(runs) > 1:
        shown = ", ".join(str(r.relative_to(folder)) for r in runs[:3])
        raise EgosynthError(f"{folder}: several nerfstudio runs ({shown}); pass one run folder")
    return runs[0]


def latest_checkpoint(run: Path) -> Path:
    ckpts = sorted((run / "nerfstudio_models").glob("step-*.ckpt"))
    if not ckpts:
        raise EgosynthError(f"{run / 'nerfstudio_models'}: no step-*.ckpt checkpoint")
    return ckpts[-1]


def model_weights(ckpt_path: Path) -> tuple[dict[str, Any], int]:
    """The model tensors of a nerfstudio checkpoint (no optimizer/scheduler state), and its step."""
    import torch

    ckpt = safe_torch_load(ckpt_path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("pipeline"), dict):
        raise EgosynthError(f"{ckpt_path}: not a nerfstudio checkpoint (no 'pipeline' state)")
    weights = {}
    for key, value in ckpt["pipeline"].items():
        name = key.removeprefix("module.")
        if not name.startswith("_model.") or not isinstance(value, torch.Tensor):
            continue  # datamanager state and anything else a renderer does not need
        name = name.removeprefix("_model.")
        if not name.startswith(_DROP_PREFIXES):
            weights[name] = value
    if not weights:
        raise EgosynthError(f"{ckpt_path}: checkpoint holds no model weights")
    return weights, int(ckpt.get("step", -1))


def _dataparser(run: Path) -> tuple[list[list[float]], float]:
    path = run / "dataparser_transforms.json"
    from egosynth.readers import read_json

    data = read_json(path, "dataparser transforms file")
    try:
        return [list(map(float, r)) for r in data["transform"]], float(data["scale"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EgosynthError(f"{path}: field 'transform'/'scale' unreadable ({exc})") from None


def _num_train_data(weights: dict[str, Any], ckpt: Path) -> int:
    emb = weights.get("field.embedding_appearance.embedding.weight")
    if emb is None:
        raise EgosynthError(f"{ckpt}: no appearance embedding; cannot tell the image count")
    return int(emb.shape[0])


def import_run(
    folder: str | Path,
    out: str | Path,
    annotations: SceneConfig | None = None,
    provenance: dict[str, Any] | None = None,
    data: str | Path | None = None,
) -> Path:
    """Write a bundle at `out` from the nerfstudio run in `folder`; returns the bundle path.

    The capture cameras (cameras.json) come from `data` (the run's data folder or its
    transforms.json), else from the data path config.yml records, when it can be found.
    """
    from egosynth.checks import output_dir
    from egosynth.nerf.nerfstudio import read_run_config

    output_dir(out, "--out", inputs=[folder])  # before anything is read or written
    run = find_run(folder)
    ckpt = latest_checkpoint(run)
    weights, step = model_weights(ckpt)  # refuses unsafe pickles before config.yml is read
    transform, scale = _dataparser(run)
    info = read_run_config(run / "config.yml")
    if info["method"] not in SUPPORTED_METHODS:
        raise EgosynthError(
            f"{run / 'config.yml'}: method {info['method']!r} is not supported "
            f"(supported: {list(SUPPORTED_METHODS)})"
        )
    s = info["scene_scale"]
    meta = BundleMeta(
        method=info["method"],
        model_settings=info["model_settings"],
        scene_box=[[-s, -s, -s], [s, s, s]],
        num_train_data=_num_train_data(weights, ckpt),
        dataparser_transform=transform,
        dataparser_scale=scale,
        world_from_scene=annotations.world_from_scene if annotations else Similarity(),
        provenance={"source": "nerfstudio", "step": step, **(provenance or {})},
    )
    root = write_bundle(out, meta, weights, annotations)
    # What onboarding needs from the run (issue 15): the capture cameras, names and sizes.
    transforms = find_transforms(str(data) if data else info.get("data"), run)
    if transforms is not None:
        write_cameras(root, cameras_from_transforms(transforms))
    else:  # never keep another run's cameras
        (root / CAMERAS).unlink(missing_ok=True)
    return root
