"""The synthetic ClickMe twin: export from a tiny hand-made store, read back with the ClickMe
reader, split, shortcut cue, human maps, and the metric's response to part-looking and
background-looking saliency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.errors import EgosynthError
from egosynth.eval.clickme import iter_clickme
from egosynth.eval.metrics import (
    HUMAN_SPEARMAN_CEILING,
    preprocess_clickme_heatmaps,
    tf_resize_bilinear,
)
from egosynth.eval.metrics import score_saliency as score
from egosynth.eval.twin import (
    CUE_COLOURS,
    TwinConfig,
    crop_box,
    diagnostic_part_of,
    export_twin,
    gaussian_blur_2d,
    human_map,
    mutual_information,
    read_twin_info,
    read_twin_samples,
    resize_nearest,
    split_clips,
)

H, W, T = 48, 64, 4
LABELS = [
    {"instance_id": 1, "name": "cat_0", "category": "cat", "parts": {"1": "torso", "2": "head"}},
    {
        "instance_id": 2,
        "name": "car_1",
        "category": "car",
        "parts": {"3": "chassis", "4": "wheels"},
    },
]


def _frames(t: int, shift: int) -> dict[str, np.ndarray]:
    """One stereo frame: a cat (head = its top-left block) and a car (wheels = its bottom rows),
    moving right by one pixel per frame; a textured background."""
    y, x = np.mgrid[:H, :W]
    rgb = np.stack([(x * 3) % 256, (y * 5) % 256, np.full_like(x, 100)], -1).astype(np.uint8)
    inst = np.zeros((H, W), np.uint16)
    part = np.zeros((H, W), np.uint8)
    dx = t + shift
    inst[12:28, 4 + dx : 20 + dx] = 1
    part[12:28, 4 + dx : 20 + dx] = 1
    part[12:18, 4 + dx : 12 + dx] = 2  # cat head
    inst[20:36, 40 + dx : 60 + dx] = 2
    part[20:36, 40 + dx : 60 + dx] = 3
    part[32:36, 40 + dx : 60 + dx] = 4  # car wheels
    rgb[inst == 1] = (200, 150, 90)
    rgb[inst == 2] = (60, 60, 200)
    two = lambda a: np.stack([a, a])[None]  # noqa: E731
    return {
        "rgb": two(rgb),
        "depth": two(np.ones((H, W), np.float16)),
        "instance": two(inst),
        "part": two(part),
    }


def write_tiny_store(path: Path) -> Path:
    from egosynth.data.synthetic import pattern_meta
    from egosynth.store import ClipWriter, finalize_store, prepare_store

    prepare_store(path, "tiny", {"set_config": {"name": "tiny"}}, overwrite=True)
    ids = []
    for s, scene in enumerate(("s0", "s1")):
        for c in range(2):
            cid = f"{scene}-{c}"
            w = ClipWriter(path, cid, T, H, W, {"scene": scene, "seed": c, "fps": 10.0,
                                                "labels": LABELS}, chunk_frames=T)  # fmt: skip
            frames = [_frames(t, s + c) for t in range(T)]
            w.write_frames(0, {k: np.concatenate([f[k] for f in frames]) for k in frames[0]})
            meta, k = pattern_meta(s * 2 + c, T)
            w.write_meta(meta, k)
            w.complete()
            ids.append(cid)
    finalize_store(path, ids)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_tiny_store(tmp_path_factory.mktemp("twin") / "tiny.zarr")


def _export(store: Path, out: Path, **kw) -> dict:
    cfg = TwinConfig(stride=1, crop=32, min_object_px=20, **kw)
    return export_twin(store, out, cfg, progress=False)


def test_export_reads_back_with_store_labels_and_part_maps(store: Path, tmp_path: Path) -> None:
    """Every exported sample, read with the ClickMe reader, carries the label of its object's
    category and, unblurred, exactly the store's diagnostic-part mask of that object."""
    from egosynth.store import ClipStore

    info = _export(store, tmp_path / "tw", blur_sigma=0.0, tint=0.0)
    assert info["categories"] == ["car", "cat"]
    metas = read_twin_samples(tmp_path / "tw")
    clips = ClipStore(store)
    diag = {1: 2, 2: 4}  # instance -> diagnostic part id (head, wheels)
    for split in ("train", "test"):
        samples = list(iter_clickme(tmp_path / "tw" / split))
        assert len(samples) == len(metas[split]) == info["splits"][split]["n_images"]
        # two objects in each of T frames of each clip
        assert len(samples) == 2 * T * len(info["splits"][split]["clips"])
        for s, m in zip(samples, metas[split], strict=True):
            assert s.image.shape == (256, 256, 3) and s.heatmap.shape == (256, 256)
            assert info["categories"][s.label] == {1: "cat", 2: "car"}[m["instance"]]
            top, left, side = m["crop"]
            assert side == 32
            arrays = clips.clip(m["clip"]).read(m["frame"], m["frame"] + 1, ["part", "rgb"])
            win = (slice(top, top + side), slice(left, left + side))
            part = arrays["part"][0, 0][win] == diag[m["instance"]]
            # 32 -> 256 is an exact 8x nearest upsampling: one source pixel per 8x8 block
            assert np.array_equal(s.heatmap[4::8, 4::8], part * 255)
            # the image is the left eye's crop, upsampled (no tint here)
            crop = tf_resize_bilinear(arrays["rgb"][0, 0][win], (256, 256))
            assert np.array_equal(s.image, np.round(crop).astype(np.uint8))


