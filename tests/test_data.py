"""egosynth.data core (numpy only): index, (seed, epoch) order, sharding, resume, reader, live."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.data import (
    ChunkCache,
    ClipInfo,
    Shard,
    WindowIndex,
    WindowLoader,
    WindowSpec,
    epoch_order,
    rank_batch_count,
    shard_batches,
)
from egosynth.data.index import used_windows
from egosynth.data.synthetic import FPS, prepare, write_clip, write_store
from egosynth.errors import EgosynthError

LENGTHS = [10, 7, 3, 13]  # chunk_frames 4: windows cross chunk boundaries and clip ends


# --------------------------------------------------------------------------- helpers
def brute_windows(lengths: list[int], spec: WindowSpec) -> list[tuple[int, int]]:
    """Every (clip, start) by enumeration: the definition the index must agree with."""
    out = []
    for c, n in enumerate(lengths):
        for s in range(0, n, spec.stride):
            if s + (spec.length - 1) * spec.skip < n:
                out.append((c, s))
    return out


def make_index(lengths: list[int], spec: WindowSpec) -> WindowIndex:
    return WindowIndex([ClipInfo(0, f"c{i}", n) for i, n in enumerate(lengths)], spec)


def dataloader_merge(per_worker: list[list[list[int]]]) -> list[list[int]]:
    """Batches in the order torch's DataLoader yields them: round-robin over workers."""
    out = []
    for group in itertools.zip_longest(*per_worker):
        out.extend(b for b in group if b is not None)
    return out


def rank_batches(order, n, bs, rank, world, workers, start=0, drop_last=False):
    per_worker = [
        [
            order[lo:hi].tolist()
            for lo, hi in shard_batches(n, bs, Shard(rank, world, w, workers), start, drop_last)
        ]
        for w in range(workers)
    ]
    return dataloader_merge(per_worker)


plans = st.fixed_dictionaries(
    {
        "lengths": st.lists(st.integers(0, 40), min_size=1, max_size=8),
        "length": st.integers(1, 6),
        "stride": st.integers(1, 5),
        "skip": st.integers(1, 4),
        "batch_size": st.integers(1, 7),
        "seed": st.integers(0, 2**32),
        "epoch": st.integers(0, 50),
        "block": st.integers(1, 5),
    }
)


# --------------------------------------------------------------------------- index
def test_window_count_golden() -> None:
    # span = (3 - 1) * 2 + 1 = 5; starts 0, 2, 4 fit in 10 frames; 6 would end at frame 10.
    spec = WindowSpec(length=3, stride=2, skip=2)
    assert spec.span == 5
    assert [spec.count(n) for n in (4, 5, 6, 7, 10)] == [0, 1, 1, 2, 3]


@settings(max_examples=150, deadline=None)
@given(plans)
def test_index_locates_every_window(p: dict) -> None:
    spec = WindowSpec(p["length"], p["stride"], p["skip"])
    index = make_index(p["lengths"], spec)
    expected = brute_windows(p["lengths"], spec)
    assert len(index) == len(expected)
    clip, start = index.locate(np.arange(len(index)))
    assert list(zip(clip.tolist(), start.tolist(), strict=True)) == expected


@settings(max_examples=150, deadline=None)
@given(plans)
def test_epoch_order_is_a_permutation_set_by_seed_and_epoch(p: dict) -> None:
    spec = WindowSpec(p["length"], p["stride"], p["skip"])
    index = make_index(p["lengths"], spec)
    order = epoch_order(index, p["seed"], p["epoch"], block=p["block"])
    assert sorted(order.tolist()) == list(range(len(index)))
    again = epoch_order(make_index(p["lengths"], spec), p["seed"], p["epoch"], block=p["block"])
    assert np.array_equal(order, again)
    if p["block"] > 1:  # runs of one block: consecutive ids of one clip
        clip, _ = index.locate(order)
        pos = 0
        while pos < len(order):
            run = order[pos : pos + 1]
            first = int(order[pos])
            assert (first - index.offsets[clip[pos]]) % p["block"] == 0
            n = min(p["block"], int(index.offsets[clip[pos] + 1]) - first)
            run = order[pos : pos + n]
            assert run.tolist() == list(range(first, first + n))
            pos += n


