"""Scene bundles: a portable folder of plain files that fully describes a fitted NeRF scene.

Layout (all paths inside the bundle are fixed names, so a bundle can be moved or copied to
any absolute location and used from any working directory)::

    <bundle>/
      bundle.json        format version, method name, model settings (plain JSON), scene box,
                         number of training images, nerfstudio's dataparser transform and scale,
                         world_from_scene similarity, fit provenance
      weights.pt         model weights only (a flat {name: tensor} dict; no optimizer state),
                         written by torch.save and read back ONLY with torch's weights-only loader
      annotations.json   optional: the scene's metric annotations (objects, parts, floor,
                         obstacles, procedural settings of the ground-truth scene)

Loading never executes code from a bundle: JSON is parsed as data, the model configuration is
rebuilt from nerfstudio's own method registry plus these plain settings (egosynth.nerf.nerfstudio),
and weights go through `torch.load(weights_only=True)` with an allow-list of plain numpy scalar
types only. A weights file that carries any other pickled global is refused with one line.
This module does not import nerfstudio (torch is imported lazily by the weight helpers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from egosynth.config import SceneConfig, Similarity, validate
from egosynth.errors import EgosynthError

FORMAT = "egosynth-nerf-bundle"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
WEIGHTS = "weights.pt"
ANNOTATIONS = "annotations.json"
SUPPORTED_METHODS = ("nerfacto", "depth-nerfacto")

# Scene-config fields a bundle carries as annotations (never `backend`/`bundle`: those belong to
# the scene config that points AT a bundle).
_ANNOTATION_FIELDS = ("name", "objects", "floor", "obstacles", "procedural")


class BundleError(EgosynthError):
    """A bundle is missing, malformed or unsafe; the message names the file and field."""


# --------------------------------------------------------------------------- safe weights
def numpy_allow_list() -> list[Any]:
    """The only globals a weights pickle may name: plain numpy scalar/dtype reconstruction.

    nerfstudio checkpoints store the step as a numpy scalar. Pickled under numpy 1.x they name
    `numpy.core.multiarray.scalar`, which lives in `numpy._core` under numpy 2, hence the
    (object, "qualified name") form torch accepts for names that differ from `__module__`.
    """
    from numpy._core.multiarray import scalar  # type: ignore[attr-defined]

    allow: list[Any] = [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        np.dtype,
    ]
    # numpy 2 pickles dtypes through their concrete classes (numpy.dtypes.Float64DType, ...).
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        cls = getattr(np.dtypes, name, None)
        if cls is not None:
            allow.append(cls)
    return allow


def safe_torch_load(path: Path) -> Any:
    """torch.load with weights_only=True and the numpy allow-list; refuse anything else.

    A pickle that names any other global (os.system, builtins.eval, a nerfstudio class, ...) is
    rejected by torch's weights-only unpickler before anything runs; we turn that into a
    one-line BundleError naming the file and the offending global.
    """
    from egosynth.readers import ReadError, torch_load

    try:
        return torch_load(path, "weights file", numpy_allow_list())
    except ReadError as exc:
        raise BundleError(str(exc)) from None


def load_weights(path: Path) -> dict[str, Any]:
    """Read a bundle's weights file: a flat dict of tensor name -> tensor, nothing else."""
    import torch

    state = safe_torch_load(path)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise BundleError(f"{path}: expected a flat mapping of names to tensors")
    return state


def save_weights(state: dict[str, Any], path: Path) -> None:
    """Write a flat {name: tensor} dict (contiguous CPU copies, no shared storage)."""
    import torch

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    torch.save(clean, path)


# --------------------------------------------------------------------------- metadata
@dataclass
class BundleMeta:
    """Everything in bundle.json, as plain data."""

    method: str
    model_settings: dict[str, Any]
    scene_box: list[list[float]]  # (2, 3) aabb in nerfstudio's scaled frame
    num_train_data: int
    dataparser_transform: list[list[float]]  # (3, 4) applied to poses in the data frame
    dataparser_scale: float
    world_from_scene: Similarity = field(default_factory=Similarity)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "model_settings": self.model_settings,
            "scene_box": self.scene_box,
            "num_train_data": self.num_train_data,
            "dataparser": {"transform": self.dataparser_transform, "scale": self.dataparser_scale},
            "world_from_scene": self.world_from_scene.model_dump(mode="json"),
            "provenance": self.provenance,
        }