def test_split_holds_out_last_clip_per_scene(store: Path, tmp_path: Path) -> None:
    info = _export(store, tmp_path / "tw")
    assert info["splits"]["train"]["clips"] == ["s0-0", "s1-0"]
    assert info["splits"]["test"]["clips"] == ["s0-1", "s1-1"]
    assert split_clips(["a2", "a1", "b1"], ["a", "a", "b"]) == (["a1", "b1"], ["a2"])


def test_shortcut_cue_and_identical_test_images(store: Path, tmp_path: Path) -> None:
    """At strength 1 the background tint names the label on every train image; twins that
    differ only in the train strength share byte-identical test images."""
    i1 = _export(store, tmp_path / "s1", shortcut=1.0)
    i0 = _export(store, tmp_path / "s0", shortcut=0.0)
    m1 = read_twin_samples(tmp_path / "s1")
    assert i1["splits"]["train"]["cue_agreement"] == 1.0
    assert i1["splits"]["train"]["cue_label_mi"] == pytest.approx(
        i1["splits"]["train"]["label_entropy"]
    )
    assert i0["splits"]["train"]["cue_label_mi"] < i1["splits"]["train"]["cue_label_mi"]
    for a, b in zip(
        iter_clickme(tmp_path / "s0" / "test"), iter_clickme(tmp_path / "s1" / "test"), strict=True
    ):
        assert np.array_equal(a.image, b.image) and a.label == b.label
    # background pixel (0, 0) of the crop: the store's texture blended half-way to the cue
    s, m = next(iter(iter_clickme(tmp_path / "s1" / "train"))), m1["train"][0]
    top, left, _ = m["crop"]
    orig = np.array([(left * 3) % 256, (top * 5) % 256, 100], float)
    want = np.round(0.5 * orig + 0.5 * np.array(CUE_COLOURS[m["label"]]))
    assert np.array_equal(s.image[0, 0], want.astype(np.uint8))
    assert m["cue"] == m["label"]


