"""The Zarr clip store: layout, codecs, completeness, resume byte-equality, corruption, readers.

No Ray and no scene backend here: a deterministic analytic renderer (tests/_fake_renderer.py)
makes every expected pixel computable, so the store is checked against golden values.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from _fake_renderer import FakeRenderer, tiny_set
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.config import load_scene_set
from egosynth.errors import EgosynthError
from egosynth.plan import clip_trajectory, plan_clips
from egosynth.render_clip import config_fingerprint, render_clip, store_attrs
from egosynth.store import (
    ARRAY_NAMES,
    SCHEMA_VERSION,
    SPARSE_ARRAYS,
    ClipStore,
    ClipWriter,
    complete_clip_ids,
    default_chunk_frames,
    finalize_store,
    prepare_store,
)

CHUNK = 4  # 12-frame clips -> 3 time chunks
# Every test runs with the store's fast path on and off (tests/conftest.py, "store paths").
pytestmark = pytest.mark.usefixtures("store_path")


@pytest.fixture(scope="module")
def sset(tmp_path_factory: pytest.TempPathFactory):
    return load_scene_set(tiny_set(tmp_path_factory.mktemp("set")))


def _new_store(sset, path: Path, clips: int | None = None) -> Path:
    prepare_store(path, config_fingerprint(sset), store_attrs(sset))
    plans = plan_clips(sset)[: clips if clips is not None else None]
    for plan in plans:
        render_clip(sset, plan, path, FakeRenderer(), chunk_frames=CHUNK)
    finalize_store(path, [p.clip_id for p in plan_clips(sset)])
    return path


@pytest.fixture(scope="module")
def store(sset, tmp_path_factory: pytest.TempPathFactory, store_path: str) -> Path:
    return _new_store(sset, tmp_path_factory.mktemp("store") / "s.zarr")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


def test_clip_arrays_match_renderer_and_trajectory(sset, store: Path) -> None:
    plan = plan_clips(sset)[1]
    traj = clip_trajectory(sset, plan)
    W, H, T = 32, 24, 12
    want = FakeRenderer().render(traj.eye_to_world.reshape(-1, 4, 4), np.eye(3), W, H)
    clip = ClipStore(store).clip(plan.clip_id)
    got = clip.read()
    assert got["rgb"].shape == (T, 2, H, W, 3) and got["rgb"].dtype == np.uint8
    np.testing.assert_array_equal(got["rgb"], want.rgb.reshape(T, 2, H, W, 3))
    np.testing.assert_array_equal(got["depth"], want.depth.reshape(T, 2, H, W).astype(np.float16))
    assert got["depth"].dtype == np.float16
    np.testing.assert_array_equal(got["instance"], want.instance.reshape(T, 2, H, W))
    np.testing.assert_array_equal(got["part"], want.part.reshape(T, 2, H, W))
    np.testing.assert_array_equal(got["cam_to_world"], traj.eye_to_world.astype(np.float32))
    np.testing.assert_array_equal(got["time"], np.arange(T) / 10.0)
    np.testing.assert_array_equal(got["fixation_object"], traj.fixation_object)
    np.testing.assert_array_equal(got["fixation_point"], traj.fixation_point.astype(np.float32))
    # Pinhole from the rig's horizontal FOV, principal point at the image centre.
    f = 0.5 * W / math.tan(math.radians(sset.rig.hfov_deg) / 2)
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], np.float32)
    np.testing.assert_array_equal(got["intrinsics"], np.stack([K, K]))
    assert clip.attrs["scene"] == plan.scene and clip.attrs["seed"] == str(plan.seed)
    assert clip.attrs["labels"][1]["parts"] == {"1": "head"}


def test_layout_codecs_and_time_chunking(store: Path) -> None:
    root = zarr.open_group(str(store), mode="r")
    assert root.attrs["schema_version"] == SCHEMA_VERSION
    clip = root["clips/" + sorted(root["clips"].group_keys())[0]]
    assert sorted(clip.array_keys()) == sorted(ARRAY_NAMES)
    rgb, depth = clip["rgb"], clip["depth"]
    # rgb: chunk files ("shards") of whole stereo frames, each frame raw with its own checksum
    assert rgb.shards == (CHUNK, 2, 24, 32, 3) and rgb.chunks == (1, 2, 24, 32, 3)
    assert [type(c).__name__ for c in rgb.compressors] == ["Crc32cCodec"]
    assert depth.shards is None and depth.chunks == (CHUNK, 2, 24, 32)
    ours = ClipStore(store).clip(clip.basename)
    assert ours.codec("rgb") == "raw" and ours.codec("depth") == "lz4"
    names = [type(c).__name__ for c in depth.compressors]
    assert names == ["BloscCodec", "Crc32cCodec"] and depth.compressors[0].cname.value == "lz4"
    assert clip["depth"].metadata.dimension_names == ("time", "eye", "y", "x")


def test_plain_zarr_and_xarray_read_the_same_values(store: Path) -> None:
    import xarray as xr

    cs = ClipStore(store)
    cid = cs.clip_ids()[0]
    ours = cs.clip(cid).read()
    plain = zarr.open_group(str(store), mode="r")[f"clips/{cid}"]
    ds = xr.open_zarr(str(store), group=f"clips/{cid}", zarr_format=3)
    for name in ARRAY_NAMES:
        np.testing.assert_array_equal(plain[name][...], ours[name])
        np.testing.assert_array_equal(ds[name].values, ours[name])
    assert ds["rgb"].dims == ("time", "eye", "y", "x", "channel")
    assert ds.attrs["status"] == "complete"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 12), st.integers(0, 12))
def test_read_any_time_range_equals_slice_of_whole_clip(store: Path, a: int, b: int) -> None:
    start, stop = min(a, b), max(a, b)
    clip = ClipStore(store).clip(ClipStore(store).clip_ids()[0])
    whole = clip.read()
    part = clip.read(start, stop, ["rgb", "depth", "time"])
    for name in ("rgb", "depth", "time"):
        np.testing.assert_array_equal(part[name], whole[name][start:stop])


def test_read_range_outside_clip_is_an_error(store: Path) -> None:
    clip = ClipStore(store).clip(ClipStore(store).clip_ids()[0])
    with pytest.raises(EgosynthError, match=r"\[5, 13\) outside \[0, 12\)"):
        clip.read(5, 13)


def test_root_index_and_consolidated_metadata(sset, store: Path) -> None:
    attrs = ClipStore(store).attrs
    ids = [p.clip_id for p in plan_clips(sset)]
    assert sorted(attrs["index"]) == ids and attrs["store_status"] == "complete"
    assert attrs["index"][ids[0]]["n_frames"] == 12
    assert attrs["labels"][sset.scene_configs[0].name][0]["name"] == "box_0"
    root = zarr.open_group(str(store), mode="r", use_consolidated=True)
    assert root.metadata.consolidated_metadata is not None


def test_incomplete_clip_is_invisible_and_rewrite_is_byte_identical(sset, tmp_path: Path) -> None:
    ref = _new_store(sset, tmp_path / "ref.zarr")
    path = tmp_path / "partial.zarr"
    prepare_store(path, config_fingerprint(sset), store_attrs(sset))
    plan = plan_clips(sset)[0]
    # An interrupted attempt: garbage in the first chunk, no completion.
    w = ClipWriter(path, plan.clip_id, 12, 24, 32, {"scene": plan.scene}, chunk_frames=CHUNK)
    junk = {
        "rgb": np.full((4, 2, 24, 32, 3), 7),
        "depth": np.ones((4, 2, 24, 32)),
        "instance": np.ones((4, 2, 24, 32)),
        "part": np.ones((4, 2, 24, 32)),
    }
    w.write_frames(0, junk)
    cs = ClipStore(path)
    assert cs.clip_ids() == [] and cs.clip_ids(include_incomplete=True) == [plan.clip_id]
    assert complete_clip_ids(path) == set()
    with pytest.raises(EgosynthError, match="not complete"):
        cs.clip(plan.clip_id)
    assert any("not complete" in p for p in cs.validate())
    for p in plan_clips(sset):  # the resumed run redoes the partial clip and the missing one
        render_clip(sset, p, path, FakeRenderer(), chunk_frames=CHUNK)
    finalize_store(path, [p.clip_id for p in plan_clips(sset)])
    assert _files(path / "clips") == _files(ref / "clips")


def test_corrupt_chunk_is_detected_and_named(sset, tmp_path: Path) -> None:
    path = _new_store(sset, tmp_path / "c.zarr")
    cid = ClipStore(path).clip_ids()[0]
    chunk = path / "clips" / cid / "depth" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    problems = ClipStore(path).validate()
    assert len(problems) == 1 and f"clips/{cid}/depth/c/1/0/0/0" in problems[0]
    assert "checksum" in problems[0]
    with pytest.raises(EgosynthError, match=f"clip {cid}/depth: corrupt"):
        ClipStore(path).clip(cid).read(4, 8, ["depth"])
    ClipStore(path).clip(cid).read(0, 4, ["depth"])  # other chunks still read


def test_store_from_other_config_refused_untouched_unless_overwrite(
    sset, store: Path, tmp_path: Path
) -> None:
    other = load_scene_set(tiny_set(tmp_path, seed=4))
    before = _files(store)
    with pytest.raises(EgosynthError, match=r"s\.zarr: store was made from a different config"):
        prepare_store(store, config_fingerprint(other), store_attrs(other))
    assert _files(store) == before
    copy = tmp_path / "copy.zarr"
    _new_store(sset, copy, clips=1)
    prepare_store(copy, config_fingerprint(other), store_attrs(other), overwrite=True)
    assert ClipStore(copy).clip_ids() == [] and ClipStore(copy).attrs["fingerprint"] == (
        config_fingerprint(other)
    )


def test_non_store_and_unwritable_paths_are_one_line_errors(sset, tmp_path: Path) -> None:
    fp, attrs = config_fingerprint(sset), store_attrs(sset)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    with pytest.raises(EgosynthError, match="notes: exists and is not a Zarr store"):
        prepare_store(notes, fp, attrs, overwrite=True)
    assert (notes / "keep.txt").read_text() == "mine"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EgosynthError, match=r"file/s\.zarr: cannot write the store") as e:
        prepare_store(blocker / "s.zarr", fp, attrs)
    assert "\n" not in str(e.value)
    with pytest.raises(EgosynthError, match="does not exist"):
        ClipStore(tmp_path / "missing.zarr")


@pytest.mark.parametrize(
    ("h", "w", "want"), [(24, 32, 8), (96, 128, 8), (480, 640, 1), (200, 200, 4), (1080, 1920, 1)]
)
def test_default_chunk_frames_targets_one_mebibyte(h: int, w: int, want: int) -> None:
    # floor(2**20 / (2 * h * w * 3)) clamped to [1, 8]; 200x200: 1048576 / 240000 = 4.37
    assert default_chunk_frames(h, w) == want


# --------------------------------------------------------------------------- direct chunk I/O
# Local stores read and write chunk files directly (egosynth.store._fast); zarr stays the
# reference: the direct path must give exactly zarr's values and write exactly zarr's bytes.
ODD = [10, 7, 4]  # chunk 4: a padded last chunk (10, 7) and an exact one (4)


@pytest.fixture(scope="module")
def odd_store(tmp_path_factory: pytest.TempPathFactory, store_path: str) -> Path:
    from egosynth.data.synthetic import write_store

    path = tmp_path_factory.mktemp("odd") / "odd.zarr"
    write_store(path, ODD, height=5, width=6, chunk_frames=4)
    return path


@settings(max_examples=40, deadline=None)
@given(st.integers(0, len(ODD) - 1), st.integers(0, 10), st.integers(0, 10))
def test_direct_read_equals_zarr_for_any_range(odd_store: Path, k: int, a: int, b: int) -> None:
    n = ODD[k]
    start, stop = sorted((min(a, n), min(b, n)))
    cs = ClipStore(odd_store)
    cid = cs.clip_ids()[k]
    clip = cs.clip(cid)
    assert clip.folder is not None  # local: the direct path
    plain = zarr.open_group(str(odd_store), mode="r")[f"clips/{cid}"]
    got = clip.read(start, stop)
    for name in ARRAY_NAMES:
        want = plain[name][...] if name == "intrinsics" else plain[name][start:stop]
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    buf = np.full((stop - start, 2, 5, 6), 99, np.float16)
    clip.read_into("depth", start, buf)
    np.testing.assert_array_equal(buf, plain["depth"][start:stop])


@pytest.mark.fast_path  # both writers, explicitly: once is enough
@pytest.mark.parametrize("sparse", [SPARSE_ARRAYS, ARRAY_NAMES])
def test_direct_and_zarr_writers_write_identical_bytes(tmp_path: Path, sparse) -> None:
    from egosynth.data.synthetic import pattern_frames, pattern_meta

    def frames(k: int, t0: int, t1: int) -> dict[str, np.ndarray]:
        f = pattern_frames(k, t0, t1, 5, 6)
        f["instance"] = np.zeros_like(f["instance"])  # all fill value: no chunk file at all
        f["depth"] = f["depth"] * (np.arange(t0, t1) >= 4)[:, None, None, None]  # chunk 0 empty
        f["rgb"][np.arange(t0, t1) == 5] = 0  # a raw frame of fill values: not stored
        return f

    stores = {}
    for direct in (True, False):
        path = tmp_path / f"{direct}.zarr"
        prepare_store(path, "fp", {})
        for n in (10, 8):  # padded last chunk, exact last chunk
            w = ClipWriter(
                path, f"c{n}", n, 5, 6, {"scene": "s"}, chunk_frames=4, direct=direct, sparse=sparse
            )
            assert bool(w.direct) == direct
            for t0 in range(0, n, 4):
                w.write_frames(t0, frames(n, t0, min(n, t0 + 4)))
            meta, k_mat = pattern_meta(n, n)
            w.write_meta(meta, k_mat)
            w.complete()
        stores[direct] = _files(path / "clips")
    assert stores[True] == stores[False]
    assert not any(k.startswith("c10/instance/c/") for k in stores[True])
    # Only sparse arrays skip chunks (and rgb frames) of fill values; the others store them.
    dense = "depth" not in sparse
    assert ("c10/depth/c/0/0/0/0" in stores[True]) == dense and "c10/depth/c/1/0/0/0" in stores[
        True
    ]
    frame = 2 * 5 * 6 * 3 + 4  # bytes + crc32c; the index: 4 x (offset, nbytes) + crc32c
    assert len(stores[True]["c10/rgb/c/0/0/0/0/0"]) == 4 * frame + 4 * 16 + 4
    stored = 4 if dense else 3  # frame 5 is fill values
    assert len(stores[True]["c10/rgb/c/1/0/0/0/0"]) == stored * frame + 4 * 16 + 4
    assert len(stores[True]["c10/rgb/c/2/0/0/0/0"]) == 2 * frame + 4 * 16 + 4  # padded end


@pytest.fixture(scope="module")
def holey_store(tmp_path_factory: pytest.TempPathFactory, store_path: str) -> Path:
    """Raw rgb with frames of fill values (frame 1, all of shard 1: no file; every array
    sparse, as clips written before `sparse_arrays` existed), a padded last
    shard, and a second clip whose shard 0 stores its frames in reverse order (valid for zarr,
    which follows the index; egosynth never writes it)."""
    from egosynth.data.synthetic import pattern_frames, pattern_meta

    path = tmp_path_factory.mktemp("holey") / "h.zarr"
    prepare_store(path, "fp", {})
    for cid in ("holes", "reversed"):
        w = ClipWriter(path, cid, 10, 5, 6, {"scene": "s"}, chunk_frames=4, sparse=ARRAY_NAMES)
        f = pattern_frames(1, 0, 10, 5, 6)
        if cid == "holes":
            f["rgb"][[1, 4, 5, 6, 7]] = 0
        for t0 in range(0, 10, 4):
            w.write_frames(t0, {k: v[t0 : t0 + 4] for k, v in f.items()})
        w.write_meta(*pattern_meta(1, 10))
        w.complete()
    shard = path / "clips" / "reversed" / "rgb" / "c" / "0" / "0" / "0" / "0" / "0"
    data, n = shard.read_bytes(), 2 * 5 * 6 * 3 + 4
    index = np.frombuffer(data[-68:-4], "<u8").reshape(4, 2).copy()
    index[:, 0] = index[::-1, 0]  # frame i now sits where frame 3 - i was
    body = b"".join(data[(3 - i) * n : (4 - i) * n] for i in range(4)) + index.tobytes()
    import google_crc32c

    shard.write_bytes(body + google_crc32c.value(index.tobytes()).to_bytes(4, "little"))
    assert not (path / "clips" / "holes" / "rgb" / "c" / "1").exists()
    return path


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["holes", "reversed"]),
    st.integers(0, 10),
    st.integers(0, 10),
    st.integers(1, 4),
)
def test_raw_frames_read_equals_zarr_for_any_frames(
    holey_store: Path, store_path: str, cid: str, a: int, b: int, step: int
) -> None:
    start, stop = min(a, b), max(a, b)
    clip = ClipStore(holey_store).clip(cid)
    assert clip.frame_addressable("rgb") == (store_path == "fast")
    assert not clip.frame_addressable("depth")
    want = zarr.open_group(str(holey_store), mode="r")[f"clips/{cid}/rgb"][start:stop:step]
    got = np.full(want.shape, 99, np.uint8)
    clip.read_into("rgb", start, got, step)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(clip.read(start, stop, ["rgb"])["rgb"][::step], want)
    depth = np.empty((len(want), 2, 5, 6), np.float16)  # Blosc chunks: the same API
    clip.read_into("depth", start, depth, step)
    plain = zarr.open_group(str(holey_store), mode="r")[f"clips/{cid}/depth"]
    np.testing.assert_array_equal(depth, plain[start:stop:step])


def test_unaligned_or_misshaped_writes_go_through_zarr(tmp_path: Path) -> None:
    from egosynth.data.synthetic import pattern_frames

    path = tmp_path / "u.zarr"
    prepare_store(path, "fp", {})
    w = ClipWriter(path, "c", 10, 5, 6, {"scene": "s"}, chunk_frames=4)
    f = pattern_frames(0, 0, 10, 5, 6)
    for t0, t1 in ((0, 3), (3, 9), (9, 10)):  # no batch is whole chunks: zarr merges them
        w.write_frames(t0, {k: v[t0:t1] for k, v in f.items()})
    got = zarr.open_group(str(path), mode="r")["clips/c/rgb"][...]
    np.testing.assert_array_equal(got, f["rgb"])
    with pytest.raises(ValueError):  # a wrong image shape is zarr's error, never a bad chunk
        w.write_frames(0, {k: v[:4, :, :4] for k, v in f.items()})


def test_remote_store_falls_back_to_zarr_with_the_same_values(odd_store: Path) -> None:
    from egosynth.data.synthetic import write_store

    url = f"memory://egosynth-test-{uuid.uuid4().hex}/odd.zarr"
    write_store(url, ODD, height=5, width=6, chunk_frames=4)
    remote, local = ClipStore(url), ClipStore(odd_store)
    assert remote.clip_ids() == local.clip_ids()
    for cid in remote.clip_ids():
        r = remote.clip(cid)
        assert r.folder is None
        assert r.chunk_frames("depth") == 4 and r.layout("depth") == local.clip(cid).layout("depth")
        assert r.chunk_frames("rgb") == 1 and not r.frame_addressable("rgb")  # zarr reads it
        a, b = r.read(1, r.n_frames), local.clip(cid).read(1, r.n_frames)
        for name in ARRAY_NAMES:
            np.testing.assert_array_equal(a[name], b[name])


def _corrupt(path: Path, cid: str, name: str, how: str) -> None:
    """Damage time chunk 1 of `name`: depth is a Blosc chunk, rgb a shard of raw frames."""
    import google_crc32c

    key = ["c", "1", "0", "0", "0"] + (["0"] if name == "rgb" else [])
    chunk = path.joinpath("clips", cid, name, *key)
    data = chunk.read_bytes()
    if how == "flip":
        data = data[:20] + bytes([data[20] ^ 1]) + data[21:]
    elif how == "short":
        data = data[:10]
    elif how == "index":  # the shard index's first offset, its checksum left as it was
        i = len(data) - 4 * 16 - 4
        data = data[:i] + bytes([data[i] ^ 8]) + data[i + 1 :]
    elif name == "depth":  # a valid chunk of the wrong size, checksum valid: the size check
        import numcodecs

        body = bytes(numcodecs.Blosc("lz4", 5, 1, 0, 1).encode(np.zeros(7, np.uint8)))
        data = body + google_crc32c.value(body).to_bytes(4, "little")
    else:  # a valid shard of 7-byte frames, every checksum right: the frame-size check
        from egosynth.store._fast import Frames

        tmp = path.parent / "other"
        Frames(tmp, (4, 7), 4, np.dtype("uint8"), np.uint8(0)).write(0, np.ones((4, 7)), set())
        data = (tmp / "c" / "0" / "0").read_bytes()
    chunk.write_bytes(data)


@pytest.mark.parametrize(
    ("name", "how", "why"),
    [
        ("depth", "flip", "checksum mismatch"),
        ("depth", "short", "too short"),
        ("depth", "size", "holds 7"),
        ("rgb", "flip", "checksum mismatch in frame"),
        ("rgb", "short", "too short"),
        ("rgb", "index", "index checksum mismatch"),
        ("rgb", "size", "frame 0 of the shard has 11 bytes"),
    ],
)
def test_direct_read_detects_corruption(
    sset, tmp_path: Path, name: str, how: str, why: str, store_path: str
) -> None:
    from egosynth.data import WindowLoader

    path = _new_store(sset, tmp_path / "c.zarr", clips=1)
    cid = ClipStore(path).clip_ids()[0]
    _corrupt(path, cid, name, how)
    clip = ClipStore(path).clip(cid)
    key = "c/1/0/0/0" + ("/0" if name == "rgb" else "")
    why = why if store_path == "fast" else ""  # plain zarr: its own words, after the key
    with pytest.raises(EgosynthError, match=rf"clip {cid}/{name}: corrupt .*{key}: .*{why}"):
        clip.read(4, 8, [name])
    shape, dtype = clip.layout(name)
    with pytest.raises(EgosynthError, match=why or None):
        clip.read_into(name, 4, np.empty((4, *shape[1:]), dtype))
    clip.read(0, 4, [name])  # the other chunks still read
    for threads in (1, 2):  # in order, and on the decode threads
        loader = WindowLoader(
            path,
            length=4,
            stride=4,
            batch_size=3,
            shuffle=False,
            fields=[name],
            decode_threads=threads,
        )
        with pytest.raises(EgosynthError, match=rf"c\.zarr: clip {cid}/{name} frames 4:8: corrupt"):
            list(loader)


def test_read_into_refuses_a_wrong_buffer(store: Path) -> None:
    clip = ClipStore(store).clip(ClipStore(store).clip_ids()[0])
    with pytest.raises(EgosynthError, match=r"C-contiguous uint8 buffer of shape \(n, 2, 24"):
        clip.read_into("rgb", 0, np.empty((4, 2, 24, 32, 3), np.float32))
    with pytest.raises(EgosynthError, match=r"\[10, 14\) outside \[0, 12\)"):
        clip.read_into("rgb", 10, np.empty((4, 2, 24, 32, 3), np.uint8))


@pytest.mark.parametrize(("length", "stride"), [(4, 4), (8, 8), (4, 5), (3, 3), (4, 2)])
def test_loader_windows_equal_zarr_slices(odd_store: Path, length: int, stride: int) -> None:
    # (4, 4), (8, 8): disjoint whole-chunk windows, decoded straight into the batch (including
    # the padded end of a 10-frame clip); the others go through the chunk cache.
    from egosynth.data import WindowLoader

    loader = WindowLoader(
        odd_store, length=length, stride=stride, batch_size=3, seed=1, fields=["rgb", "depth"]
    )
    plain = zarr.open_group(str(odd_store), mode="r")["clips"]
    n = 0
    for batch in loader:
        for i, (cid, s) in enumerate(zip(batch["clip_id"], batch["start"], strict=True)):
            want = plain[f"{cid}/rgb"][s : s + length]
            np.testing.assert_array_equal(batch["rgb"][i], want.transpose(0, 1, 4, 2, 3))
            np.testing.assert_array_equal(batch["depth"][i], plain[f"{cid}/depth"][s : s + length])
            n += 1
    assert n == len(loader.index) > 0


def test_clip_listing_ignores_unfinished_writes_silently(store: Path, tmp_path: Path) -> None:
    import shutil
    import warnings

    path = tmp_path / "live.zarr"
    shutil.copytree(store, path)
    prepare_store(path, ClipStore(store).attrs["fingerprint"], {})  # drops consolidation
    ids = ClipStore(path).clip_ids()
    (path / "clips" / "being-made").mkdir()  # a writer's folder before its zarr.json
    (path / "clips" / "zarr.0123abcd.partial").write_bytes(b"{")  # a temp file mid-rename
    (path / "clips" / ids[0] / "zarr.4567.partial").write_bytes(b"{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cs = ClipStore(path)
        assert cs.clip_ids() == ids
        assert cs.clip_ids(include_incomplete=True) == ids
        assert complete_clip_ids(path) == set(ids)
        assert sorted(finalize_store(path, ids)) == ids
    for name in ("being-made", "..", f"{ids[0]}/rgb"):  # never a folder outside clips/
        with pytest.raises(EgosynthError, match=f"no clip {name!r}"):
            ClipStore(path).clip(name)


def test_a_second_writer_is_refused_and_changes_nothing(sset, tmp_path: Path) -> None:
    from egosynth.orchestration import render_set
    from egosynth.store import writer_lock

    path = _new_store(sset, tmp_path / "s.zarr", clips=1)  # half rendered: work to do
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with writer_lock(path):  # another driver is rendering into it
        for overwrite in (False, True):
            with pytest.raises(EgosynthError, match=r"s\.zarr: another egosynth process"):
                render_set(sset, path, overwrite=overwrite, progress=False)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    with writer_lock(path):  # released when the holder left its block
        prepare_store(path, config_fingerprint(sset), store_attrs(sset), overwrite=True)
        assert path.is_dir() and ClipStore(path).clip_ids() == []  # emptied, folder kept
    fresh = tmp_path / "new.zarr"
    with pytest.raises(RuntimeError), writer_lock(fresh):
        assert fresh.is_dir()
        raise RuntimeError("failed before writing")
    assert not fresh.exists()  # no empty folder left behind


def test_stored_chunks_read_straight_into_the_buffer_and_are_checked(
    tmp_path: Path, store_path: str
) -> None:
    from egosynth.data.synthetic import pattern_frames, pattern_meta

    path = tmp_path / "raw.zarr"
    prepare_store(path, "fp", {})
    w = ClipWriter(path, "c", 10, 5, 6, {"scene": "s"}, chunk_frames=4, clevel=0)
    f = pattern_frames(3, 0, 10, 5, 6)
    for t0 in range(0, 10, 4):
        w.write_frames(t0, {k: v[t0 : t0 + 4] for k, v in f.items()})
    w.write_meta(*pattern_meta(3, 10))
    w.complete()
    chunk = path / "clips" / "c" / "depth" / "c" / "1" / "0" / "0" / "0"
    assert chunk.read_bytes()[2] & 0x02  # Blosc's "stored as is" flag: the fast path's input
    clip = ClipStore(path).clip("c")
    plain = zarr.open_group(str(path), mode="r")["clips/c"]
    for name in ("rgb", "depth", "instance", "part"):
        buf = np.empty(f[name][2:9].shape, f[name].dtype)
        clip.read_into(name, 2, buf)  # a partial chunk, a whole one, the padded last one
        np.testing.assert_array_equal(buf, plain[name][2:9])
        np.testing.assert_array_equal(buf, f[name][2:9])
    import google_crc32c
    import numcodecs

    data = chunk.read_bytes()
    small = bytes(numcodecs.Blosc("lz4", 0, 1, 0, 1).encode(np.zeros(7, np.uint8)))
    for bad, why in (
        (data[:30] + bytes([data[30] ^ 1]) + data[31:], "checksum mismatch"),  # flipped bit
        (data[:-9] + data[-4:], "checksum mismatch"),  # truncated
        (small + google_crc32c.value(small).to_bytes(4, "little"), "holds 7"),  # wrong size
    ):
        chunk.write_bytes(bad)
        why = why if store_path == "fast" else ""  # plain: zarr's own words after the key
        with pytest.raises(EgosynthError, match=rf"clip c/depth: corrupt .*c/1/0/0/0: .*{why}"):
            ClipStore(path).clip("c").read(4, 8, ["depth"])


@pytest.fixture
def crc_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Byte counts of the crc32c computations the store's fast path makes from now on."""
    import egosynth.store._fast as store_mod

    calls: list[int] = []
    real = store_mod.crc32c.crc32c
    monkeypatch.setattr(
        store_mod.crc32c, "crc32c", lambda *a: calls.append(len(memoryview(a[0]))) or real(*a)
    )
    return calls