def test_epoch_order_changes_with_epoch_and_seed() -> None:
    index = make_index([50, 50], WindowSpec(4))
    base = epoch_order(index, 0, 0)
    assert not np.array_equal(base, epoch_order(index, 0, 1))
    assert not np.array_equal(base, epoch_order(index, 1, 0))
    assert epoch_order(index, 0, 0, shuffle=False).tolist() == list(range(len(index)))


# --------------------------------------------------------------------------- sharding
@settings(max_examples=100, deadline=None)
@given(plans, st.booleans())
def test_every_window_exactly_once_across_workers_and_ranks(p: dict, drop_last: bool) -> None:
    spec = WindowSpec(p["length"], p["stride"], p["skip"])
    index = make_index(p["lengths"], spec)
    n, bs = len(index), p["batch_size"]
    order = epoch_order(index, p["seed"], p["epoch"], block=p["block"])
    for world in (1, 2):
        for workers in (1, 2, 4):
            seen = []
            for rank in range(world):
                batches = rank_batches(order, n, bs, rank, world, workers, drop_last=drop_last)
                assert len(batches) == rank_batch_count(n, bs, rank, world, drop_last)
                seen.extend(w for b in batches for w in b)
            if drop_last:  # the same whole number of full batches on every rank
                per_rank = n // (bs * world)
                assert len(seen) == per_rank * bs * world
                assert sorted(seen) == sorted(order[: len(seen)].tolist())
            else:
                assert sorted(seen) == list(range(n)), (world, workers)


@settings(max_examples=100, deadline=None)
@given(plans)
def test_global_order_is_the_same_for_any_worker_count(p: dict) -> None:
    spec = WindowSpec(p["length"], p["stride"], p["skip"])
    index = make_index(p["lengths"], spec)
    n, bs = len(index), p["batch_size"]
    order = epoch_order(index, p["seed"], p["epoch"], block=p["block"])
    world = 2
    for workers in (1, 2, 4):
        per_rank = [rank_batches(order, n, bs, r, world, workers) for r in range(world)]
        # Step s of training consumes local batch s of every rank: global batches s*R + r.
        merged = [w for step in itertools.zip_longest(*per_rank) for b in step if b for w in b]
        assert merged == order.tolist()


@settings(max_examples=100, deadline=None)
@given(plans, st.integers(0, 30), st.integers(1, 4), st.integers(1, 4))
def test_resume_after_k_batches_yields_exactly_the_rest(
    p: dict, k: int, workers_before: int, workers_after: int
) -> None:
    spec = WindowSpec(p["length"], p["stride"], p["skip"])
    index = make_index(p["lengths"], spec)
    n, bs = len(index), p["batch_size"]
    order = epoch_order(index, p["seed"], p["epoch"], block=p["block"])
    for world in (1, 2):
        for rank in range(world):
            full = rank_batches(order, n, bs, rank, world, workers_before)
            k_eff = min(k, len(full))
            rest = rank_batches(order, n, bs, rank, world, workers_after, start=k_eff)
            assert rest == full[k_eff:]


def test_shard_rejects_bad_numbers() -> None:
    with pytest.raises(EgosynthError, match="rank 2 of world_size 2"):
        Shard(rank=2, world_size=2)
    with pytest.raises(EgosynthError, match="length = 0"):
        WindowSpec(length=0)
    with pytest.raises(EgosynthError, match="batch_size = 0"):
        list(shard_batches(10, 0, Shard()))


