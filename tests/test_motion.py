"""Property tests of the egocentric motion model over random floor plans."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from egosynth.config import MotionConfig, RigConfig, SceneConfig
from egosynth.errors import EgosynthError
from egosynth.motion import FloorPlan, generate_trajectory
from egosynth.motion.trajectory import _trapezoid


def rect(x0: float, y0: float, w: float, h: float) -> list[list[float]]:
    return [[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]


@st.composite
def scenes(draw: st.DrawFn) -> SceneConfig:
    """Rectangular or L-shaped rooms with random box obstacles and objects."""
    w, h = draw(st.floats(3, 9)), draw(st.floats(3, 9))
    if draw(st.booleans()):
        floor = rect(0, 0, w, h)
    else:  # L-shape: cut a corner off
        cw, ch = draw(st.floats(0.3, 0.6)) * w, draw(st.floats(0.3, 0.6)) * h
        floor = [[0, 0], [w, 0], [w, h - ch], [w - cw, h - ch], [w - cw, h], [0, h]]
    obstacles = []
    for _ in range(draw(st.integers(0, 4))):
        ow, oh = draw(st.floats(0.2, 1.2)), draw(st.floats(0.2, 1.2))
        ox, oy = draw(st.floats(0, w - ow)), draw(st.floats(0, h - oh))
        obstacles.append({"polygon": rect(ox, oy, ow, oh)})
    objects = [
        {
            "name": f"o{i}",
            "category": "thing",
            "extents": [0.3, 0.3, 0.3],
            "center": [
                draw(st.floats(0.2, w - 0.2)),
                draw(st.floats(0.2, h - 0.2)),
                draw(st.floats(0.1, 1.5)),
            ],
        }
        for i in range(draw(st.integers(0, 4)))
    ]
    from shapely.geometry import Point, Polygon

    room = Polygon(floor)
    # objects stand in the room (configs refuse one outside its floor polygon)
    objects = [o for o in objects if room.contains(Point(o["center"][:2]))]
    return SceneConfig.model_validate(
        {
            "name": "r",
            "backend": "mesh",
            "procedural": {},
            "floor": floor,
            "obstacles": obstacles,
            "objects": objects,
        }
    )


RIGS = st.sampled_from(
    [
        RigConfig(),
        RigConfig(preset="toddler"),
        RigConfig(eyes="verging"),
        RigConfig(preset="toddler", eyes="verging", hfov_deg=60),
    ]
)


def make(scene: SceneConfig, rig: RigConfig, seed: int, preset: str = "adult", n: int = 60):
    motion = MotionConfig(preset=preset, gaze_shift_rate_hz=2.0)
    try:
        return motion, generate_trajectory(scene, rig, motion, n, 15.0, seed)
    except EgosynthError:
        assume(False)  # no room for a walker in this floor plan: a valid refusal


def rotation_angle(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    tr = np.einsum("...ji,...ji->...", Ra, Rb)  # trace(Ra^T Rb)
    return np.arccos(np.clip((tr - 1) / 2, -1, 1))


PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(scene=scenes(), rig=RIGS, seed=st.integers(0, 2**32))
def test_eyes_ipd_apart_and_level(scene: SceneConfig, rig: RigConfig, seed: int) -> None:
    _, tr = make(scene, rig, seed)
    eyes = tr.eye_to_world[:, :, :3, 3]
    assert np.allclose(np.linalg.norm(eyes[:, 1] - eyes[:, 0], axis=-1), rig.ipd_m, atol=1e-12)
    assert np.allclose(eyes[:, 0, 2], eyes[:, 1, 2], atol=1e-12)
    head = tr.head_to_world[:, :3, 3]
    assert np.allclose(eyes.mean(axis=1), head, atol=1e-12)
    # Right eye is to the right: along the head's +x axis.
    assert np.all(np.einsum("ij,ij->i", eyes[:, 1] - eyes[:, 0], tr.head_to_world[:, :3, 0]) > 0)
    # Poses are proper rotations (OpenCV frames) with zero roll for the head.
    R = tr.eye_to_world[..., :3, :3]
    assert np.allclose(np.linalg.det(R), 1.0) and np.allclose(tr.head_to_world[:, 2, 0], 0.0)


@PROPS
@given(
    scene=scenes(),
    rig=RIGS,
    seed=st.integers(0, 2**32),
    preset=st.sampled_from(["adult", "toddler"]),
)
def test_height_speed_and_walkable(
    scene: SceneConfig, rig: RigConfig, seed: int, preset: str
) -> None:
    motion, tr = make(scene, rig, seed, preset)
    z = tr.head_to_world[:, 2, 3]
    assert np.all(np.abs(z - rig.eye_height_m) <= motion.bob_amplitude_m + 1e-12)
    xy = tr.head_to_world[:, :2, 3]
    speed = np.linalg.norm(np.diff(xy, axis=0), axis=1) * 15.0
    assert speed.max() <= motion.walk_speed_mps[1] * (1 + 1e-9)
    plan = FloorPlan(scene.floor, [o.polygon for o in scene.obstacles], motion.clearance_m)
    assert plan.walkable(xy).all()
    assert plan.distance_to_blocked(xy).min() >= motion.clearance_m - 1e-6


@PROPS
@given(scene=scenes(), rig=RIGS, seed=st.integers(0, 2**32))
def test_head_speed_bounded_and_fixations_on_axis(
    scene: SceneConfig, rig: RigConfig, seed: int
) -> None:
    motion, tr = make(scene, rig, seed)
    R = tr.head_to_world[:, :3, :3]
    w = np.degrees(rotation_angle(R[:-1], R[1:])) * 15.0
    assert w.max() <= motion.max_head_speed_dps * (1 + 1e-6)
    idx = np.flatnonzero(tr.fixation_object >= 0)
    for i in idx:
        target = np.asarray(scene.objects[tr.fixation_object[i]].center)
        assert np.allclose(tr.fixation_point[i], target)
        for e in range(2):
            eye = tr.eye_to_world[i, e]
            to = target - eye[:3, 3]
            dist = np.linalg.norm(to)
            ang = math.degrees(math.acos(np.clip(to @ eye[:3, 2] / dist, -1, 1)))
            parallax = math.degrees(math.atan(0.5 * rig.ipd_m / dist))
            assert ang <= 3.0 + parallax + 1e-6


def test_same_seed_same_bytes_different_seed_differs() -> None:
    scene = SceneConfig.model_validate(
        {
            "name": "r",
            "backend": "mesh",
            "procedural": {},
            "floor": rect(0, 0, 6, 5),
            "obstacles": [{"polygon": rect(2, 2, 1, 1)}],
            "objects": [
                {"name": "a", "category": "c", "center": [1, 4, 0.3], "extents": [0.3, 0.3, 0.3]}
            ],
        }
    )
    a = generate_trajectory(scene, RigConfig(), MotionConfig(), 80, 10.0, 7).arrays()
    b = generate_trajectory(scene, RigConfig(), MotionConfig(), 80, 10.0, 7).arrays()
    c = generate_trajectory(scene, RigConfig(), MotionConfig(), 80, 10.0, 8).arrays()
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert not np.array_equal(a["head_to_world"], c["head_to_world"])


def test_fixations_happen_and_walker_moves() -> None:
    """The model is not trivially still: over a long clip it walks, pauses and fixates."""
    scene = SceneConfig.model_validate(
        {
            "name": "r",
            "backend": "mesh",
            "procedural": {},
            "floor": rect(0, 0, 8, 6),
            "objects": [
                {
                    "name": f"o{i}",
                    "category": "c",
                    "center": [1 + 2 * i, 3, 0.5],
                    "extents": [0.3, 0.3, 0.3],
                }
                for i in range(3)
            ],
        }
    )
    tr = generate_trajectory(scene, RigConfig(), MotionConfig(), 600, 10.0, 3)
    assert (tr.fixation_object >= 0).mean() > 0.1
    assert 0.2 < tr.walking.mean() < 1.0
    assert np.ptp(tr.head_to_world[:, 0, 3]) > 2.0


@pytest.mark.parametrize("L,v,a", [(10.0, 1.2, 1.0), (0.5, 1.2, 1.0), (3.0, 0.8, 2.0)])
def test_trapezoid_profile_golden(L: float, v: float, a: float) -> None:
    T, cruise = _trapezoid(L, v, a)
    if v * v / a > L:  # triangular: peak sqrt(aL), duration 2 sqrt(L/a)
        assert math.isclose(cruise, math.sqrt(a * L)) and math.isclose(T, 2 * math.sqrt(L / a))
    else:  # area under the trapezoid equals L
        assert cruise == v and math.isclose(v * (T - v / a), L)


def test_no_room_is_a_clear_error() -> None:
    with pytest.raises(EgosynthError, match="no walkable space"):
        FloorPlan(rect(0, 0, 0.4, 0.4), [], clearance=0.25)
