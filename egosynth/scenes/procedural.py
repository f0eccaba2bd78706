"""Procedural rooms: generator config + seed -> layout -> scene config (YAML) and mesh.

A *generator config* (scene_configs/procedural/*.yaml, `GeneratorConfig`) describes a family of
rooms; scene `index` of it is fully determined by (config, index). A generated scene config
stores the whole generator config and the index under `procedural:`, so the mesh backend can
rebuild the exact mesh from the scene file alone, and nothing else is needed to reproduce it.

Rooms: a rectangular floor at z = 0 with walls and a ceiling, textured by a *style*
(the background: floor/wall textures). Furniture stands against walls or free; objects of
several categories stand on the floor. Each category differs from its sibling only by a
diagnostic part (egosynth.scenes.shapes).

Shortcut knob `shortcut` in [0, 1]: every style has a "home" category (style i -> category
i mod K). Each object is its room style's home category with probability `shortcut`, else a
category drawn uniformly. 0 = category independent of background, 1 = background predicts the
category perfectly. Categories are drawn from their own random stream, so the knob changes
categories but not the room, furniture or colours.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from egosynth.errors import ConfigError, EgosynthError
from egosynth.labels import Label
from egosynth.scenes.mesh import MeshBuilder, SceneMesh
from egosynth.scenes.shapes import (
    CATEGORIES,
    DIAGNOSTIC_PART,
    FAMILY_OF,
    FURNITURE_KINDS,
    PALETTES,
    PARTS,
    furniture_pieces,
    object_pieces,
)
from egosynth.scenes.textures import Material

if TYPE_CHECKING:
    from shapely.geometry import Polygon

    from egosynth.config import SceneConfig

GENERATOR_VERSION = 1
WALL_THICKNESS = 0.1
# Free space is kept in one piece for a walker of this radius (0.3 m clearance plus the 5 cm
# planning margin of egosynth.motion.FloorPlan, so walkers and captures can reach all of it).
WALK_CLEARANCE = 0.35
OBJECT_GAP = 0.45  # objects keep this far from walls, furniture and each other


# ------------------------------------------------------------------ styles (backgrounds)
CEILING = Material("noise", (0.93, 0.92, 0.9), (0.82, 0.82, 0.8), 0.8)


@dataclass(frozen=True)
class RoomStyle:
    floor: Material
    walls: Material
    ceiling: Material = CEILING


STYLES: dict[str, RoomStyle] = {
    "wood": RoomStyle(
        floor=Material("planks", (0.6, 0.4, 0.22), (0.36, 0.22, 0.11), 0.2),
        walls=Material("stripes", (0.92, 0.87, 0.72), (0.78, 0.7, 0.52), 0.3),
    ),
    "tiles": RoomStyle(
        floor=Material("checker", (0.92, 0.92, 0.9), (0.3, 0.36, 0.48), 0.5),
        walls=Material("noise", (0.62, 0.77, 0.92), (0.4, 0.55, 0.78), 0.6),
    ),
    "carpet": RoomStyle(
        floor=Material("noise", (0.28, 0.5, 0.28), (0.1, 0.26, 0.12), 0.12),
        walls=Material("stripes", (0.95, 0.8, 0.82), (0.98, 0.96, 0.95), 0.15),
    ),
    "stone": RoomStyle(
        floor=Material("noise", (0.66, 0.66, 0.63), (0.33, 0.33, 0.36), 0.5),
        walls=Material("bricks", (0.62, 0.27, 0.18), (0.82, 0.8, 0.74), 0.5),
    ),
}
FURNITURE_COLORS = ((0.55, 0.38, 0.22), (0.75, 0.62, 0.45), (0.35, 0.3, 0.28), (0.5, 0.2, 0.2))

StyleName = Literal["wood", "tiles", "carpet", "stone"]
CategoryName = Literal["cat", "dog", "car", "tractor"]
FRange = tuple[
    Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)],
    Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)],
]
IRange = tuple[Annotated[int, Field(strict=True, ge=0)], Annotated[int, Field(strict=True, ge=0)]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneratorConfig(_Strict):
    """A family of procedural rooms; `count` scenes named `<name>_<i>`."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    version: Literal[1] = GENERATOR_VERSION
    count: Annotated[int, Field(strict=True, ge=1, le=10_000)] = 3
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    room_size_m: FRange = (5.0, 8.0)
    wall_height_m: Annotated[float, Field(strict=True, ge=2.0, le=6.0)] = 2.5
    furniture: IRange = (2, 4)
    objects: IRange = (4, 6)
    object_length_m: FRange = (0.5, 0.9)
    categories: list[CategoryName] = Field(default=list(CATEGORIES), min_length=1)
    styles: list[StyleName] = Field(default=list(STYLES), min_length=1)
    shortcut: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _check(self) -> GeneratorConfig:
        for name in ("room_size_m", "furniture", "objects", "object_length_m"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: min {lo} is greater than max {hi}")
        if not (3.0 <= self.room_size_m[0] and self.room_size_m[1] <= 30.0):
            raise ValueError(f"room_size_m must lie in [3, 30] m, got {self.room_size_m}")
        if self.objects[1] > 60:  # part ids are uint8: 4 parts x 60 objects < 255
            raise ValueError(f"objects: at most 60 per room, got {self.objects[1]}")
        if self.object_length_m[1] > 2.0:
            raise ValueError(f"object_length_m: at most 2 m, got {self.object_length_m[1]}")
        for name in ("categories", "styles"):
            v = getattr(self, name)
            if len(set(v)) != len(v):
                raise ValueError(f"{name} must be unique, got {v}")
        return self

    def home_category(self, style: str) -> str:
        """The category a style favours under the shortcut knob."""
        return self.categories[self.styles.index(style) % len(self.categories)]


class ProceduralSpec(_Strict):
    """What a scene config's `procedural:` holds: the generator, the index, derived facts."""

    generator: GeneratorConfig
    index: Annotated[int, Field(strict=True, ge=0)]
    style: StyleName | None = None  # derived; recorded for analyses, checked on rebuild


# ------------------------------------------------------------------ layout
@dataclass
class PlacedFurniture:
    kind: str
    x: float
    y: float
    yaw_deg: float
    size: tuple[float, float, float]
    color: tuple[float, float, float]


@dataclass
class PlacedObject:
    name: str
    category: str
    x: float
    y: float
    yaw_deg: float
    length: float
    color: tuple[float, float, float]


@dataclass
class Layout:
    """Everything random about one room, decided once; geometry follows deterministically."""

    name: str
    width: float
    depth: float
    height: float
    style: str
    furniture: list[PlacedFurniture] = field(default_factory=list)
    objects: list[PlacedObject] = field(default_factory=list)

    @property
    def floor(self) -> list[tuple[float, float]]:
        w, d = self.width, self.depth
        return [(0.0, 0.0), (w, 0.0), (w, d), (0.0, d)]

    @property
    def light(self) -> tuple[float, float, float]:
        return (self.width / 2, self.depth / 2, self.height - 0.3)


def _r(x: float, nd: int = 3) -> float:
    """Round sampled values so YAML annotations and the mesh agree exactly."""
    return float(round(float(x), nd))


def _rot2(yaw_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    return np.array([[c, -s], [s, c]])


def _footprint(x: float, y: float, yaw: float, lo: np.ndarray, hi: np.ndarray) -> Polygon:
    """World footprint of a local xy box [lo, hi] placed at (x, y) with yaw."""
    from shapely.geometry import Polygon

    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    return Polygon(corners @ _rot2(yaw).T + (x, y))


def _connected(floor: Polygon, blocked: list[Polygon]) -> bool:
    """True when the walkable region stays one piece holding nearly all the free area."""
    from shapely.ops import unary_union

    free = floor.buffer(-WALK_CLEARANCE)
    if blocked:
        free = free.difference(unary_union([b.buffer(WALK_CLEARANCE) for b in blocked]))
    if free.is_empty or free.area < 0.25 * floor.area:
        return False
    parts = getattr(free, "geoms", [free])
    return max(p.area for p in parts) >= 0.98 * free.area


def _scene_rngs(gen: GeneratorConfig, index: int) -> tuple[np.random.Generator, ...]:
    ss = np.random.SeedSequence([gen.seed, index])
    layout_ss, category_ss = ss.spawn(2)
    return np.random.default_rng(layout_ss), np.random.default_rng(category_ss)


def _object_local_bounds(category: str, length: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = _unit_bounds(category)  # every dimension scales with the length
    return lo * length, hi * length


@cache
def _unit_bounds(category: str) -> tuple[np.ndarray, np.ndarray]:
    return _bounds([p.mesh for p in object_pieces(category, 1.0, (0.5, 0.5, 0.5))])


def _bounds(meshes: list) -> tuple[np.ndarray, np.ndarray]:
    v = np.concatenate([np.asarray(m.vertices) for m in meshes])
    return v.min(axis=0), v.max(axis=0)


def generate_layout(gen: GeneratorConfig, index: int) -> Layout:
    """Sample room `index` of generator `gen`."""
    from shapely.geometry import Polygon

    rng, cat_rng = _scene_rngs(gen, index)
    w = _r(rng.uniform(*gen.room_size_m), 2)
    d = _r(rng.uniform(*gen.room_size_m), 2)
    style = gen.styles[int(rng.integers(len(gen.styles)))]
    lay = Layout(f"{gen.name}_{index}", w, d, gen.wall_height_m, style)
    floor = Polygon(lay.floor)
    blocked: list[Polygon] = []
    for _ in range(int(rng.integers(gen.furniture[0], gen.furniture[1] + 1))):
        f = _place_furniture(rng, lay, floor, blocked)
        if f is not None:
            lay.furniture.append(f)
    furniture_blocked = list(blocked)
    n_obj = int(rng.integers(gen.objects[0], gen.objects[1] + 1))
    home = gen.home_category(style)
    for i in range(n_obj):
        u, uniform = cat_rng.random(), gen.categories[int(cat_rng.integers(len(gen.categories)))]
        category = home if u < gen.shortcut else uniform
        length = _r(rng.uniform(*gen.object_length_m))
        palette = PALETTES[FAMILY_OF[category]]
        color = palette[int(rng.integers(len(palette)))]
        o = _place_object(rng, lay, floor, blocked, furniture_blocked, category, length)
        if o is not None:
            x, y, yaw = o
            lay.objects.append(PlacedObject(f"{category}_{i}", category, x, y, yaw, length, color))
    return lay


def _place_furniture(
    rng: np.random.Generator, lay: Layout, floor: Polygon, blocked: list[Polygon]
) -> PlacedFurniture | None:
    kind = FURNITURE_KINDS[int(rng.integers(len(FURNITURE_KINDS)))]
    size = {
        "table": (rng.uniform(1.0, 1.6), rng.uniform(0.6, 0.9), 0.75),
        "cabinet": (rng.uniform(0.8, 1.6), rng.uniform(0.4, 0.6), rng.uniform(0.8, 2.0)),
        "sofa": (rng.uniform(1.6, 2.2), rng.uniform(0.8, 0.95), 0.85),
        "shelf": (rng.uniform(0.8, 1.2), 0.35, rng.uniform(1.6, 2.0)),
    }[kind]
    fw, fd, fh = (_r(s, 2) for s in size)
    color = FURNITURE_COLORS[int(rng.integers(len(FURNITURE_COLORS)))]
    against_wall = kind != "table" or rng.random() < 0.5
    for _ in range(50):
        if against_wall:
            wall = int(rng.integers(4))
            yaw = 90.0 * wall  # the back (local -y) faces walls S, E, N, W in turn
            along = lay.width if wall % 2 == 0 else lay.depth
            if along < fw + 0.2:
                continue
            s = rng.uniform(fw / 2 + 0.1, along - fw / 2 - 0.1)
            off = fd / 2 + 0.02
            x, y = [
                (s, off),
                (lay.width - off, s),
                (lay.width - s, lay.depth - off),
                (off, lay.depth - s),
            ][wall]
        else:
            yaw = float(rng.uniform(0.0, 180.0))
            x, y = rng.uniform(1.0, lay.width - 1.0), rng.uniform(1.0, lay.depth - 1.0)
        x, y, yaw = _r(x), _r(y), _r(yaw, 1)
        half = np.array([fw / 2, fd / 2])
        fp = _footprint(x, y, yaw, -half, half)
        if not floor.buffer(1e-6).contains(fp):
            continue
        if any(fp.distance(b) < 0.1 for b in blocked) or not _connected(floor, [*blocked, fp]):
            continue
        blocked.append(fp)
        return PlacedFurniture(kind, x, y, yaw, (fw, fd, fh), color)
    return None


def _place_object(
    rng: np.random.Generator,
    lay: Layout,
    floor: Polygon,
    blocked: list[Polygon],
    furniture: list[Polygon],
    category: str,
    length: float,
) -> tuple[float, float, float] | None:
    lo, hi = _object_local_bounds(category, length)
    inner = floor.buffer(-OBJECT_GAP)
    for _ in range(100):
        x, y = rng.uniform(0.0, lay.width), rng.uniform(0.0, lay.depth)
        yaw = rng.uniform(-180.0, 180.0)
        x, y, yaw = _r(x), _r(y), _r(yaw, 1)
        fp = _footprint(x, y, yaw, lo[:2], hi[:2])
        if not inner.contains(fp) or any(fp.distance(b) < OBJECT_GAP for b in blocked):
            continue
        if not _connected(floor, [*blocked, fp]):
            continue
        blocked.append(fp)
        return x, y, yaw
    return None


# ------------------------------------------------------------------ scene config
def _obj_world(o: PlacedObject) -> np.ndarray:
    T = np.eye(4)
    T[:2, :2] = _rot2(o.yaw_deg)
    T[:2, 3] = (o.x, o.y)
    return T


def _box_annotation(lo: np.ndarray, hi: np.ndarray, T: np.ndarray, yaw: float) -> dict[str, Any]:
    c_local = (lo + hi) / 2
    c = T[:3, :3] @ c_local + T[:3, 3]
    return {
        "center": [_r(v, 4) for v in c],
        "extents": [_r(v, 4) for v in hi - lo],
        "yaw_deg": _r(yaw, 1),
    }


def _object_pieces_world(o: PlacedObject) -> list:
    T = _obj_world(o)
    pieces = object_pieces(o.category, o.length, o.color)
    for p in pieces:
        p.mesh.apply_transform(T)
    return pieces


def scene_dict(gen: GeneratorConfig, index: int, layout: Layout | None = None) -> dict[str, Any]:
    """The scene config (plain data, SceneConfig schema) of room `index` of `gen`."""
    lay = layout or generate_layout(gen, index)
    obstacles = []
    for f in lay.furniture:
        half = np.array([f.size[0] / 2, f.size[1] / 2])
        fp = _footprint(f.x, f.y, f.yaw_deg, -half, half)
        obstacles.append({"polygon": _poly(fp), "height": f.size[2]})
    objects = []
    for o in lay.objects:
        pieces = object_pieces(o.category, o.length, o.color)  # object frame
        T = _obj_world(o)
        lo, hi = _bounds([p.mesh for p in pieces])
        obj = {"name": o.name, "category": o.category,
               "diagnostic_part": DIAGNOSTIC_PART[o.category],
               **_box_annotation(lo, hi, T, o.yaw_deg)}  # fmt: skip
        parts = []
        for part in PARTS[FAMILY_OF[o.category]]:
            plo, phi = _bounds([p.mesh for p in pieces if p.part == part])
            parts.append({"name": part, **_box_annotation(plo, phi, T, o.yaw_deg)})
        obj["parts"] = parts
        objects.append(obj)
        fp = _footprint(o.x, o.y, o.yaw_deg, lo[:2], hi[:2])
        obstacles.append({"polygon": _poly(fp), "height": _r(hi[2], 3)})
    spec = ProceduralSpec(generator=gen, index=index, style=lay.style)
    return {
        "name": lay.name,
        "backend": "mesh",
        "procedural": spec.model_dump(mode="json"),
        "floor": [list(p) for p in lay.floor],
        "obstacles": obstacles,
        "objects": objects,
    }


def _poly(p: Polygon) -> list[list[float]]:
    return [[_r(x, 4), _r(y, 4)] for x, y in list(p.exterior.coords)[:-1]]


class _FlowDumper(yaml.SafeDumper):
    """Short lists of scalars on one line; everything else in block style."""


def _repr_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data) or all(
        isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v) for v in data
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow and bool(data))


_FlowDumper.add_representer(list, _repr_list)


def scene_yaml(gen: GeneratorConfig, index: int) -> str:
    """The scene config text of room `index`: identical bytes for identical inputs."""
    header = (
        f"# Generated by `egosynth scenes generate` (generator {gen.name!r}, scene {index}).\n"
        "# Do not edit by hand: the mesh backend rebuilds the geometry from `procedural` and\n"
        "# checks the objects below against it.\n"
    )
    body = yaml.dump(scene_dict(gen, index), Dumper=_FlowDumper, sort_keys=False, width=100)
    return header + body


def load_generator(path: str | Path) -> GeneratorConfig:
    """Load a generator config YAML (one-line ConfigError on problems)."""
    from egosynth.config import read_yaml, validate
    from egosynth.readers import resolve

    path = resolve(path, "config")
    return validate(GeneratorConfig, read_yaml(path), path)


def write_scenes(gen: GeneratorConfig, out_dir: Path) -> list[Path]:
    """Write every scene of `gen` as `<out_dir>/<name>_<i>.yaml`; returns the paths."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(gen.count), desc=f"generating {gen.name}", unit="scene", leave=False):
        p = out_dir / f"{gen.name}_{i}.yaml"
        try:
            p.write_text(scene_yaml(gen, i))
        except OSError as exc:
            raise EgosynthError(f"{p}: cannot write ({exc.strerror})") from None
        paths.append(p)
    return paths


# ------------------------------------------------------------------ mesh
def parse_spec(procedural: dict[str, Any], source: object = "<scene>") -> ProceduralSpec:
    """Validate a scene's `procedural:` mapping (one-line ConfigError naming the field)."""
    try:
        return ProceduralSpec.model_validate(procedural)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "procedural." + ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(source, loc, err.get("input"), msg) from None


def build_mesh(lay: Layout) -> SceneMesh:
    """The triangle mesh of a layout: room, furniture and objects with ids and materials."""
    from egosynth.scenes.shapes import _box

    b = MeshBuilder()
    st = STYLES[lay.style]
    w, d, h, t = lay.width, lay.depth, lay.height, WALL_THICKNESS
    # closed room: slabs OUTSIDE the floor polygon, inner faces exactly on its edges
    b.add(_box((w + 2 * t, d + 2 * t, t), (w / 2, d / 2, -t / 2)), st.floor)
    b.add(_box((w + 2 * t, d + 2 * t, t), (w / 2, d / 2, h + t / 2)), st.ceiling)
    b.add(_box((w + 2 * t, t, h), (w / 2, -t / 2, h / 2)), st.walls)
    b.add(_box((w + 2 * t, t, h), (w / 2, d + t / 2, h / 2)), st.walls)
    b.add(_box((t, d, h), (-t / 2, d / 2, h / 2)), st.walls)
    b.add(_box((t, d, h), (w + t / 2, d / 2, h / 2)), st.walls)
    for f in lay.furniture:
        T = np.eye(4)
        T[:2, :2] = _rot2(f.yaw_deg)
        T[:2, 3] = (f.x, f.y)
        for p in furniture_pieces(f.kind, f.size, f.color):
            b.add(p.mesh.apply_transform(T), p.material)
    labels, part_id = [], 0
    for i, o in enumerate(lay.objects, start=1):
        pieces = _object_pieces_world(o)
        ids: dict[str, int] = {}
        for part in PARTS[FAMILY_OF[o.category]]:
            part_id += 1
            ids[part] = part_id
        for p in pieces:
            b.add(p.mesh, p.material, instance=i, part=ids[p.part])
        parts = {v: k for k, v in ids.items()}
        labels.append(Label(i, o.name, o.category, parts, DIAGNOSTIC_PART[o.category]))
    return b.build(lay.light, labels)


def build_mesh_from_settings(procedural: dict[str, Any]) -> SceneMesh:
    """Rebuild a scene's mesh from its `procedural:` settings alone."""
    spec = parse_spec(procedural)
    lay = generate_layout(spec.generator, spec.index)
    if spec.style is not None and spec.style != lay.style:
        raise EgosynthError(
            f"procedural.style = {spec.style!r} but the generator makes {lay.style!r}: "
            "the scene was generated by a different generator version"
        )
    return build_mesh(lay)


def scene_mesh(scene: SceneConfig) -> SceneMesh:
    """The mesh of a procedural scene config, rebuilt from `scene.procedural` (cached per
    process, 8 scenes) and checked against the objects the scene annotates."""
    if scene.procedural is None:
        raise EgosynthError(f"scene {scene.name!r}: backend 'mesh' needs 'procedural' settings")
    try:
        mesh = _cached_mesh(json.dumps(scene.procedural, sort_keys=True))
    except ConfigError as exc:  # the settings alone do not know their file: name it
        raise ConfigError(scene.source or scene.name, exc.field, exc.value, exc.reason) from None
    check_scene_matches(scene, mesh)
    return mesh


@lru_cache(maxsize=8)
def _cached_mesh(procedural_json: str) -> SceneMesh:
    return build_mesh_from_settings(json.loads(procedural_json))


def check_scene_matches(scene: SceneConfig, mesh: SceneMesh) -> None:
    """The scene's annotated objects must be the ones the mesh was built with."""
    want = [(lab.name, lab.category) for lab in mesh.labels]
    have = [(o.name, o.category) for o in scene.objects]
    if want != have:
        raise EgosynthError(
            f"{scene.source or scene.name}: objects {have[:3]}... do not match the ones its "
            f"procedural settings build {want[:3]}...: regenerate it (egosynth scenes generate)"
        )
