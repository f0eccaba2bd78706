"""Typed, validated configs loaded from YAML (scene_configs/).

Four kinds compose: a *scene* (geometry and annotations), a *rig* (the observer's eyes), a
*motion* model (how the observer moves) and a *scene set* (what to render). Every loader turns
a problem into ONE line naming the file, the field and the value (`ConfigError`).
Relative paths inside a config are relative to that config file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from egosynth.errors import ConfigError
from egosynth.presets import PRESETS
from egosynth.readers import read_yaml as _read_yaml
from egosynth.readers import resolve

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENE_CONFIGS = REPO_ROOT / "scene_configs"
DEFAULT_SCENE_SET = SCENE_CONFIGS / "sets" / "demo.yaml"
# `egosynth render` with no argument renders the committed NeRF bundles (guided, once baked).
DEFAULT_RENDER_SET = SCENE_CONFIGS / "sets" / "demo_nerf.yaml"

PositiveFloat = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Vec2 = tuple[Finite, Finite]
Vec3 = tuple[Finite, Finite, Finite]
PresetName = Literal["adult", "toddler"]
ROOM_MARGIN_M = 0.05  # how far an object's centre may lie past the floor's edge


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- scene
class OrientedBox(StrictModel):
    """A box in world metres: centre, full side lengths, rotation about +Z in degrees."""

    center: Vec3
    extents: tuple[PositiveFloat, PositiveFloat, PositiveFloat]
    yaw_deg: Finite = 0.0

    def world_from_box(self) -> np.ndarray:
        """4x4 transform from the box's unit frame (axes along extents) to the world."""
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        T = np.eye(4)
        T[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
        T[:3, 3] = self.center
        return T

    def contains(self, points: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Boolean mask of world points (..., 3) inside the box grown by `margin` metres."""
        local = (np.asarray(points, float) - self.center) @ self.world_from_box()[:3, :3]
        return np.all(np.abs(local) <= np.asarray(self.extents) / 2 + margin, axis=-1)


class Part(OrientedBox):
    """A named part of an object (e.g. an animal's head), with its own box."""

    name: str = Field(min_length=1)


class SceneObject(OrientedBox):
    """An annotated object: instance name, category, box and its parts; `diagnostic_part`
    names the part that tells its category from its family's others (the ClickMe twin's
    "human" map; docs/eval.md), where the annotator knows it."""

    name: str = Field(min_length=1)
    category: str = Field(min_length=1)
    parts: list[Part] = []
    diagnostic_part: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _diagnostic_part_is_a_part(self) -> SceneObject:
        names = [p.name for p in self.parts]
        if self.diagnostic_part is not None and self.diagnostic_part not in names:
            raise ValueError(
                f"diagnostic_part {self.diagnostic_part!r} is not one of the object's parts {names}"
            )
        return self


def _check_polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    from shapely.geometry import Polygon
    from shapely.validation import explain_validity

    if len(points) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
    poly = Polygon(points)
    if not poly.is_valid:
        raise ValueError(f"polygon is not simple ({explain_validity(poly)})")
    if poly.area <= 1e-9:
        raise ValueError("polygon has zero area")
    return points


Polygon2 = Annotated[list[Vec2], Field(min_length=0)]


class Obstacle(StrictModel):
    """A footprint on the floor that a walker must avoid."""

    polygon: Polygon2
    height: PositiveFloat = 1.0

    _poly = field_validator("polygon")(classmethod(lambda cls, v: _check_polygon(v)))


class Similarity(StrictModel):
    """world = scale * rotation @ scene + translation (scene frame -> metric world frame)."""

    scale: PositiveFloat = 1.0
    rotation: tuple[Vec3, Vec3, Vec3] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    translation: Vec3 = (0.0, 0.0, 0.0)

    @field_validator("rotation")
    @classmethod
    def _rotation(cls, v: tuple) -> tuple:
        R = np.asarray(v, float)
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError("rotation must be a proper rotation matrix (orthonormal, det +1)")
        return v

    def matrix(self) -> np.ndarray:
        """4x4 similarity transform world_from_scene."""
        T = np.eye(4)
        T[:3, :3] = self.scale * np.asarray(self.rotation)
        T[:3, 3] = self.translation
        return T


class SceneConfig(StrictModel):
    """One scene: where its appearance comes from, and its metric annotations.

    backend "mesh": a procedural scene (ground truth), rebuilt from `procedural` settings.
    backend "nerf": a trained NeRF scene bundle folder at `bundle`.
    """

    name: str = Field(min_length=1)
    backend: Literal["mesh", "nerf"]
    bundle: Path | None = None
    # NeRF render mode (docs/bundles.md): None = guided when the bundle is baked, else full
    render: Literal["full", "guided", "baked"] | None = None
    procedural: dict[str, Any] | None = None
    world_from_scene: Similarity = Similarity()
    objects: list[SceneObject] = []
    floor: Polygon2
    obstacles: list[Obstacle] = []
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("floor")
    @classmethod
    def _floor(cls, v: list) -> list:
        return _check_polygon(v)

    @model_validator(mode="after")
    def _backend_source(self) -> SceneConfig:
        if self.backend == "nerf" and self.bundle is None:
            raise ValueError("backend 'nerf' needs a 'bundle' folder")
        if self.backend == "mesh" and self.procedural is None:
            raise ValueError("backend 'mesh' needs 'procedural' settings")
        names = [o.name for o in self.objects]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"object names must be unique, repeated: {sorted(dup)}")
        self._objects_in_room()
        return self

    def _objects_in_room(self) -> None:
        """Every annotated object's centre lies over the floor (within ROOM_MARGIN_M)."""
        from shapely.geometry import Point, Polygon

        floor = Polygon(self.floor).buffer(ROOM_MARGIN_M)
        for i, o in enumerate(self.objects):
            if not floor.covers(Point(o.center[0], o.center[1])):
                raise ValueError(
                    f"objects.{i}.center = {list(o.center)} ({o.name!r}) lies outside the floor "
                    "polygon: an object must be in the room"
                )

    @property
    def source(self) -> Path | None:
        """The YAML file this scene was loaded from (relative paths resolve against it)."""
        return self._source

    def resolve(self, p: Path) -> Path:
        """Resolve a path written in this config relative to the config's folder."""
        if p.is_absolute() or self._source is None:
            return p
        return (self._source.parent / p).resolve()

    def bundle_path(self) -> Path:
        if self.bundle is None:
            raise ConfigError(self._source, "bundle", None, "this scene has no NeRF bundle")
        return self.resolve(self.bundle)


# --------------------------------------------------------------------------- rig & motion
def _fill_preset(data: Any, section: str) -> Any:
    """Fill unset fields from the named preset (adult by default)."""
    if isinstance(data, str):
        data = {"preset": data}
    if not isinstance(data, dict):
        return data
    preset = data.get("preset", "adult")
    if preset not in PRESETS:
        return data  # the Literal on `preset` reports it with the valid choices
    return {**PRESETS[preset][section], **data}


class RigConfig(StrictModel):
    """The observer's eyes. Eye index 0 = left, 1 = right."""

    preset: PresetName = "adult"
    ipd_m: Annotated[float, Field(strict=True, gt=0.0, le=0.2)]
    eye_height_m: Annotated[float, Field(strict=True, gt=0.0, le=3.0)]
    hfov_deg: Annotated[float, Field(strict=True, gt=0.0, lt=180.0)] = 90.0
    eyes: Literal["parallel", "verging"] = "parallel"

    _presets = model_validator(mode="before")(classmethod(lambda cls, d: _fill_preset(d, "rig")))


SpeedRange = tuple[PositiveFloat, PositiveFloat]


class MotionConfig(StrictModel):
    """Parameters of the egocentric motion model (egosynth.motion). Defaults: presets.py."""

    preset: PresetName = "adult"
    walk_speed_mps: SpeedRange
    step_frequency_hz: Annotated[float, Field(strict=True, gt=0.0, le=5.0)]
    bob_amplitude_m: Annotated[float, Field(strict=True, ge=0.0, le=0.1)]
    gaze_shift_rate_hz: Annotated[float, Field(strict=True, ge=0.0, le=5.0)]
    max_head_speed_dps: Annotated[float, Field(strict=True, gt=0.0, le=1000.0)]
    pause_probability: Annotated[float, Field(strict=True, ge=0.0, le=1.0)]
    pause_seconds: SpeedRange = (0.5, 2.0)
    object_fixation_probability: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = 0.6
    look_ahead_probability: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = 0.25
    scan_yaw_deg: Annotated[float, Field(strict=True, ge=0.0, le=180.0)] = 70.0
    scan_pitch_deg: Annotated[float, Field(strict=True, ge=0.0, le=60.0)] = 20.0
    look_ahead_pitch_deg: Annotated[float, Field(strict=True, ge=-60.0, le=30.0)] = -10.0
    clearance_m: Annotated[float, Field(strict=True, ge=0.0, le=2.0)] = 0.25
    min_goal_distance_m: Annotated[float, Field(strict=True, ge=0.0)] = 1.0
    accel_mps2: PositiveFloat = 1.0

    _presets = model_validator(mode="before")(classmethod(lambda cls, d: _fill_preset(d, "motion")))

    @field_validator("walk_speed_mps", "pause_seconds")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"min {v[0]} is greater than max {v[1]}")
        return v

    @model_validator(mode="after")
    def _probabilities(self) -> MotionConfig:
        if self.object_fixation_probability + self.look_ahead_probability > 1.0 + 1e-9:
            raise ValueError("object_fixation_probability + look_ahead_probability must be <= 1")
        return self


# --------------------------------------------------------------------------- scene set
class Resolution(StrictModel):
    width: Annotated[int, Field(strict=True, gt=0, le=8192)]
    height: Annotated[int, Field(strict=True, gt=0, le=8192)]


class SceneSetConfig(StrictModel):
    """What to render: scenes x clips, clip length, frame rate, image size, rig, motion, seed."""

    name: str = Field(min_length=1)
    scenes: list[Path] = Field(min_length=1)
    clips_per_scene: Annotated[int, Field(strict=True, gt=0)] = 1
    clip_seconds: PositiveFloat = 4.0
    fps: Annotated[float, Field(strict=True, gt=0.0, le=240.0)] = 10.0
    resolution: Resolution = Resolution(width=128, height=96)
    rig: RigConfig = RigConfig()
    motion: MotionConfig = MotionConfig()
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    output: Path = Path("outputs/store.zarr")
    _source: Path | None = PrivateAttr(default=None)
    _scenes: list[SceneConfig] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _frames(self) -> SceneSetConfig:
        if not math.isfinite(self.clip_seconds * self.fps):
            raise ValueError(
                f"clip_seconds * fps = {self.clip_seconds:g} * {self.fps:g} is not a finite "
                "number of frames"
            )
        return self

    @field_validator("resolution", mode="before")
    @classmethod
    def _res(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return {"width": v[0], "height": v[1]}
        return v

    @property
    def scene_configs(self) -> list[SceneConfig]:
        """The loaded scene configs, in the order listed."""
        return self._scenes

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def frames_per_clip(self) -> int:
        n = self.clip_seconds * self.fps
        if not math.isfinite(n):
            why = f"clip_seconds * fps ({self.fps:g}) is not a finite number of frames"
            raise ConfigError(self._source, "clip_seconds", self.clip_seconds, why)
        return max(1, round(n))


# --------------------------------------------------------------------------- loading
def read_yaml(path: Path) -> Any:
    """A YAML file through the one reading path (egosynth.readers): one-line errors."""
    return _read_yaml(path, "config")


def _raise_first(path: Path, exc: ValidationError, data: Any) -> None:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    value = err.get("input", data)
    if err["type"] == "missing":
        value = None
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:  # a model-level check: its message names the fields
        raise ConfigError(path, None, None, msg) from None
    raise ConfigError(path, loc, value, msg) from None


def validate(model: type[BaseModel], data: Any, path: Path) -> Any:
    """Validate `data` as `model`, turning the first problem into a one-line ConfigError."""
    if data is None:
        raise ConfigError(path, None, None, "the file is empty (expected a mapping)")
    if not isinstance(data, dict):
        raise ConfigError(path, "", data, "expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        _raise_first(path, exc, data)


def load_scene(path: str | Path) -> SceneConfig:
    """Load and validate a scene config."""
    path = resolve(path, "config")
    scene = validate(SceneConfig, read_yaml(path), path)
    scene._source = path
    return scene


def load_scene_set(path: str | Path) -> SceneSetConfig:
    """Load a scene set and every scene it lists (scene paths are relative to the set file)."""
    path = resolve(path, "config")
    sset = validate(SceneSetConfig, read_yaml(path), path)
    sset._source = path
    scenes = []
    for i, rel in enumerate(sset.scenes):
        p = rel if rel.is_absolute() else (path.parent / rel)
        if not p.exists():
            raise ConfigError(path, f"scenes.{i}", str(rel), "scene config not found")
        scenes.append(load_scene(p))
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        raise ConfigError(path, "scenes", names, "scene names must be unique")
    sset._scenes = scenes
    return sset