# --------------------------------------------------------------------------- cache
def test_chunk_cache_is_lru_and_byte_bounded() -> None:
    cache = ChunkCache(max_bytes=300)
    a, b, c = (np.zeros(100, np.uint8) + i for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    cache.put("c", c)
    assert cache.nbytes == 300
    assert cache.get("a") is a  # a is now most recent; b is the oldest
    cache.put("d", np.zeros(100, np.uint8))
    assert cache.get("b") is None and cache.get("a") is a and cache.nbytes == 300
    cache.put("huge", np.zeros(301, np.uint8))  # larger than the limit: not cached
    assert cache.get("huge") is None and cache.nbytes <= 300
    assert (cache.hits, cache.misses) == (2, 2)


# --------------------------------------------------------------------------- reading
# Tests that read stores run with the store's fast path on and off (tests/conftest.py, "store
# paths"): the fixtures below depend on `store_path`, and the tests that make their own store
# ask for it.
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, store_path: str) -> Path:
    path = tmp_path_factory.mktemp("data") / "s.zarr"
    write_store(path, LENGTHS, height=4, width=6, chunk_frames=4)
    return path


@pytest.fixture(scope="module")
def store2(tmp_path_factory: pytest.TempPathFactory, store_path: str) -> Path:
    path = tmp_path_factory.mktemp("data2") / "t.zarr"
    # rgb as Blosc chunks, where `store` has raw frames: batches mix the two layouts
    write_store(path, [9, 5], height=4, width=6, chunk_frames=3, rgb="lz4")
    return path


def check_batch(batch: dict, spec: WindowSpec, eyes: tuple[int, ...], clip_no: dict) -> None:
    """Every value of a batch against the synthetic pattern (see egosynth.data.synthetic)."""
    b = len(batch["start"])
    frames = batch["start"][:, None] + np.arange(spec.length)[None] * spec.skip  # (B, T)
    e = np.array(eyes)
    k = np.array(
        [clip_no[(int(s), str(c))] for s, c in zip(batch["source"], batch["clip_id"], strict=True)]
    )
    rgb = batch["rgb"]
    assert rgb.shape[:4] == (b, spec.length, len(eyes), 3) and rgb.dtype == np.uint8
    assert np.array_equal(
        rgb[:, :, :, 0],
        np.broadcast_to((frames % 256)[:, :, None, None, None], rgb.shape[:3] + rgb.shape[4:]),
    )
    assert np.all(rgb[:, :, :, 1] == (k % 256)[:, None, None, None, None])
    assert np.array_equal(
        rgb[:, :, :, 2, 0, 0], np.broadcast_to(e * 128 % 256, (b, spec.length, len(e)))
    )
    depth = batch["depth"]
    assert np.array_equal(
        depth[..., 0, 0], (frames[:, :, None] + e[None, None] / 2).astype(np.float16)
    )
    c2w = batch["cam_to_world"]
    assert np.array_equal(c2w[..., 0, 3], np.broadcast_to(frames[:, :, None], c2w.shape[:3]))
    assert np.array_equal(c2w[..., 1, 3], np.broadcast_to(e, c2w.shape[:3]))
    assert np.array_equal(c2w[..., 2, 3], np.broadcast_to(k[:, None, None], c2w.shape[:3]))
    assert np.allclose(batch["time"], frames / FPS)
    assert np.array_equal(batch["intrinsics"][:, :, 0, 0], np.broadcast_to(100.0 + e, (b, len(e))))


@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(1, 5),
    stride=st.integers(1, 4),
    skip=st.integers(1, 3),
    eyes=st.sampled_from([(0, 1), (0,), (1,)]),
    batch_size=st.integers(1, 5),
    cache_bytes=st.sampled_from([0, 2000, 1 << 20]),
    seed=st.integers(0, 1000),
    decode_threads=st.sampled_from([1, 3]),
)
def test_windows_read_back_exactly(
    store: Path,
    store2: Path,
    length,
    stride,
    skip,
    eyes,
    batch_size,
    cache_bytes,
    seed,
    decode_threads,
) -> None:
    spec = WindowSpec(length, stride, skip)
    loader = WindowLoader(
        [store, store2],
        length=length,
        stride=stride,
        skip=skip,
        eyes=eyes,
        batch_size=batch_size,
        seed=seed,
        cache_bytes=cache_bytes,
        block=2,
        decode_threads=decode_threads,
    )
    clip_no = {(0, f"c{i:05d}"): i for i in range(len(LENGTHS))}
    clip_no.update({(1, f"c{i:05d}"): i for i in range(2)})
    seen, kept = [], []
    for batch in loader:
        check_batch(batch, spec, eyes, clip_no)
        seen.extend(batch["window"].tolist())
        assert loader.reader.cache.nbytes <= cache_bytes
        kept.append(batch)
    for batch in kept:  # batch buffers are reused only once dropped: kept ones stay intact
        check_batch(batch, spec, eyes, clip_no)
    expected = brute_windows(LENGTHS, spec) + brute_windows([9, 5], spec)
    assert sorted(seen) == list(range(len(expected))) and seen == loader.order().tolist()


