"""Baking a NeRF bundle (density grid, sparse colour grid) and the guided / baked modes:
determinism, refusal of stale and corrupt bakes, fallback to full sampling, imported runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.config import REPO_ROOT
from egosynth.errors import EgosynthError

pytestmark = pytest.mark.nerf

ROOM = REPO_ROOT / "scene_bundles" / "room_0"
RES = 40  # a coarse grid: seconds to bake, enough to test the mechanics
PROBE_VIEWS = 16  # of the default 64: they are most of a coarse bake's time


def _copy_bundle(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("bundle.json", "weights.pt", "annotations.json"):
        shutil.copy(ROOM / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def baked_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from egosynth.nerf.bake import bake

    root = _copy_bundle(tmp_path_factory.mktemp("bake") / "room")
    bake(root, RES, progress=False, probe_views=PROBE_VIEWS)
    return root


def test_bake_is_deterministic(tmp_path: Path) -> None:
    """Two bakes of the same weights, byte for byte. 8 probe views instead of 64: the probes
    take most of a coarse bake's time, and their number does not change the arithmetic."""
    from egosynth.nerf.bake import bake

    one, two = (_copy_bundle(tmp_path / name) for name in ("one", "two"))
    for root in (one, two):
        bake(root, RES, progress=False, probe_views=8)
    assert (one / "bake.npz").read_bytes() == (two / "bake.npz").read_bytes()
    a, b = (json.loads((r / "bake.json").read_text()) for r in (one, two))
    assert a["npz_sha256"] == b["npz_sha256"] and a["weights_sha256"] == b["weights_sha256"]
    assert a["probe_views"] == 8 and a["coloured_points"] > 0


def test_bake_holds_a_density_grid_and_colours_from_the_field(baked_copy: Path) -> None:
    from egosynth.nerf.baked import read_bake

    b = read_bake(baked_copy)
    assert b.log_density.shape == (RES, RES, RES)
    mask = b.mask()
    assert 0 < mask.sum() == len(b.colour) < mask.size  # some points seen, not all
    assert b.colour.std() > 5  # a textured room, not one flat colour


def test_baked_grid_reads_its_own_grid_points_back(baked_copy: Path) -> None:
    """At the grid points themselves the trilinear look-ups return the stored values: the
    (x, y, z) axis order, the bounds and the colour-mask order agree between bake and render."""
    import torch

    from egosynth.nerf.baked import read_bake
    from egosynth.render.nerf import BakedGrid

    b = read_bake(baked_copy)
    g = BakedGrid(b, "cpu")
    mask = b.mask()
    rng = np.random.default_rng(0)
    idx = np.argwhere(mask)
    pick = rng.choice(len(idx), 200, replace=False)
    spacing = (b.bounds[1] - b.bounds[0]) / (RES - 1)
    pts = torch.tensor(b.bounds[0] + idx[pick] * spacing, dtype=torch.float32)
    rgb, known = g.colour(pts)
    np.testing.assert_allclose(rgb.numpy(), b.colour[pick] / 255.0, atol=2e-3)
    assert torch.all(known > 0.99)
    every = np.argwhere(np.ones(mask.shape, bool))[rng.choice(mask.size, 200, replace=False)]
    pts = torch.tensor(b.bounds[0] + every * spacing, dtype=torch.float32)
    want = np.exp(b.log_density[tuple(every.T)].astype(np.float32))
    np.testing.assert_allclose(g.density(pts).numpy(), want, rtol=2e-3)


