"""`egosynth scenes onboard` (issue 15): recover a procedural room moved into a COLMAP-like frame.

Real data: a small capture of the committed room_0 rendered by the mesh renderer gives exact
depth and exact instance/part masks; onboarding sees it through a depth callback in an
arbitrary similarity frame (what COLMAP would give), exactly as it sees a NeRF. Properties:
an arbitrary similarity / up axis / yaw is recovered. Errors: bad masks are one line and
nothing is written. No nerfstudio here (its end-to-end run is benchmarks/bench_onboard.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egosynth.camera import look_at, pixel_centers, unproject
from egosynth.config import REPO_ROOT, MotionConfig, RigConfig, Similarity, load_scene
from egosynth.errors import EgosynthError
from egosynth.nerf.cameras import cameras_from_transforms, read_cameras, write_cameras
from egosynth.nerf.lifted import read_masks, write_masks
from egosynth.onboard.evaluate import frame_errors
from egosynth.onboard.floor import floor_map
from egosynth.onboard.frame import (
    fit_floor,
    level_rotation,
    transform_poses,
    up_from_cameras,
    wall_yaw,
    world_from_scene,
)
from egosynth.onboard.masks import MaskError, read_user_labels
from egosynth.onboard.pipeline import ScaleSpec, onboard, scene_config
from egosynth.onboard.synthetic import (
    capture_labels,
    choose_views,
    mesh_depth_fn,
    random_similarity,
    reframe_bundle,
    reframe_cameras,
)

ROOM = REPO_ROOT / "scene_configs" / "scenes" / "room_0.yaml"
PROPS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rotations() -> st.SearchStrategy[np.ndarray]:
    """Uniform random rotations (unit quaternions from 4 normals)."""
    from scipy.spatial.transform import Rotation

    return st.integers(0, 2**31 - 1).map(lambda s: Rotation.random(random_state=s).as_matrix())


# --------------------------------------------------------------------------- frame: properties
def _level_room(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 5 x 4 m room (floor, 4 walls; world metres) and 40 level cameras looking around."""
    u = rng.uniform(size=(4000, 2)) * [5, 4]
    floor = np.c_[u, np.zeros(len(u))]
    walls = []
    for axis, at in ((0, 0.0), (0, 5.0), (1, 0.0), (1, 4.0)):
        w = rng.uniform(size=(800, 2)) * [5 if axis else 4, 2.5]
        p = np.zeros((800, 3))
        p[:, axis], p[:, 1 - axis], p[:, 2] = at, w[:, 0], w[:, 1]
        walls.append(p)
    cams = []
    for _ in range(40):
        eye = np.r_[rng.uniform(0.5, 4.5), rng.uniform(0.5, 3.5), rng.uniform(0.8, 1.6)]
        yaw, pitch = rng.uniform(-math.pi, math.pi), math.radians(rng.uniform(-35, 15))
        d = [math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)]
        cams.append(look_at(eye, eye + d))
    return np.concatenate([floor, *walls]), np.array(cams)


@PROPS
@given(R=rotations(), log_scale=st.floats(-2.0, 2.0), t=st.tuples(*[st.floats(-10, 10)] * 3),
       seed=st.integers(0, 1000))  # fmt: skip
def test_arbitrary_similarity_is_recovered(R, log_scale, t, seed) -> None:
    """Up axis, floor plane and metric scale from level cameras in any similarity frame."""
    points, cams = _level_room(np.random.default_rng(seed))
    S = Similarity(scale=math.exp(log_scale), rotation=tuple(map(tuple, R)), translation=t)
    colmap_from_world = np.linalg.inv(S.matrix())
    pts = points @ colmap_from_world[:3, :3].T + colmap_from_world[:3, 3]
    c2s = transform_poses(colmap_from_world, cams)
    up = up_from_cameras(c2s)
    plane = fit_floor(pts, c2s, up)
    true_up = R.T @ [0, 0, 1.0]
    assert math.degrees(math.acos(min(1.0, float(plane.up @ true_up)))) < 0.05
    height = np.mean(cams[:, 2, 3])
    W = world_from_scene(plane, height / np.mean(plane.camera_heights))
    assert W.scale == pytest.approx(S.scale, rel=1e-3)  # wall feet sit in the floor band
    back = pts @ W.matrix()[:3, :3].T + W.matrix()[:3, 3]
    assert np.abs(back[:4000, 2]).max() < 1e-3  # the floor is z = 0 again (to a millimetre)