@pytest.mark.fast_path
def test_raw_frames_are_checked_once_per_version_of_their_file(
    holey_store: Path, tmp_path: Path, crc_calls: list[int]
) -> None:
    import os
    import shutil

    path = tmp_path / "h.zarr"
    shutil.copytree(holey_store, path)
    calls = crc_calls
    frame = 2 * 5 * 6 * 3
    clip = ClipStore(path).clip("reversed")
    want = clip.read(0, 4, ["rgb"])["rgb"]
    assert calls.count(frame) == 4  # each frame of shard 0 checked (and the index once)
    calls.clear()
    again = ClipStore(path).clip("reversed").read(0, 4, ["rgb"])["rgb"]  # same file version
    assert calls.count(frame) == 0
    np.testing.assert_array_equal(again, want)
    # A new version of the file (writers replace files): every frame is checked again.
    shard = path / "clips" / "reversed" / "rgb" / "c" / "0" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[frame // 2] ^= 1  # frame 3 lies first in this shard
    tmp = shard.with_name("new")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, shard)
    with pytest.raises(EgosynthError, match="checksum mismatch in frame 3 of the shard"):
        ClipStore(path).clip("reversed").read(0, 4, ["rgb"])


@pytest.mark.fast_path
def test_a_steady_files_scope_looks_each_shard_up_once(
    holey_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import shutil

    path = tmp_path / "h.zarr"
    shutil.copytree(holey_store, path)
    shard = path / "clips" / "reversed" / "rgb" / "c" / "0" / "0" / "0" / "0" / "0"
    stats: list[Path] = []
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(Path(p)) or real(p, *a, **k))
    clip = ClipStore(path).clip("reversed")
    frame = 2 * 5 * 6 * 3
    with clip.steady_files():
        want = clip.read(0, 4, ["rgb"])["rgb"]
        for s in range(3):
            clip.read(s, s + 2, ["rgb"])
        # replaced mid-scope (frame 3 corrupted): the scope keeps the version it looked up
        data = bytearray(shard.read_bytes())
        data[frame // 2] ^= 1  # frame 3 lies first in this shard
        shard.with_name("new").write_bytes(bytes(data))
        os.replace(shard.with_name("new"), shard)
        np.testing.assert_array_equal(clip.read(0, 4, ["rgb"])["rgb"], want)
    assert stats.count(shard) == 1
    with pytest.raises(EgosynthError, match="checksum mismatch in frame 3 of the shard"):
        clip.read(0, 4, ["rgb"])  # after the scope: looked up again, the new version checked
    assert stats.count(shard) == 2


@pytest.mark.fast_path
def test_a_forked_child_starts_with_no_shard_maps(holey_store: Path) -> None:
    import multiprocessing

    import egosynth.store._fast as store_mod

    ClipStore(holey_store).clip("holes").read(0, 10, ["rgb"])
    assert len(store_mod.SHARDS._mapped) > 0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_count_shard_maps) == 0