def test_stale_bake_is_refused(baked_copy: Path, tmp_path: Path) -> None:
    import torch

    from egosynth.nerf.baked import StaleBake, read_bake
    from egosynth.nerf.bundle import load_weights, save_weights
    from egosynth.render.nerf import NerfRenderer

    root = tmp_path / "stale"
    shutil.copytree(baked_copy, root)
    w = load_weights(root / "weights.pt")
    key = next(k for k, v in w.items() if v.is_floating_point() and v.numel() > 0)
    w[key] = w[key] + torch.ones_like(w[key]) * 1e-3
    save_weights(w, root / "weights.pt")
    with pytest.raises(StaleBake, match="stale"):
        read_bake(root)
    for mode in ("guided", "baked", None):  # the default too: never silently used
        with pytest.raises(StaleBake) as err:
            NerfRenderer.from_bundle(root, device="cpu", mode=mode)
        assert "\n" not in str(err.value) and "scenes bake" in str(err.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: (r / "bake.npz").write_bytes((r / "bake.npz").read_bytes()[:-100]),
        lambda r: (r / "bake.npz").write_bytes(b"\x00garbage" * 50),
        lambda r: (r / "bake.json").write_bytes(b"\xff\xfe not json"),
        lambda r: (r / "bake.json").write_text('{"format": "other"}'),
    ],
    ids=["truncated-npz", "garbage-npz", "binary-json", "wrong-format"],
)
def test_corrupt_bake_is_refused_with_one_line(baked_copy: Path, tmp_path: Path, damage) -> None:
    from egosynth.nerf.baked import read_bake

    root = tmp_path / "bad"
    shutil.copytree(baked_copy, root)
    damage(root)
    with pytest.raises(EgosynthError) as err:
        read_bake(root)
    assert "\n" not in str(err.value) and "bake" in str(err.value)


def test_bake_symlink_out_of_the_bundle_is_refused(baked_copy: Path, tmp_path: Path) -> None:
    from egosynth.nerf.baked import read_bake

    root = tmp_path / "link"
    shutil.copytree(baked_copy, root)
    outside = tmp_path / "outside.npz"
    shutil.move(root / "bake.npz", outside)
    (root / "bake.npz").symlink_to(outside)
    with pytest.raises(EgosynthError, match=r"outside .*bundle must be inside it"):
        read_bake(root)


def test_guided_and_baked_need_a_bake(tmp_path: Path) -> None:
    from egosynth.render.nerf import NerfRenderer

    root = _copy_bundle(tmp_path / "plain")
    r = NerfRenderer.from_bundle(root, device="cpu", mode=None)
    assert r.mode == "full"  # no bake: the default is full
    with pytest.raises(EgosynthError, match="scenes bake"):
        r.set_mode("guided")