def test_level_rotation_golden() -> None:
    for up in ([0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0], [0.3, -0.4, 0.866]):
        u = np.asarray(up) / np.linalg.norm(up)
        R = level_rotation(u)
        assert np.allclose(R @ u, [0, 0, 1], atol=1e-12)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.linalg.det(R) > 0


@PROPS
@given(theta=st.floats(0.0, 89.9), seed=st.integers(0, 1000))
def test_wall_yaw_recovers_any_room_orientation(theta: float, seed: int) -> None:
    points, _ = _level_room(np.random.default_rng(seed))
    walls = points[4000:, :2]
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    yaw = math.degrees(wall_yaw(walls @ np.array([[c, s], [-s, c]]), 0.05))
    err = (yaw - theta + 45) % 90 - 45  # walls along x or y: defined modulo 90 degrees
    assert abs(err) < 0.3


# --------------------------------------------------------------------------- real data: room_0
@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory):
    """room_0, a 60-view 96x72 mesh capture of it, moved by an arbitrary similarity."""
    from egosynth.render.mesh import MeshRenderer
    from egosynth.scenes.capture import CaptureSettings, write_capture

    scene = load_scene(ROOM)
    cap = tmp_path_factory.mktemp("onboard") / "capture"
    mesh = MeshRenderer.from_scene(scene)
    write_capture(scene, cap, CaptureSettings(n_views=60, width=96, height=72, seed=3), mesh)
    S = random_similarity(42)
    cams = reframe_cameras(cameras_from_transforms(cap / "transforms.json"), S)
    return scene, cap, mesh, S, cams


@pytest.fixture(scope="module")
def onboarded(room):
    from egosynth.readers import read_image

    _scene, cap, mesh, S, cams = room
    inst = [read_image(cap / "instance" / Path(n).name) for n in cams.names]
    labels = capture_labels(cap, choose_views(inst, 8), cams)
    # Mean eye height of the capture (stratified over 0.8-1.6 m): what the user states.
    height = float(np.mean(cameras_from_transforms(cap / "transforms.json").cam_to_scene[:, 2, 3]))
    result = onboard(mesh_depth_fn(mesh, S), cams, labels, ScaleSpec(camera_height_m=height), "r0")
    return result, scene_config(result, "r0", cap)


def test_room_frame_floor_and_walkable_region(room, onboarded) -> None:
    scene, _, _, S, _ = room
    result, rec = onboarded
    e = frame_errors(result.world_from_scene, S, scene, rec)
    assert e.up_error_deg < 0.1
    assert e.floor_height_error_cm < 0.5
    assert abs(e.scale_error_pct) < 0.5
    assert e.walkable_iou >= 0.85
    assert [o.name for o in rec.objects] == [o.name for o in scene.objects]


def test_lifted_masks_label_held_out_views(room, onboarded) -> None:
    """Walker views the masks never saw: lifted labels against the mesh's exact masks."""
    from egosynth.nerf.check import egocentric_views, instance_ious
    from egosynth.onboard.evaluate import true_to_recovered

    scene, _, mesh, S, _ = room
    result, rec = onboarded
    c2w, K = egocentric_views(scene, 3, 96, 72)
    truth = mesh.render(c2w, K, 96, 72)
    M = true_to_recovered(result.world_from_scene, S)
    uv = pixel_centers(96, 72)
    got_i, got_p = [], []
    for i in range(len(c2w)):
        p = unproject(uv, truth.depth[i], K, c2w[i]) @ M[:3, :3].T + M[:3, 3]
        a, b = result.masks.label(p, (truth.depth[i] > 0) & (p[..., 2] >= 0.02), rec.objects)
        got_i.append(a)
        got_p.append(b)
    assert np.mean(instance_ious(np.array(got_i), truth.instance)) >= 0.9
    assert np.mean(instance_ious(np.array(got_p), truth.part)) >= 0.75


def test_trajectory_stays_in_recovered_walkable_region(onboarded) -> None:
    """The motion model's own guarantees, on the recovered floor plan."""
    from egosynth.motion import FloorPlan, generate_trajectory

    _, rec = onboarded
    motion = MotionConfig()
    for seed in (1, 2):
        tr = generate_trajectory(rec, RigConfig(), motion, 80, 10.0, seed)
        xy = tr.head_to_world[:, :2, 3]
        plan = FloorPlan(rec.floor, [o.polygon for o in rec.obstacles], motion.clearance_m)
        assert plan.walkable(xy).all()
        assert plan.distance_to_blocked(xy).min() >= motion.clearance_m - 1e-6