def test_every_field_has_the_documented_shape(store: Path) -> None:
    from egosynth.data.reader import ALL_FIELDS

    loader = WindowLoader(store, length=3, batch_size=2, fields=ALL_FIELDS, eyes=(1,))
    b = next(iter(loader))
    shapes = {k: v.shape for k, v in b.items()}
    assert shapes == {
        "rgb": (2, 3, 1, 3, 4, 6),
        "depth": (2, 3, 1, 4, 6),
        "instance": (2, 3, 1, 4, 6),
        "part": (2, 3, 1, 4, 6),
        "cam_to_world": (2, 3, 1, 4, 4),
        "time": (2, 3),
        "head_to_world": (2, 3, 4, 4),
        "fixation_point": (2, 3, 3),
        "fixation_object": (2, 3),
        "gaze_kind": (2, 3),
        "walking": (2, 3),
        "intrinsics": (2, 1, 3, 3),
        "window": (2,),
        "clip": (2,),
        "source": (2,),
        "start": (2,),
        "clip_id": (2,),
    }
    assert np.all(b["part"] == 2) and np.array_equal(
        b["instance"][:, :, 0, 0, 0], b["start"][:, None] + np.arange(3)
    )


def test_resume_mid_epoch_with_a_new_loader(store: Path) -> None:
    kw = dict(length=2, stride=1, batch_size=3, seed=7, rank=1, world_size=2)
    first = WindowLoader(store, **kw)
    first.set_epoch(3)
    full = [b["window"].tolist() for b in first]
    first.set_epoch(3)  # same epoch: a new pass starts over
    it = iter(first)
    head = [next(it)["window"].tolist() for _ in range(2)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["batches_done"] == 2

    second = WindowLoader(store, **kw)
    second.load_state_dict(state)
    second.set_epoch(3)  # a training loop re-entering the epoch keeps the position
    rest = [b["window"].tolist() for b in second]
    assert head + rest == full
    second.set_epoch(4)
    assert second.batches_done == 0


def test_resume_refuses_another_configuration(store: Path) -> None:
    state = WindowLoader(store, length=2, batch_size=3).state_dict()
    with pytest.raises(EgosynthError, match="batch_size = 3"):
        WindowLoader(store, length=2, batch_size=4).load_state_dict(state)
    with pytest.raises(EgosynthError, match="index"):
        WindowLoader(store, length=3, batch_size=3).load_state_dict(state)


def test_bad_arguments_are_one_line_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(EgosynthError, match=r"fields = .*'colour'"):
        WindowLoader(store, fields=("rgb", "colour"))
    with pytest.raises(EgosynthError, match=r"eyes = \(1, 0\)"):
        WindowLoader(store, eyes=(1, 0))
    with pytest.raises(EgosynthError, match="does not exist"):
        WindowLoader(tmp_path / "missing.zarr")
    with pytest.raises(EgosynthError, match="no complete clip"):
        WindowLoader(store, length=20)
    with pytest.raises(EgosynthError, match="decode_threads = 0"):
        WindowLoader(store, decode_threads=0)


def test_one_loader_config_for_every_adapter(store: Path) -> None:
    """A LoaderConfig and the same settings by name give the same loader; settings by name
    override the config's; an unknown name, or a config of the wrong type, is one line."""
    from egosynth.data import LoaderConfig
    from egosynth.data.torch import WindowDataset, WindowIterableDataset

    cfg = LoaderConfig(length=3, stride=2, batch_size=4, seed=7, fields=["rgb", "time"])
    assert cfg.fields == ("rgb", "time") and cfg == LoaderConfig.of(None, **vars(cfg))
    by_name = WindowLoader(store, length=3, stride=2, batch_size=4, seed=7, fields=("rgb", "time"))
    a, b = WindowLoader(store, cfg), by_name
    assert a.config == b.config and a.order().tolist() == b.order().tolist()
    assert WindowLoader(store, cfg, seed=8).config.seed == 8
    assert WindowLoader(store, cfg, seed=8).order().tolist() != a.order().tolist()
    ds = WindowIterableDataset(store, cfg, rank=0, world_size=1)
    assert ds.loader.config == cfg and len(ds) == len(a)
    assert len(WindowDataset(store, cfg)) == len(a.index)
    with pytest.raises(EgosynthError, match="'lenght' is not a loader setting"):
        WindowLoader(store, cfg, lenght=4)
    with pytest.raises(EgosynthError, match="not a LoaderConfig"):
        WindowLoader(store, {"length": 3})
    with pytest.raises(EgosynthError, match="not a loader setting"):
        cfg.replace(world_size=2)  # placement is each process's own, not configuration


@pytest.mark.usefixtures("store_path")
def test_incomplete_clips_are_not_indexed(tmp_path: Path) -> None:
    from egosynth.store import ClipWriter

    path = tmp_path / "p.zarr"
    prepare(path)
    write_clip(path, 0, 6)
    ClipWriter(path, "c99999", 6, 4, 6, {"scene": "s", "seed": 0, "fps": FPS})  # never completed
    loader = WindowLoader(path, length=2, batch_size=100, shuffle=False)
    assert [c.clip_id for c in loader.index.clips] == ["c00000"]


# --------------------------------------------------------------------------- live mode
@pytest.mark.usefixtures("store_path")
@pytest.mark.parametrize("n_shards", [1, 2])
def test_live_mode_follows_a_writer_and_yields_only_complete_clips(
    tmp_path: Path, n_shards: int
) -> None:
    path = tmp_path / "live.zarr"  # created by the writer thread after the loaders start
    lengths = [9, 6, 11, 4]
    spec = WindowSpec(length=3, stride=2, skip=1)
    errors: list[BaseException] = []

    def writer() -> None:
        from egosynth.store import finalize_store

        try:
            time.sleep(0.1)
            prepare(path)
            ids = []
            for k, n in enumerate(lengths):
                # Slow frame batches: readers poll while this clip is half written.
                ids.append(write_clip(path, k, n, between_batches=lambda: time.sleep(0.03)))
            finalize_store(path, ids)
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        loaders = [
            WindowLoader(
                path,
                length=3,
                stride=2,
                batch_size=2,
                live=True,
                poll_s=0.02,
                idle_timeout_s=30,
                world_size=n_shards,
                rank=r,
            )
            for r in range(n_shards)
        ]
        results: list[list] = [[] for _ in loaders]

        def consume(i: int) -> None:
            for batch in loaders[i]:
                results[i].append(batch)

        readers = [threading.Thread(target=consume, args=(i,)) for i in range(n_shards)]
        for r in readers:
            r.start()
        for r in readers:
            r.join(60)
    finally:
        thread.join(60)
    assert not errors
    clip_no = {(0, f"c{k:05d}"): k for k in range(len(lengths))}
    seen = []
    for batches in results:
        for batch in batches:
            check_batch(batch, spec, (0, 1), clip_no)  # a half-written clip reads zeros: fails
            seen.extend(zip(batch["clip_id"].tolist(), batch["start"].tolist(), strict=True))
    expected = [(f"c{c:05d}", s) for c, s in brute_windows(lengths, spec)]
    assert sorted(seen) == sorted(expected)
    with pytest.raises(TypeError, match="no length"):
        len(loaders[0])
    with pytest.raises(EgosynthError, match="live mode does not resume"):
        loaders[0].load_state_dict(loaders[0].state_dict())


def test_live_mode_opens_a_store_whose_zarr_json_appeared_mid_look(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race: the first open fails (no zarr.json yet), the file appears before the loader
    # looks. The store must count as started, not as "there but unreadable".
    loader = WindowLoader(store, length=3, batch_size=2, live=True)
    real = loader.reader.store
    fails = iter([True])

    def flaky(s: int):
        if next(fails, False):
            raise EgosynthError(f"{store}: is not a Zarr store (no zarr.json)")
        return real(s)

    monkeypatch.setattr(loader.reader, "store", flaky)
    assert loader._started() == [0]
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / "zarr.json").write_text("{}")  # there, and not a clip store: still an error
    with pytest.raises(EgosynthError, match=r"junk\.zarr"):
        WindowLoader(junk, length=3, batch_size=2, live=True)._started()


# --------------------------------------------------------------------------- Ray Data
@pytest.mark.ray
@pytest.mark.slow
def test_ray_dataset_rows_are_the_epoch_order(ray_cluster: str, store: Path, store2: Path) -> None:
    ray = pytest.importorskip("ray")
    from egosynth.data import LoaderConfig
    from egosynth.data.ray import read_windows, windows_from_items

    spec = WindowSpec(length=3, stride=2, skip=2)
    # one configuration for the torch-side loader and both Ray paths
    cfg = LoaderConfig(length=3, stride=2, skip=2, seed=3, batch_size=5)
    loader = WindowLoader([store, store2], cfg)
    loader.set_epoch(1)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = read_windows([store, store2], cfg, epoch=1, rows_per_block=2, override_num_blocks=3)
    batches = list(ds.iter_batches(batch_size=4, batch_format="numpy"))
    # the same rows with the settings given by name instead
    via_items = windows_from_items(
        [store, store2], length=3, stride=2, skip=2, epoch=1, seed=3
    ).take_all()
    ids = [w for b in batches for w in b["window"].tolist()]
    assert ids == loader.order().tolist() == [r["window"] for r in via_items]
    clip_no = {(0, f"c{i:05d}"): i for i in range(len(LENGTHS))}
    clip_no.update({(1, f"c{i:05d}"): i for i in range(2)})
    for b in batches:
        b["clip_id"] = np.array([loader.index.clips[c].clip_id for c in b["clip"]])
        check_batch(b, spec, (0, 1), clip_no)


def test_a_loader_pickles_without_its_handles_and_reads_the_same(store: Path) -> None:
    import pickle

    loader = WindowLoader(store, length=2, batch_size=4, seed=1)
    first = next(iter(loader))
    clone = pickle.loads(pickle.dumps(loader))
    assert len(clone.reader.cache) == 0 and not clone.reader._stores
    again = clone.read_windows(first["window"])
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_core_imports_neither_torch_nor_ray_nor_zarr() -> None:
    import subprocess
    import sys

    code = (
        "import sys, egosynth.data; "
        "print([m for m in ('torch', 'ray', 'zarr') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prefetch_keeps_order_resume_and_errors(store: Path, tmp_path: Path) -> None:
    kw = dict(length=2, stride=1, batch_size=3, seed=4)
    plain = [b["window"].tolist() for b in WindowLoader(store, **kw)]
    ahead = WindowLoader(store, prefetch=2, **kw)
    it = iter(ahead)
    head = [next(it)["window"].tolist() for _ in range(2)]
    it.close()  # stops the reading thread
    assert ahead.batches_done == 2  # counted when handed out, not when read ahead
    rest = [b["window"].tolist() for b in ahead]
    assert head + rest == plain
    broken = WindowLoader(store, prefetch=1, **kw)
    broken.reader.sources = (str(tmp_path / "gone.zarr"),)  # the store vanished mid-training
    with pytest.raises(EgosynthError, match=r"gone\.zarr"):
        next(iter(broken))


def test_cache_keeps_an_epoch_that_fits_and_bypasses_otherwise(store: Path) -> None:
    # Windows own chunks. depth: Blosc chunks (raw rgb frames never enter the cache).
    kw = dict(length=4, stride=4, batch_size=2, seed=1, fields=("depth",))
    roomy = WindowLoader(store, cache_bytes=1 << 20, **kw)
    assert roomy.reader.cache_everything
    first = [b["depth"].copy() for b in roomy]  # first use: straight into the batch
    assert len(roomy.reader.cache) == 0
    roomy.set_epoch(0)  # the same epoch again (a bare new pass would be the next epoch)
    second = [b["depth"].copy() for b in roomy]  # second use: decoded into the cache
    misses = roomy.reader.cache.misses
    assert misses > 0 and len(roomy.reader.cache) == misses
    roomy.set_epoch(0)
    third = [b["depth"].copy() for b in roomy]  # then every chunk comes from the cache
    assert roomy.reader.cache.misses == misses
    for got in (second, third):
        assert all(np.array_equal(a, b) for a, b in zip(first, got, strict=True))
    tight = WindowLoader(store, cache_bytes=100, **kw)  # cannot hold the epoch: straight in
    assert not tight.reader.cache_everything
    got = [b["depth"].copy() for b in tight]
    assert len(tight.reader.cache) == 0
    assert all(np.array_equal(a, b) for a, b in zip(first, got, strict=True))


def _lockstep(
    store: Path, world: int, steps: int, cap: int = 0, **kw: Any
) -> tuple[list[int], dict[str, Any], int]:
    """`world` loaders (ranks 0..world-1) after `steps` batches each, as DDP steps them (at
    most `cap` batches short of a rank's epoch): the windows read, rank 0's state, and the
    number of windows of an epoch."""
    ranks = [WindowLoader(store, rank=r, world_size=world, **kw) for r in range(world)]
    steps = max(0, min(steps, min(len(r) for r in ranks) - cap))
    read: list[int] = []
    for r in ranks:
        it = iter(r)
        for _ in range(steps):
            read += next(it)["window"].tolist()
    return read, ranks[0].state_dict(), len(ranks[0].index)


@settings(max_examples=25, deadline=None)
@given(
    world=st.integers(1, 4),
    new_world=st.integers(1, 8),
    steps=st.integers(0, 6),
    batch_size=st.integers(1, 4),
    drop_last=st.booleans(),
)
def test_elastic_resume_reads_every_window_once(
    order_store: Path, world: int, new_world: int, steps: int, batch_size: int, drop_last: bool
) -> None:
    """A state saved by rank 0 after `steps` lockstep batches on `world` ranks, resumed on
    `new_world` ranks: the epoch's windows are read exactly once (drop_last: at most once,
    and only a tail smaller than one batch per rank is left out)."""
    kw = dict(length=2, stride=1, batch_size=batch_size, seed=3, drop_last=drop_last)
    read, state, n = _lockstep(order_store, world, steps, **kw)
    for r in range(new_world):
        again = WindowLoader(order_store, rank=r, world_size=new_world, **kw)
        again.load_state_dict(state)
        again.set_epoch(state["epoch"])  # the rest of the saved epoch (nothing if it was done)
        read += [w for b in again for w in b["window"].tolist()]
    assert len(read) == len(set(read))  # nothing twice
    if not drop_last:
        assert sorted(read) == list(range(n))  # everything once
    else:
        assert n - len(read) < batch_size * new_world


@pytest.fixture(scope="module")
def order_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of the resume-logic property tests below: they test where a loader starts
    and which windows it takes, not how frames are read, so they run once (not once per
    store path, as the reading tests do)."""
    path = tmp_path_factory.mktemp("order") / "s.zarr"
    write_store(path, LENGTHS, height=4, width=6, chunk_frames=4)
    return path


@settings(max_examples=20, deadline=None)
@given(
    world=st.integers(1, 4),
    built=st.integers(1, 3),
    new_world=st.integers(1, 6),
    steps=st.integers(0, 6),
    drop_last=st.booleans(),
)
def test_a_loader_placed_after_it_was_built_reads_every_window_once(
    order_store: Path, world: int, built: int, new_world: int, steps: int, drop_last: bool
) -> None:
    """Trainers start their process group after the loader is built (Lightning's DDP), so
    the torch adapter `place`s it before each pass. A state saved on `world` ranks, loaded
    into loaders built for a stale layout (rank 0 of `built`) which are then placed as rank r
    of `new_world`: the rest of the epoch is read exactly once."""
    kw = dict(length=2, stride=1, batch_size=2, seed=4, drop_last=drop_last)
    read, state, n = _lockstep(order_store, world, steps, **kw)
    for r in range(new_world):
        again = WindowLoader(order_store, rank=0, world_size=built, **kw)
        again.load_state_dict(state)
        again.place(r, new_world)
        again.set_epoch(state["epoch"])
        read += [w for b in again for w in b["window"].tolist()]
    assert len(read) == len(set(read))
    if not drop_last:
        assert sorted(read) == list(range(n))
    else:
        assert n - len(read) < 2 * max(world, new_world)


@settings(max_examples=25, deadline=None)
@given(
    world=st.integers(1, 4),
    new_world=st.integers(1, 6),
    steps=st.integers(0, 6),
    batch_size=st.integers(1, 3),
    drop_last=st.booleans(),
)
def test_a_trainer_that_fixes_the_length_once_reads_every_epoch_whole_after_an_elastic_resume(
    order_store: Path, world: int, new_world: int, steps: int, batch_size: int, drop_last: bool
) -> None:
    """Lightning's loop, modelled: after loading the state it reads len(loader) ONCE for the
    whole run, restores its batch count (the saved rank's), and ends an epoch when that count
    reaches the length (checked before each fetch) or the loader ends. Resumed on another
    world size, the resumed epoch still reads every window it had left once, and the later
    epochs are whole."""
    kw = dict(length=2, stride=1, batch_size=batch_size, seed=6, drop_last=drop_last)
    read, state, n = _lockstep(order_store, world, steps, cap=1, **kw)  # saved mid-epoch
    later: list[int] = []
    for r in range(new_world):
        again = WindowLoader(order_store, rank=r, world_size=new_world, **kw)
        again.load_state_dict(state)
        length = len(again)  # fixed for the run
        for epoch in range(2):
            count = state["batches_done"] if epoch == 0 else 0
            batches = iter(again)  # a new iterator each epoch, as Lightning's fetcher makes
            while count != length:  # checked before each fetch, as Lightning's `done`
                batch = next(batches, None)
                if batch is None:
                    break
                count += 1
                (read if epoch == 0 else later).extend(batch["window"].tolist())
    tail = batch_size * max(world, new_world) if drop_last else 1
    assert len(read) == len(set(read)) and n - len(read) < tail  # the resumed epoch: once
    ref = WindowLoader(order_store, **kw)
    ref.set_epoch(state["epoch"] + 1)
    used = used_windows(n, batch_size, new_world, drop_last)
    assert sorted(later) == sorted(ref.order()[:used].tolist())  # the next epoch: whole


def test_place_refuses_a_rank_outside_the_world(order_store: Path) -> None:
    loader = WindowLoader(order_store, length=2, stride=1, batch_size=2)
    with pytest.raises(EgosynthError, match="rank 2 of world_size 2"):
        loader.place(2, 2)
    assert (loader.rank, loader.world_size) == (0, 1)


def test_a_state_saved_at_the_end_of_an_epoch_resumes_on_other_ranks_at_the_next(
    order_store: Path,
) -> None:
    """Every window of epoch 0 consumed (drop_last: none left for any rank of the new
    layout): the next pass on 3 ranks is epoch 1, not an empty pass that never advances."""
    kw = dict(length=2, stride=1, batch_size=4, seed=3, drop_last=True)
    first = WindowLoader(order_store, rank=0, world_size=1, **kw)
    for _ in first:
        pass
    state = first.state_dict()
    for r in range(3):
        again = WindowLoader(order_store, rank=r, world_size=3, **kw)
        again.load_state_dict(state)
        batches = list(again)
        assert again.epoch == 1 and len(batches) == len(again) > 0