@pytest.mark.parametrize("mode", ["guided", "baked"])
def test_rays_the_bake_cannot_answer_are_rendered_in_full(baked_copy: Path, mode: str) -> None:
    """A camera far outside the grid box, looking away: every ray falls back, and the frame
    equals full rendering."""
    from egosynth.camera import intrinsics_from_fov, look_at
    from egosynth.render.nerf import NerfRenderer

    r = NerfRenderer.from_bundle(baked_copy, device="cpu", mode="full")
    c2w = look_at((30.0, 30.0, 1.5), (60.0, 60.0, 1.5))[None]
    K = intrinsics_from_fov(16, 12, 80.0)
    want = r.render_raw(c2w, K, 16, 12)
    r.set_mode(mode)
    got = r.render_raw(c2w, K, 16, 12)
    assert r.fallback_rays == 16 * 12
    for key in ("rgb", "distance", "accumulation"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_baked_rays_without_baked_colour_are_rendered_guided(baked_copy: Path) -> None:
    """Where the colour grid holds no colour (here: nowhere), baked rays are rendered guided."""
    from egosynth.camera import intrinsics_from_fov, look_at
    from egosynth.render.nerf import NerfRenderer

    r = NerfRenderer.from_bundle(baked_copy, device="cpu", mode="guided")
    c2w = look_at((2.9, 3.0, 1.5), (5.0, 3.0, 1.0))[None]  # inside room_0, at eye height
    K = intrinsics_from_fov(16, 12, 80.0)
    want = r.render_raw(c2w, K, 16, 12)
    assert r.fallback_rays < 16 * 12 // 2  # mostly guided, not full
    r.set_mode("baked")
    r._grid.table[..., 3] = 0  # no colour anywhere
    got = r.render_raw(c2w, K, 16, 12)
    for key in ("rgb", "distance", "accumulation"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["guided", "baked"])
def test_numba_kernel_matches_the_torch_march(mode: str) -> None:
    """The CPU kernel and the torch reference march the same bins with the same refinement
    rule: frames agree to float tolerance (a refinement decision a rounding away from its
    threshold may move a rare pixel's colour sample inside its bin)."""
    from egosynth.nerf.bundle import read_bundle
    from egosynth.nerf.check import egocentric_views
    from egosynth.render.nerf import NerfRenderer

    c2w, K = egocentric_views(read_bundle(ROOM).ground_truth_scene(), 1, 32, 24)
    r = NerfRenderer.from_bundle(ROOM, device="cpu", mode=mode)
    assert r._grid.kernel == "numba"
    fast = r.render_raw(c2w, K, 32, 24)
    r._grid.kernel = "torch"
    ref = r.render_raw(c2w, K, 32, 24)
    diff = np.abs(fast["rgb"] - ref["rgb"])
    assert diff.mean() < 1e-3 and np.mean(diff > 0.02) < 0.005
    np.testing.assert_allclose(fast["accumulation"], ref["accumulation"], atol=1e-3)
    rel = np.abs(fast["distance"] - ref["distance"]) / ref["distance"]
    assert np.median(rel) < 1e-4 and np.mean(rel > 0.01) < 0.005


def test_refined_march_places_a_thin_wall_finer_than_a_bin() -> None:
    """Golden: one opaque slab, 1/8 of a bin thick, in an empty box. Its bin takes the light,
    is re-read finer, and the median depth lands inside the slab's quarter of the bin, not
    at the bin's middle; torch and numba agree."""
    import torch

    from egosynth.nerf.baked import Baked
    from egosynth.render.grid import GUIDED_GRID_SAMPLES, BakedGrid

    res = 129
    ld = np.full((res,) * 3, -12.0, np.float32)
    wall = 86  # grid x index: x = -1 + 2 * 86 / 128 = 0.34375
    ld[wall : wall + 1] = 8.0
    b = Baked(ld, np.array([[-1, -1, -1], [1, 1, 1]], np.float32), np.zeros(1, np.uint8),
              np.zeros((0, 3), np.uint8), 2)  # fmt: skip
    o = torch.tensor([[-0.99, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    depths = []
    for kernel in ("numba", "torch"):
        m = BakedGrid(b, "cpu", kernel=kernel).march(o, d, 0.0)
        depths.append(float(m.depth[0, 0]))
        assert float(m.acc[0]) > 0.99
    x_wall = -1 + 2 * wall / (res - 1) + 0.99
    bin_len = 1.99 / GUIDED_GRID_SAMPLES
    assert abs(depths[0] - depths[1]) < 1e-4
    assert abs(depths[0] - x_wall) < bin_len / 4


def test_weighted_composite_is_the_importance_weighted_mean() -> None:
    """Golden: guided weights each colour sample by field / grid density. Samples weighted
    3:1 give the 3:1 mix; no weight at all falls back to equal shares; the light left over
    (1 - acc) takes the exit colour either way."""
    import torch

    from egosynth.render.grid import March

    c = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 2)  # (2 rays, 2 samples, rgb)
    acc = torch.tensor([1.0, 0.5])
    m = March(acc, torch.ones(2, 1), torch.ones(2, 2), torch.ones(2), acc < 0, acc > 0)
    rest = torch.tensor([[0.0, 0.0, 1.0]] * 2)
    out = m.composite(c, rest, torch.tensor([[3.0, 1.0], [0.0, 0.0]]))["rgb"]
    torch.testing.assert_close(out[0], torch.tensor([0.75, 0.25, 0.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.25, 0.25, 0.5]))
    torch.testing.assert_close(m.composite(c, rest)["rgb"][1], out[1])


def test_colour_table_fills_around_seen_points_and_weights_opaque_ones() -> None:
    """Fill: a point next to one coloured point gets its colour; weights: a point where the
    field is opaque outweighs one in empty space."""
    from egosynth.nerf.baked import Baked
    from egosynth.render.grid import FILL_STEPS, colour_table, requantize

    c = 16
    ld = np.full((c,) * 3, -9.0, np.float32)
    ld[8:] = 5.0  # opaque half (x >= 8)
    mask = np.zeros((c,) * 3, bool)
    mask[7, 5, 5] = mask[8, 5, 5] = True
    colours = np.array([[10, 20, 30], [200, 100, 50]], np.uint8)
    b = Baked(ld, np.array([[0, 0, 0], [1, 1, 1]], np.float32), Baked.pack_mask(mask),
              colours, c)  # fmt: skip
    table = colour_table(b, *requantize(ld))
    assert table[7, 5, 5, :3].tolist() == [10, 20, 30]
    assert table[8, 5, 5, 3] > 5 * table[7, 5, 5, 3] > 0  # opaque point weighs more
    assert table[7, 5, 5 + FILL_STEPS, 3] > 0  # filled FILL_STEPS layers out
    assert table[7, 5, 5 + FILL_STEPS + 1, 3] == 0  # and no further
    assert table[7, 5, 6, :3].tolist() == [105, 60, 40]  # the mean of its two neighbours


def test_guided_agrees_with_full_inside_the_room() -> None:
    """The committed bake: guided within the issue's 35 dB of full (35.2-38.0 measured on
    larger views; 33 here for margin on 2 small views), median depth within 1 %."""
    from egosynth.nerf.bundle import read_bundle
    from egosynth.nerf.check import egocentric_views, psnr
    from egosynth.render.nerf import NerfRenderer

    gt = read_bundle(ROOM).ground_truth_scene()
    c2w, K = egocentric_views(gt, 1, 24, 18)
    r = NerfRenderer.from_bundle(ROOM, device="cpu", mode="full")
    full = r.render_raw(c2w, K, 24, 18)
    r.set_mode("guided")
    guided = r.render_raw(c2w, K, 24, 18)
    assert r.fallback_rays < 0.05 * guided["rgb"][..., 0].size
    assert psnr(guided["rgb"], full["rgb"]) > 33
    rel = np.abs(guided["distance"] - full["distance"]) / full["distance"]
    assert np.median(rel) < 0.01


def test_bake_of_an_imported_nerfstudio_run_renders(tmp_path_factory) -> None:
    """A run fitted by nerfstudio's own trainer (not by egosynth's fit), imported, baked."""
    from egosynth.camera import intrinsics_from_fov
    from egosynth.nerf.bake import bake
    from egosynth.nerf.importer import import_run
    from egosynth.nerf.synthetic import ring_poses, tiny_fit
    from egosynth.render.nerf import NerfRenderer

    _, run = tiny_fit(tmp_path_factory.getbasetemp() / "tiny_nerf")
    root = import_run(run, tmp_path_factory.mktemp("imported") / "bundle")
    bake(root, 32, progress=False, probe_views=8)  # the chain, not the colour coverage
    r = NerfRenderer.from_bundle(root, device="cpu", mode=None)
    assert r.mode == "baked"  # the default once baked (DEFAULT_BAKED_MODE)
    c2w = ring_poses(2, radius=3.0, height=0.5)
    K = intrinsics_from_fov(16, 12, 60.0)
    for mode in ("baked", "guided"):
        r.set_mode(mode)
        f = r.render(c2w, K, 16, 12)
        assert f.rgb.shape == (2, 12, 16, 3) and np.isfinite(f.depth).all()


def test_scenes_bake_command_refuses_bad_resolution(capsys) -> None:
    from egosynth.cli import main

    with pytest.raises(SystemExit) as ex:  # argparse refuses it, before any work
        main(["scenes", "bake", str(ROOM), "--resolution", "3", "--no-progress"])
    assert ex.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resolution" in err


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-30.0, 30.0), min_size=2, max_size=200),
    half=st.floats(0.5, 50.0),
)
def test_uint8_density_grid_keeps_ln_density_to_half_a_step(values, half) -> None:
    """Quantised ln(density) is within half a step of the original inside the stored range,
    and clipped to its ends outside it; the range never spans more than LN_DENSITY_SPAN."""
    from egosynth.nerf.baked import (
        LN_DENSITY_SPAN,
        dequantize_log_density,
        log_density_range,
        quantize_log_density,
    )

    x = np.array(values, np.float32)
    bounds = np.array([[-half] * 3, [half] * 3], np.float32)
    lo, hi = log_density_range(x, bounds)
    assert hi - lo <= LN_DENSITY_SPAN + 1e-4
    back = dequantize_log_density(quantize_log_density(x, [lo, hi]), [lo, hi])
    step = (hi - lo) / 255
    np.testing.assert_allclose(back, np.clip(x, lo, hi), atol=step / 2 + 1e-4)