def test_lifted_masks_survive_a_world_frame_edit(room, onboarded, tmp_path: Path) -> None:
    """masks.npz round-trips, and labels follow the points when world_from_scene changes."""
    _scene, _, _, _, _ = room
    result, rec = onboarded
    write_masks(tmp_path, result.masks)
    back = read_masks(tmp_path)
    assert back.names() == result.masks.names()
    rng = np.random.default_rng(0)
    pts = np.concatenate(
        [np.asarray(o.center) + rng.normal(0, 0.15, (400, 3)) for o in rec.objects]
    )
    surf = np.ones(len(pts), bool)
    want = back.label(pts, surf, rec.objects)
    W0 = result.world_from_scene.matrix()
    edit = random_similarity(7).matrix()  # any new world_from_scene = edit @ W0
    moved = pts @ edit[:3, :3].T + edit[:3, 3]
    got = back.label(moved, surf, rec.objects, edit @ W0)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert (want[0] > 0).mean() > 0.2  # the test points do hit the objects


def test_floor_map_of_exact_room_geometry(room) -> None:
    """Mesh depth in the true world: the recovered walkable region matches the truth."""
    from egosynth.onboard.evaluate import walkable_polygon

    scene, cap, _, _, _ = room
    cams = cameras_from_transforms(cap / "transforms.json")
    from egosynth.scenes.capture import read_capture

    c = read_capture(cap)
    uv = pixel_centers(c.width, c.height)
    pts, org = [], []
    for i in range(len(cams)):
        z = c.depth(i)[::2, ::2]  # every other pixel: plenty for 5 cm cells, 4x faster
        pts.append(unproject(uv[::2, ::2][z > 0], z[z > 0], c.K, c.cam_to_world[i]))
        org.append(np.broadcast_to(c.cam_to_world[i][:3, 3], pts[-1].shape))
    fm = floor_map(np.concatenate(pts), np.concatenate(org))
    rec = walkable_polygon(fm.floor, [p for p, _ in fm.obstacles])
    true = walkable_polygon(scene.floor, [o.polygon for o in scene.obstacles])
    assert true.intersection(rec).area / true.union(rec).area >= 0.9


# --------------------------------------------------------------------------- bundle plumbing
def test_capture_cameras_round_trip(room, tmp_path: Path) -> None:
    from egosynth.scenes.capture import read_capture

    _, cap, _, _, _ = room
    cams = cameras_from_transforms(cap / "transforms.json")
    c = read_capture(cap)
    assert np.allclose(cams.cam_to_scene, c.cam_to_world) and np.allclose(cams.K[0], c.K)
    write_cameras(tmp_path, cams)
    back = read_cameras(tmp_path)
    assert back is not None and back.names == cams.names
    assert np.allclose(back.cam_to_scene, cams.cam_to_scene) and back.index("frame_00007") == 7


def test_reframed_bundle_is_the_same_model_in_the_moved_frame(tmp_path: Path) -> None:
    """The model frame is untouched: model_from_scene' = model_from_scene @ S."""
    from egosynth.nerf.bundle import model_from_scene, read_bundle

    src = read_bundle(REPO_ROOT / "scene_bundles" / "room_0")
    S = random_similarity(5)
    cams = _two_cameras()  # a stand-in capture (true world)
    out = reframe_bundle(src.root, tmp_path / "b", S, cams)
    new = read_bundle(out)
    assert np.allclose(model_from_scene(new.meta), model_from_scene(src.meta) @ S.matrix())
    assert new.annotations is None and new.meta.world_from_scene == Similarity()
    moved = read_cameras(out)
    assert moved is not None
    assert np.allclose(transform_poses(S.matrix(), moved.cam_to_scene), cams.cam_to_scene)


def _two_cameras():
    from egosynth.nerf.cameras import CaptureCameras

    poses = np.array([look_at([1, 1, 1.5], [3, 2, 1]), look_at([2, 1, 1.2], [1, 3, 0.5])])
    K = np.array([[[50.0, 0, 32], [0, 50, 24], [0, 0, 1]]] * 2)
    return CaptureCameras(["images/a.png", "images/b.png"], poses, K, np.array([[64, 48]] * 2))