def _field(path: Path, data: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise BundleError(f"{path}: field '{key}' is missing")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BundleError(f"{path}: field '{key}' = {value!r:.60}: wrong type")
    return value


def _matrix(path: Path, key: str, value: Any, shape: tuple[int, int]) -> list[list[float]]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != shape or not np.all(np.isfinite(arr)):
        raise BundleError(
            f"{path}: field '{key}' = {value!r:.60}: expected a finite {shape} matrix"
        )
    return arr.tolist()


def parse_meta(path: Path, data: Any) -> BundleMeta:
    """Validate bundle.json's parsed content into BundleMeta (one-line errors)."""
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level")
    if data.get("format") != FORMAT:
        raise BundleError(f"{path}: field 'format' = {data.get('format')!r}: not a {FORMAT}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: field 'format_version' = {version!r}: this egosynth reads {FORMAT_VERSION}"
        )
    method = _field(path, data, "method", str)
    if method not in SUPPORTED_METHODS:
        raise BundleError(
            f"{path}: field 'method' = {method!r}: supported methods are {list(SUPPORTED_METHODS)}"
        )
    settings = _field(path, data, "model_settings", dict)
    n_train = _field(path, data, "num_train_data", int)
    if n_train < 1:
        raise BundleError(f"{path}: field 'num_train_data' = {n_train}: must be >= 1")
    dp = _field(path, data, "dataparser", dict)
    scale = dp.get("scale")
    if (
        not isinstance(scale, (int, float))
        or isinstance(scale, bool)
        or not (math.isfinite(scale) and scale > 0)
    ):
        raise BundleError(
            f"{path}: field 'dataparser.scale' = {scale!r}: must be a positive number"
        )
    try:
        w = Similarity.model_validate(data.get("world_from_scene", {}))
    except ValidationError as exc:  # the field and the value, not pydantic's URL
        err = exc.errors()[0]
        loc = ".".join(["world_from_scene", *(str(p) for p in err["loc"])])
        value = err.get("input")
        raise BundleError(
            f"{path}: field '{loc}' = {value!r:.60}: {err['msg'].removeprefix('Value error, ')}"
        ) from None
    return BundleMeta(
        method=method,
        model_settings=settings,
        scene_box=_matrix(path, "scene_box", data.get("scene_box"), (2, 3)),
        num_train_data=n_train,
        dataparser_transform=_matrix(path, "dataparser.transform", dp.get("transform"), (3, 4)),
        dataparser_scale=float(scale),
        world_from_scene=w,
        provenance=data.get("provenance", {}) if isinstance(data.get("provenance"), dict) else {},
    )


def _read_json(path: Path) -> Any:
    """A bundle's JSON file through the one reading path; refused if it leaves the bundle."""
    from egosynth.readers import ReadError, check_inside, read_json

    try:
        check_inside(path.parent, path)
        return read_json(path)
    except ReadError as exc:
        raise BundleError(str(exc)) from None


# --------------------------------------------------------------------------- bundle
@dataclass
class Bundle:
    """A scene bundle on disk: metadata and (optional) annotations; weights load on demand."""

    root: Path
    meta: BundleMeta
    annotations: SceneConfig | None

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS

    def load_weights(self) -> dict[str, Any]:
        return load_weights(self.weights_path)

    def scene_from_model(self) -> np.ndarray:
        """4x4 similarity: nerfstudio's scaled model frame -> the bundle's data (scene) frame."""
        return np.linalg.inv(model_from_scene(self.meta))

    def ground_truth_scene(self) -> SceneConfig | None:
        """The procedural mesh scene this bundle was fitted on, if it records one."""
        a = self.annotations
        if a is None or a.procedural is None:
            return None
        return a.model_copy(update={"backend": "mesh", "bundle": None})


def model_from_scene(meta: BundleMeta) -> np.ndarray:
    """4x4 similarity: data (scene) frame -> nerfstudio's scaled model frame.

    nerfstudio's dataparser maps a pose P in the data frame to T @ P, then scales translations
    by s: a point x maps to s * (T[:3,:3] x + T[:3,3]).
    """
    T = np.eye(4)
    T[:3, :] = np.asarray(meta.dataparser_transform)
    S = np.diag([meta.dataparser_scale] * 3 + [1.0])
    return S @ T


def _annotations_dict(scene: SceneConfig) -> dict[str, Any]:
    data = scene.model_dump(mode="json")
    return {k: data[k] for k in _ANNOTATION_FIELDS if data.get(k) is not None}


def read_bundle(root: str | Path) -> Bundle:
    """Open a bundle folder: parse and validate its plain files (weights are read later)."""
    from egosynth.readers import resolve

    root = resolve(root, "bundle folder")
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found")
    from egosynth.readers import ReadError, check_inside, check_regular

    meta = parse_meta(root / BUNDLE_JSON, _read_json(root / BUNDLE_JSON))
    try:  # never opened here, but it must be a regular file inside the bundle
        check_inside(root, root / WEIGHTS, "weights file")
        check_regular(root / WEIGHTS, "weights file")
    except ReadError as exc:
        raise BundleError(str(exc)) from None
    annotations = None
    ann_path = root / ANNOTATIONS
    if ann_path.exists() or ann_path.is_symlink():
        data = _read_json(ann_path)
        if not isinstance(data, dict):
            raise BundleError(f"{ann_path}: expected a JSON object")
        # Validated by the same typed model as scene configs; 'backend: nerf' + this bundle.
        annotations = validate(
            SceneConfig, {**data, "backend": "nerf", "bundle": str(root)}, ann_path
        )
        annotations = annotations.model_copy(update={"world_from_scene": meta.world_from_scene})
    return Bundle(root=root, meta=meta, annotations=annotations)


def write_bundle(
    root: str | Path,
    meta: BundleMeta,
    weights: dict[str, Any],
    annotations: SceneConfig | None = None,
) -> Path:
    """Write a bundle folder (created if needed); returns its resolved path."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    save_weights(weights, root / WEIGHTS)
    (root / BUNDLE_JSON).write_text(json.dumps(meta.to_json(), indent=1) + "\n")
    ann = root / ANNOTATIONS
    if annotations is not None:
        ann.write_text(json.dumps(_annotations_dict(annotations), indent=1) + "\n")
    elif ann.exists():
        ann.unlink()
    return root


def bundle_size_bytes(root: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