def test_part_saliency_aligns_and_background_saliency_does_not(store, tmp_path) -> None:
    """Saliency equal to the processed human map scores 1 / 0.65753; the unblurred part mask
    scores high; a saliency that looks only at the background scores below zero."""
    _export(store, tmp_path / "tw")
    samples = list(iter_clickme(tmp_path / "tw" / "test"))
    human = preprocess_clickme_heatmaps(np.stack([s.heatmap for s in samples]))
    ideal = score(human, human)
    assert ideal.alignment == pytest.approx(1 / HUMAN_SPEARMAN_CEILING, abs=1e-9)
    part = np.stack([s.heatmap > 0 for s in samples]).astype(np.float32)
    part = preprocess_clickme_heatmaps(part * 255)  # same geometry as the metric's maps
    assert score(part, human).alignment > 0.9 / HUMAN_SPEARMAN_CEILING
    # background-only model: the tint/texture everywhere except the objects
    metas = read_twin_samples(tmp_path / "tw")["test"]
    from egosynth.store import ClipStore

    clips = ClipStore(store)
    bg = []
    for m in metas:
        top, left, side = m["crop"]
        inst = clips.clip(m["clip"]).read(m["frame"], m["frame"] + 1, ["instance"])["instance"]
        bg.append(resize_nearest(inst[0, 0, top : top + side, left : left + side] == 0, 256))
    bg_sal = preprocess_clickme_heatmaps(np.stack(bg).astype(np.float32) * 255)
    assert score(bg_sal, human).alignment < 0


def test_refuses_bad_inputs(store: Path, tmp_path: Path) -> None:
    with pytest.raises(EgosynthError, match=r"shortcut = 1\.5"):
        TwinConfig(shortcut=1.5)
    with pytest.raises(EgosynthError, match="does not exist"):
        export_twin(tmp_path / "nope.zarr", tmp_path / "tw", TwinConfig(), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(EgosynthError, match="not a twin"):
        export_twin(store, tmp_path / "busy", TwinConfig(), progress=False)
    with pytest.raises(EgosynthError, match=r"no twin\.json"):
        read_twin_info(tmp_path / "busy")
    with pytest.raises(EgosynthError, match="no diagnostic part"):
        diagnostic_part_of("unicorn", {})
    assert diagnostic_part_of("unicorn", {"unicorn": "horn"}) == "horn"
    # a part name no object has: nothing qualifies, and the error says why
    parts = {"cat": "whiskers", "car": "spoiler"}
    with pytest.raises(EgosynthError, match="diagnostic part"):
        _export(store, tmp_path / "tw", diagnostic_parts=parts)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "twin.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(EgosynthError, match="format"):
        read_twin_info(bad)


# --------------------------------------------------------------------------- pure helpers
@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    y0=st.integers(0, 39),
    x0=st.integers(0, 39),
    dy=st.integers(1, 12),
    dx=st.integers(1, 12),
    side=st.one_of(st.none(), st.integers(8, 60)),
)
def test_crop_box_inside_frame_and_covers_object(h, w, y0, x0, dy, dx, side) -> None:
    mask = np.zeros((h, w), bool)
    mask[y0 % h : min(h, y0 % h + dy), x0 % w : min(w, x0 % w + dx)] = True
    top, left, s = crop_box(mask, side, context=2.5, min_side=8)
    assert 0 <= top and top + s <= h and 0 <= left and left + s <= w
    ys, xs = np.nonzero(mask)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    if s >= extent + 1:  # room for the whole object (±1 for the rounding of the centre)
        assert top <= ys.min() and ys.max() < top + s and left <= xs.min() and xs.max() < left + s