def test_renderer_labels_with_lifted_masks(room, onboarded) -> None:
    """NerfRenderer's mask hook: lifted grids for the objects they name, boxes for the rest."""
    from egosynth.render.nerf import NerfRenderer

    result, rec = onboarded
    r = object.__new__(NerfRenderer)  # the hook only, no model
    r.objects, r.lifted, r.world_from_scene = (
        list(rec.objects),
        result.masks,
        result.world_from_scene.matrix(),
    )
    pts = np.array([o.center for o in rec.objects])[None]
    inst, _ = r._label(pts, np.ones(pts.shape[:-1], bool))
    assert inst.shape == (1, len(rec.objects))
    r.lifted = None  # no masks.npz: the boxes, as before onboarding
    inst_b, _ = r._label(pts, np.ones(pts.shape[:-1], bool))
    assert list(inst_b[0]) == list(range(1, len(rec.objects) + 1))


# --------------------------------------------------------------------------- bad masks
@pytest.fixture()
def masks_dir(room, tmp_path: Path) -> Path:
    _, cap, _, _, _cams = room
    d = tmp_path / "masks"
    (d / "instance").mkdir(parents=True)
    for name in ("frame_00003.png", "frame_00010.png"):
        shutil.copy(cap / "instance" / name, d / "instance" / name)
    shutil.copy(cap / "labels.json", d / "labels.json")
    return d


def _write_png(path: Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, img, extension=".png")


def test_good_masks_read(room, masks_dir: Path) -> None:
    cams = room[4]
    got = read_user_labels(masks_dir / "instance", masks_dir / "labels.json", cams)
    assert [v.view for v in got.views] == [3, 10]


@pytest.mark.parametrize(
    "case, expect",
    [
        ("size", "size 48x36 differs from capture image"),
        ("name", "matches no capture image"),
        ("id", "instance id 99 is not in the labels"),
        ("empty", "no instance masks"),
        ("zeros", "every instance mask is empty"),
        ("rgb", "expected a single-channel 8- or 16-bit PNG"),
        ("labels", "field '0.name' = ''"),
    ],
)
def test_bad_masks_are_one_line_errors(room, masks_dir: Path, case: str, expect: str) -> None:
    cams = room[4]
    inst = masks_dir / "instance"
    if case == "size":
        _write_png(inst / "frame_00003.png", np.zeros((36, 48), np.uint16))
    elif case == "name":
        shutil.copy(inst / "frame_00003.png", inst / "holiday.png")
    elif case == "id":
        _write_png(inst / "frame_00003.png", np.full((72, 96), 99, np.uint16))
    elif case == "empty":
        for p in inst.glob("*.png"):
            p.unlink()
    elif case == "zeros":
        for p in inst.glob("*.png"):
            _write_png(p, np.zeros((72, 96), np.uint8))
    elif case == "rgb":
        _write_png(inst / "frame_00003.png", np.zeros((72, 96, 3), np.uint8))
    elif case == "labels":
        labels = json.loads((masks_dir / "labels.json").read_text())
        labels[0]["name"] = ""
        (masks_dir / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(MaskError) as exc:
        read_user_labels(inst, masks_dir / "labels.json", cams)
    msg = str(exc.value)
    assert expect in msg and "\n" not in msg


def test_coco_rle_masks_equal_pngs(room, masks_dir: Path, tmp_path: Path) -> None:
    from pycocotools import mask as cmask

    cams = room[4]
    png = read_user_labels(masks_dir / "instance", masks_dir / "labels.json", cams)
    images, anns = [], []
    for k, v in enumerate(png.views):
        images.append({"id": k, "file_name": Path(cams.names[v.view]).name, "width": 96,
                       "height": 72})  # fmt: skip
        for iid in sorted(set(np.unique(v.instance).tolist()) - {0}):
            rle = cmask.encode(np.asfortranarray((v.instance == iid).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"image_id": k, "instance_id": iid, "segmentation": rle})
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns}))
    got = read_user_labels(coco, masks_dir / "labels.json", cams)
    assert [v.view for v in got.views] == [v.view for v in png.views]
    for a, b in zip(got.views, png.views, strict=True):
        assert np.array_equal(a.instance, b.instance)


