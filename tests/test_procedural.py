"""The procedural generator: determinism, valid layouts, diagnostic parts, the shortcut knob."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from egosynth.config import REPO_ROOT, SceneConfig, load_scene, load_scene_set
from egosynth.errors import ConfigError, EgosynthError
from egosynth.motion.floorplan import FloorPlan
from egosynth.scenes.procedural import (
    OBJECT_GAP,
    GeneratorConfig,
    generate_layout,
    load_generator,
    parse_spec,
    scene_dict,
    scene_yaml,
    write_scenes,
)
from egosynth.scenes.shapes import DIAGNOSTIC_PART, FAMILIES, object_pieces

ROOMS = REPO_ROOT / "scene_configs" / "procedural" / "rooms.yaml"


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    g = GeneratorConfig(name="det", count=2, seed=5, shortcut=0.3)
    a = write_scenes(g, tmp_path / "a")
    b = write_scenes(g, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    other = scene_yaml(g.model_copy(update={"seed": 6}), 0)
    assert other != a[0].read_text()


def test_committed_default_scenes_are_up_to_date() -> None:
    gen = load_generator(ROOMS)
    for i in range(gen.count):
        committed = REPO_ROOT / "scene_configs" / "scenes" / f"{gen.name}_{i}.yaml"
        assert committed.read_text() == scene_yaml(gen, i), f"regenerate {committed.name}"


def test_generated_scenes_validate_and_demo_set_loads(tmp_path: Path) -> None:
    g = GeneratorConfig(name="val", count=2, seed=3)
    for p in write_scenes(g, tmp_path):
        scene = load_scene(p)
        assert scene.backend == "mesh" and scene.procedural["index"] in (0, 1)
        n_obj = len(scene.objects)
        assert n_obj >= g.objects[0] - 1  # a rare placement failure may drop one
    sset = load_scene_set(REPO_ROOT / "scene_configs" / "sets" / "demo.yaml")
    assert len(sset.scene_configs) == 2
    assert (sset.resolution.width, sset.resolution.height) == (128, 96)


def _footprint(obj) -> Polygon:
    c, s = math.cos(math.radians(obj.yaw_deg)), math.sin(math.radians(obj.yaw_deg))
    hx, hy = obj.extents[0] / 2, obj.extents[1] / 2
    pts = [(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)]
    return Polygon([(obj.center[0] + c * x - s * y, obj.center[1] + s * x + c * y) for x, y in pts])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    index=st.integers(0, 50),
    shortcut=st.floats(0.0, 1.0),
)
def test_layout_invariants(seed: int, index: int, shortcut: float) -> None:
    g = GeneratorConfig(name="prop", seed=seed, shortcut=shortcut)
    scene = SceneConfig.model_validate(scene_dict(g, index))
    floor = Polygon(scene.floor)
    for side in np.max(scene.floor, axis=0):
        assert g.room_size_m[0] - 0.01 <= side <= g.room_size_m[1] + 0.01
    obstacles = [Polygon(o.polygon) for o in scene.obstacles]
    fps = [_footprint(o) for o in scene.objects]
    for o, fp in zip(scene.objects, fps, strict=True):
        assert o.category in g.categories
        assert floor.buffer(-OBJECT_GAP + 1e-3).contains(fp)
        # every object's footprint is an obstacle, so walkers go around it
        assert any(fp.symmetric_difference(ob).area < 0.005 * fp.area for ob in obstacles)
        # parts lie inside the object's box
        for part in o.parts:
            corners = (
                np.array(part.center)
                + np.array(part.extents)
                / 2
                * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
                @ part.world_from_box()[:3, :3].T
            )
            assert o.contains(corners, margin=1e-3).all()
    for i in range(len(fps)):
        for j in range(i + 1, len(fps)):
            assert fps[i].distance(fps[j]) >= OBJECT_GAP - 1e-3
    # a walker with the default clearance has room, and every object is near the free space
    plan = FloorPlan(scene.floor, [o.polygon for o in scene.obstacles], clearance=0.25)
    for fp in fps:
        assert plan.free.distance(fp) < 0.4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sibling_categories_differ_only_in_the_diagnostic_part(family: str) -> None:
    a_cat, b_cat = FAMILIES[family]
    assert DIAGNOSTIC_PART[a_cat] == DIAGNOSTIC_PART[b_cat]
    diag = DIAGNOSTIC_PART[a_cat]
    color = (0.4, 0.5, 0.6)
    a, b = object_pieces(a_cat, 0.7, color), object_pieces(b_cat, 0.7, color)

    def geometry(pieces, keep):
        return [
            (p.part, p.material, np.asarray(p.mesh.vertices).round(9).tobytes())
            for p in pieces
            if keep(p.part)
        ]

    assert geometry(a, lambda n: n != diag) == geometry(b, lambda n: n != diag)
    assert geometry(a, lambda n: n == diag) != geometry(b, lambda n: n == diag)
    assert geometry(a, lambda n: n == diag)  # the diagnostic part is real geometry


def _pairs(shortcut: float, n_scenes: int) -> tuple[list[str], list[str]]:
    g = GeneratorConfig(name="mi", seed=11, shortcut=shortcut, furniture=(0, 1), objects=(6, 6))
    styles, cats = [], []
    for i in range(n_scenes):
        lay = generate_layout(g, i)
        styles += [lay.style] * len(lay.objects)
        cats += [o.category for o in lay.objects]
    return styles, cats


def _mutual_information(x: list[str], y: list[str]) -> tuple[float, float, int]:
    """Plug-in MI (nats), H(y) (nats) and the degrees of freedom of the G-test."""
    xs, ys = sorted(set(x)), sorted(set(y))
    table = np.zeros((len(xs), len(ys)))
    for a, b in zip(x, y, strict=True):
        table[xs.index(a), ys.index(b)] += 1
    p = table / table.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())
    hy = float(-(py[py > 0] * np.log(py[py > 0])).sum())
    return mi, hy, (len(xs) - 1) * (len(ys) - 1)


def test_shortcut_knob_sets_category_background_mutual_information() -> None:
    n_scenes = 200
    mi0, _, df = _mutual_information(*_pairs(0.0, n_scenes))
    n = len(_pairs(0.0, n_scenes)[0])
    # under independence 2 N MI ~ chi2(df): mean df, sd sqrt(2 df); allow 5 sd above the bias
    assert mi0 <= (df + 5 * math.sqrt(2 * df)) / (2 * n)
    mi1, h1, _ = _mutual_information(*_pairs(1.0, n_scenes))
    assert mi1 == pytest.approx(h1, abs=1e-9)  # category is a function of the background
    assert h1 > 0.95 * math.log(4)  # and carries (nearly) all of log K
    mi_half, _, _ = _mutual_information(*_pairs(0.5, n_scenes))
    assert mi0 < mi_half < mi1


def test_knob_changes_categories_but_not_rooms() -> None:
    g0 = GeneratorConfig(name="k", seed=4, shortcut=0.0)
    g1 = g0.model_copy(update={"shortcut": 1.0})
    a, b = generate_layout(g0, 2), generate_layout(g1, 2)
    assert (a.width, a.depth, a.style, a.furniture) == (b.width, b.depth, b.style, b.furniture)
    assert {o.category for o in b.objects} == {g1.home_category(b.style)}


def test_bad_generator_config_is_one_line_error(tmp_path: Path) -> None:
    p = tmp_path / "gen.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "shortcut": 2.0}))
    with pytest.raises(ConfigError) as e:
        load_generator(p)
    assert "shortcut" in str(e.value) and "2.0" in str(e.value) and "\n" not in str(e.value)
    p.write_text(yaml.safe_dump({"name": "x", "categories": ["cat", "unicorn"]}))
    with pytest.raises(ConfigError, match="categories"):
        load_generator(p)
    with pytest.raises(ConfigError, match=r"procedural\.generator.*objects: min 3"):
        parse_spec({"generator": {"name": "x", "objects": [3, 1]}, "index": 0}, "s.yaml")


def test_edited_objects_are_rejected_by_the_renderer(tmp_path: Path) -> None:
    from egosynth.render.mesh import MeshRenderer

    data = scene_dict(GeneratorConfig(name="ed", seed=2), 0)
    data["objects"][0]["category"] = "unicorn"
    p = tmp_path / "ed_0.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(EgosynthError, match="do not match"):
        MeshRenderer.from_scene(load_scene(p))


def test_cli_generate(tmp_path: Path) -> None:
    from egosynth.cli import main

    cfg = tmp_path / "procedural" / "tiny.yaml"
    cfg.parent.mkdir()
    cfg.write_text("name: tiny\ncount: 2\nseed: 7\n")
    assert main(["scenes", "generate", str(cfg)]) == 0
    written = sorted((tmp_path / "scenes").glob("*.yaml"))  # default: ../scenes
    assert [p.name for p in written] == ["tiny_0.yaml", "tiny_1.yaml"]
    assert written[0].read_text() == scene_yaml(load_generator(cfg), 0)
    assert main(["scenes", "generate", str(tmp_path / "missing.yaml")]) != 0
    with pytest.raises(SystemExit) as exc:  # refused by the argument's own check
        main(["scenes", "generate", str(cfg), "--count", "0"])
    assert exc.value.code == 2