@pytest.mark.fast_path
def test_a_child_forked_inside_a_steady_files_scope_starts_outside_it(holey_store: Path) -> None:
    import multiprocessing

    clip = ClipStore(holey_store).clip("holes")
    with clip.steady_files():
        clip.read(0, 10, ["rgb"])
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply(_in_a_scope) is False  # the child looks files up afresh


def _in_a_scope() -> bool:
    import egosynth.store._fast as store_mod

    return getattr(store_mod._SCOPE, "found", None) is not None


def _count_shard_maps() -> int:
    import egosynth.store._fast as store_mod

    return len(store_mod.SHARDS._mapped)


def _open_files_under(folder: Path) -> int:
    """File descriptors this process holds on files under `folder` (Linux /proc)."""
    import os

    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (another thread)
            continue
        n += target.startswith(f"{folder.absolute()}/")
    return n


@pytest.mark.fast_path
def test_unmapped_shards_keep_their_checks_until_forgotten(
    holey_store: Path, monkeypatch: pytest.MonkeyPatch, crc_calls: list[int]
) -> None:

    import egosynth.store._fast as store_mod

    assert 16 <= store_mod.map_limit() <= 1024
    monkeypatch.setattr(store_mod, "SHARDS", store_mod.ShardCache(states=2, maps=1))
    calls = crc_calls
    frame = 2 * 5 * 6 * 3
    clip = ClipStore(holey_store).clip("reversed")
    before = _open_files_under(holey_store)  # maps of earlier tests, in the real cache
    want = clip.read(0, 10, ["rgb"])["rgb"]  # shards 0, 1, 2: only shard 2 stays mapped
    assert calls.count(frame) == 10
    assert _open_files_under(holey_store) == before + 1  # a map holds a descriptor: 1 map
    calls.clear()
    np.testing.assert_array_equal(clip.read(8, 10, ["rgb"])["rgb"], want[8:])  # mapped
    np.testing.assert_array_equal(clip.read(4, 8, ["rgb"])["rgb"], want[4:8])  # remapped
    assert calls.count(frame) == 0  # states of shards 1 and 2 kept: checks remembered
    np.testing.assert_array_equal(clip.read(0, 4, ["rgb"])["rgb"], want[:4])
    assert calls.count(frame) == 4  # shard 0's state was dropped (limit 2): checked again
    assert len(store_mod.SHARDS._mapped) == 1 and len(store_mod.SHARDS._states) == 2


def test_unknown_rgb_layout_is_a_one_line_error_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    prepare_store(path, "fp", {})
    with pytest.raises(EgosynthError, match=r"s\.zarr: rgb layout 'png': must be one of"):
        ClipWriter(path, "c", 4, 5, 6, {"scene": "s"}, rgb="png")
    assert not (path / "clips" / "c").exists()


@pytest.mark.fast_path
def test_overwriting_a_store_drops_its_shard_maps(
    sset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import egosynth.store._fast as store_mod

    path = _new_store(sset, tmp_path / "o.zarr", clips=1)
    ClipStore(path).clip(ClipStore(path).clip_ids()[0]).read(0, 12, ["rgb"])
    mine = [p for p in store_mod.SHARDS._states if p.startswith(f"{path.absolute()}/")]
    assert mine and all(store_mod.SHARDS._states[p].data is not None for p in mine)
    monkeypatch.chdir(tmp_path)  # the same store named by a relative path
    prepare_store(Path("o.zarr"), config_fingerprint(sset), store_attrs(sset), overwrite=True)
    assert not any(p.startswith(f"{path.absolute()}/") for p in store_mod.SHARDS._states)
    assert not any(p.startswith(f"{path.absolute()}/") for p in store_mod.SHARDS._mapped)