def test_human_map_and_blur_golden() -> None:
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    blurred = gaussian_blur_2d(m, 1.0)
    # separable Gaussian truncated at 3 sigma: centre = (1 / sum_{|k|<=3} e^{-k^2/2})^2
    norm = sum(np.exp(-(k**2) / 2) for k in range(-3, 4))
    assert blurred[4, 4] == pytest.approx(1 / norm**2)
    assert blurred.sum() == pytest.approx(1.0)
    hm = human_map(m, np.ones_like(m), sigma=1.0, object_weight=0.0)
    assert hm.dtype == np.uint8 and hm.max() == 255 and hm[4, 4] == 255
    assert hm[4, 5] == round(255 * np.exp(-0.5))
    assert human_map(np.zeros_like(m), m, 1.0).max() == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_mutual_information_bounds(pairs) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    mi = mutual_information(a, b)
    h_a = mutual_information(a, a)
    assert -1e-12 <= mi <= min(h_a, mutual_information(b, b)) + 1e-12
    # a full product grid is independent: MI exactly 0
    grid = [(i, j) for i in set(a) for j in set(b)]
    assert mutual_information([g[0] for g in grid], [g[1] for g in grid]) == pytest.approx(0)


def test_the_diagnostic_part_comes_from_the_store_label_table() -> None:
    """A label that records its diagnostic part is used as recorded (any category); one that
    records none (stores written before labels carried it) falls back to the generator's."""
    from egosynth.eval.twin import scene_objects
    from egosynth.store.schema import LabelTable

    recorded = [
        {"instance_id": 1, "name": "u", "category": "unicorn", "parts": {"1": "horn", "2": "tail"},
         "diagnostic_part": "horn"},
        {"instance_id": 2, "name": "c", "category": "cat", "parts": {"3": "head", "4": "tail"},
         "diagnostic_part": "tail"},
    ]  # fmt: skip
    objects = scene_objects(LabelTable.from_json(recorded), {})
    assert [(o.instance_id, o.diagnostic_ids) for o in objects] == [(1, (1,)), (2, (4,))]
    assert scene_objects(LabelTable.from_json(recorded), {"cat": "head"})[1].diagnostic_ids == (3,)
    old = scene_objects(LabelTable.from_json(LABELS), {})  # no diagnostic_part: head, wheels
    assert [o.diagnostic_ids for o in old] == [(2,), (4,)]


def test_procedural_scenes_record_their_diagnostic_parts() -> None:
    from egosynth.scenes.procedural import GeneratorConfig, build_mesh, generate_layout
    from egosynth.scenes.shapes import DIAGNOSTIC_PART

    labels = build_mesh(generate_layout(GeneratorConfig(name="d", seed=2), 0)).labels
    assert labels and all(lab.diagnostic_part == DIAGNOSTIC_PART[lab.category] for lab in labels)
    assert all(lab.diagnostic_part in lab.parts.values() for lab in labels)


def test_overlay_tiles_blend_as_matplotlib_draws_them(tmp_path: Path) -> None:
    import matplotlib

    from egosynth.eval.report import _blend, plot_overlays

    base = np.full((4, 6, 3), 0.2)
    heat = np.arange(24, dtype=float).reshape(4, 6)
    heat[0, 0] = np.nan
    out = _blend(base, heat, 0.5)
    jet = matplotlib.colormaps["jet"]
    np.testing.assert_allclose(out[3, 5], 0.5 * 0.2 + 0.5 * np.array(jet(1.0)[:3]))  # max -> 1
    np.testing.assert_allclose(out[0, 1], 0.5 * 0.2 + 0.5 * np.array(jet(0.0)[:3]))  # min -> 0
    np.testing.assert_allclose(out[0, 0], base[0, 0])  # NaN: the base shows through
    small = _blend(base, np.array([[0.0, 1.0]]), 1.0)  # resampled: left half low, right high
    np.testing.assert_allclose(small[:, :3], np.broadcast_to(jet(0.0)[:3], (4, 3, 3)))
    np.testing.assert_allclose(small[:, 3:], np.broadcast_to(jet(1.0)[:3], (4, 3, 3)))
    images = np.random.default_rng(0).integers(0, 255, (3, 8, 10, 3)).astype(np.uint8)
    maps = {"a": np.random.default_rng(1).random((3, 8, 10)), "b": np.ones((2, 4, 5))}
    path = plot_overlays(tmp_path / "o.png", images, maps["a"], maps, ["x", "y", "z"])
    assert path.stat().st_size > 1000