def test_cli_bad_masks_write_nothing(room, masks_dir: Path, tmp_path: Path, capsys) -> None:
    """The command checks every mask before it opens the NeRF or writes a file."""
    from egosynth.cli import main

    _, _, _, _, cams = room
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(REPO_ROOT / "scene_bundles" / "room_0" / "bundle.json", bundle / "bundle.json")
    (bundle / "weights.pt").write_bytes(b"never read")
    write_cameras(bundle, cams)
    _write_png(masks_dir / "instance" / "frame_00003.png", np.full((72, 96), 99, np.uint16))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(["scenes", "onboard", str(bundle), "--masks", str(masks_dir / "instance"),
                 "--labels", str(masks_dir / "labels.json"), "--camera-height", "1.2"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0 and "instance id 99 is not in the labels" in err and "\n" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_cli_needs_capture_cameras(tmp_path: Path, capsys) -> None:
    from egosynth.cli import main

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(REPO_ROOT / "scene_bundles" / "room_0" / "bundle.json", bundle / "bundle.json")
    (bundle / "weights.pt").write_bytes(b"never read")
    code = main(["scenes", "onboard", str(bundle), "--masks", str(tmp_path),
                 "--labels", str(tmp_path / "l.json"), "--scale", "1"])  # fmt: skip
    assert code != 0 and "no capture cameras (cameras.json)" in capsys.readouterr().err


def test_scale_needs_a_source() -> None:
    from egosynth.onboard.frame import FloorPlane
    from egosynth.onboard.pipeline import resolve_scale

    plane = FloorPlane(np.array([0, 0, 1.0]), 0.0, np.array([2.0, 2.0]), 10)
    assert resolve_scale(ScaleSpec(camera_height_m=1.5), plane) == pytest.approx(0.75)
    d = (np.zeros(3), np.array([0, 3.0, 4.0]), 2.5)
    assert resolve_scale(ScaleSpec(distance=d), plane) == pytest.approx(0.5)
    with pytest.raises(EgosynthError, match="metric scale unknown"):
        resolve_scale(ScaleSpec(), plane)


def test_scale_from_distance_points_parse() -> None:
    from egosynth.commands.scenes_onboard import _point

    assert _point("1,2.5,-3", "P1") == ("xyz", (1.0, 2.5, -3.0))
    assert _point("images/frame_00003.png:10,20.5", "P1") == (
        "images/frame_00003.png",
        (10.0, 20.5),
    )
    assert _point("1,2", "P1") is None and _point("a:b,c", "P1") is None


def test_written_scene_works_with_trajectory_cli(onboarded, tmp_path: Path) -> None:
    """write_onboarded's files: the bundle reads back annotated and `egosynth trajectory` runs
    on the scene config beside it with no edits (rendering it needs the NeRF: the benchmark)."""
    from egosynth.cli import main
    from egosynth.nerf.bundle import read_bundle
    from egosynth.onboard.pipeline import write_onboarded

    result, _ = onboarded
    bundle = tmp_path / "mine"
    bundle.mkdir()
    shutil.copy(REPO_ROOT / "scene_bundles" / "room_0" / "bundle.json", bundle / "bundle.json")
    (bundle / "weights.pt").write_bytes(b"never read")
    write_onboarded(bundle, result, tmp_path / "mine.yaml")
    b = read_bundle(bundle)
    assert b.meta.world_from_scene == result.world_from_scene
    assert b.annotations is not None and len(b.annotations.objects) == len(result.objects)
    assert read_masks(bundle).names() == result.masks.names()
    (tmp_path / "set.yaml").write_text("name: s\nscenes: [mine.yaml]\nclip_seconds: 2.0\n")
    assert main(["trajectory", str(tmp_path / "set.yaml"), "--out", str(tmp_path / "t.npz")]) == 0
    assert np.load(tmp_path / "t.npz")["eye_to_world"].shape[:3] == (1, 20, 2)


def test_corrupt_lifted_masks_are_one_line_errors(onboarded, tmp_path: Path) -> None:
    result, _ = onboarded
    write_masks(tmp_path, result.masks)
    meta = json.loads((tmp_path / "masks.json").read_text())
    for key, value, expect in (
        ("voxel_m", -1, "field 'voxel_m' = -1"),
        ("world_from_scene", [[1, 0]], "field 'world_from_scene'"),
        ("objects", [{**meta["objects"][0], "shape": [1, 2, 3]}], "field 'objects.0.shape'"),
    ):
        (tmp_path / "masks.json").write_text(json.dumps({**meta, key: value}))
        with pytest.raises(EgosynthError) as exc:
            read_masks(tmp_path)
        assert expect in str(exc.value) and "\n" not in str(exc.value)
