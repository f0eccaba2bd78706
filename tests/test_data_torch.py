"""egosynth.data.torch: real DataLoader workers, ranks, resume, tensor layout, map-style."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from egosynth.data import WindowLoader  # noqa: E402
from egosynth.data.synthetic import write_store  # noqa: E402
from egosynth.data.torch import (  # noqa: E402
    EpochSampler,
    WindowDataLoader,
    WindowDataset,
    WindowIterableDataset,
)
from egosynth.errors import EgosynthError  # noqa: E402

LENGTHS = [10, 7, 13]
KW = dict(length=3, stride=2, skip=1, batch_size=2, seed=5, fields=("rgb", "instance", "time"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("torchdata") / "s.zarr"
    write_store(path, LENGTHS, height=4, width=6, chunk_frames=4)
    return path


def windows_of(loader) -> list[list[int]]:
    return [b["window"].tolist() for b in loader]


def test_dataloader_workers_and_ranks_read_every_window_once_in_global_order(store: Path) -> None:
    order = WindowLoader(store, **KW).order().tolist()
    per_rank = {}
    for workers in (0, 2):
        for rank in range(2):
            ds = WindowIterableDataset(store, rank=rank, world_size=2, **KW)
            got = windows_of(WindowDataLoader(ds, num_workers=workers))
            assert len(got) == len(ds)
            if workers == 0:
                per_rank[rank] = got
            else:  # the same batches in the same order as without workers
                assert got == per_rank[rank]
    # Global batch g belongs to rank g % 2: interleaving the ranks rebuilds the global order.
    merged = [
        w for pair in zip(per_rank[0], per_rank[1] + [[]], strict=False) for b in pair for w in b
    ]
    assert merged == order


def test_resume_after_k_batches_with_other_worker_count(store: Path) -> None:
    ds = WindowIterableDataset(store, **KW)
    loader = WindowDataLoader(ds, num_workers=2)
    loader.set_epoch(1)
    full = windows_of(loader)
    loader.set_epoch(1)  # the same epoch again (a pass with no set_epoch is the next one)
    it = iter(loader)
    head = [next(it)["window"].tolist() for _ in range(3)]
    state = loader.state_dict()
    del it
    resumed = WindowDataLoader(WindowIterableDataset(store, **KW), num_workers=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert head + windows_of(resumed) == full


def test_tensor_layout_and_values(store: Path) -> None:
    ds = WindowIterableDataset(store, eyes=(1,), **KW)
    batch = next(iter(WindowDataLoader(ds)))
    rgb, inst = batch["rgb"], batch["instance"]
    assert rgb.dtype == torch.uint8 and tuple(rgb.shape) == (2, 3, 1, 3, 4, 6)
    assert inst.dtype == torch.int32 and tuple(inst.shape) == (2, 3, 1, 4, 6)
    frames = batch["start"][:, None] + torch.arange(3)[None]
    # Synthetic pattern: rgb channel 0 and instance carry the frame number, channel 2 the eye.
    assert torch.equal(rgb[:, :, 0, 0, 0, 0], frames.to(torch.uint8))
    assert torch.equal(inst[:, :, 0, 0, 0], frames.to(torch.int32))
    assert torch.all(rgb[:, :, 0, 2, 0, 0] == 128)
    assert torch.allclose(batch["time"], frames.double() / 10.0)
    # every value a tensor (trainers gather and broadcast batches); ids by the clip number
    assert all(isinstance(v, torch.Tensor) for v in batch.values()), batch.keys()
    index = ds.loader.index
    assert ds.clip_ids(batch) == [index.clips[c].clip_id for c in batch["clip"].tolist()]
    # A model sees (N, 3, H, W) frames with a free reshape (memory is channels-last).
    x = rgb.flatten(0, 2).float()
    assert x.shape == (6, 3, 4, 6) and x.is_contiguous(memory_format=torch.channels_last)


def test_map_style_dataset_matches_the_iterable_one(store: Path) -> None:
    fields = KW["fields"]
    ds = WindowDataset(store, length=3, stride=2, skip=1, fields=fields)
    assert len(ds) == len(WindowLoader(store, **KW).index)
    sampler = EpochSampler(ds, seed=5, rank=1, world_size=2)
    sampler.set_epoch(2)
    dl = torch.utils.data.DataLoader(ds, batch_size=3, sampler=sampler, num_workers=0)
    ids = [w for b in dl for w in b["window"].tolist()]
    assert len(ids) == len(sampler)
    it = WindowLoader(store, **KW)
    it.set_epoch(2)
    assert ids == it.order()[1::2].tolist()
    item = ds[ids[0]]
    assert tuple(item["rgb"].shape) == (3, 2, 3, 4, 6)
    assert torch.equal(item["instance"][:, 0, 0, 0], item["start"] + torch.arange(3))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_batching_arguments_are_refused(store: Path) -> None:
    with pytest.raises(EgosynthError, match="batch_size = 4"):
        WindowDataLoader(WindowIterableDataset(store, **KW), batch_size=4)


def test_rank_and_world_come_from_torchrun_environment(store: Path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = WindowIterableDataset(store, **KW)
    assert (ds.loader.rank, ds.loader.world_size) == (1, 2)
    first = next(iter(WindowDataLoader(ds)))["window"].tolist()
    assert first == ds.loader.order()[2:4].tolist()  # global batch 1 of size 2


# --------------------------------------------------------------------------- a real DataLoader
def _flat(batches: list[list[int]]) -> list[int]:
    return [w for b in batches for w in b]


@pytest.mark.parametrize("persistent", [False, True])
def test_each_pass_is_the_next_epoch_also_with_persistent_workers(
    store: Path, persistent: bool
) -> None:
    """Without set_epoch every pass advances the epoch: a new order each time, every window
    once per pass, equal to the orders set_epoch(0), set_epoch(1), ... give."""
    from torch.utils.data import DataLoader

    loader = WindowDataLoader(
        WindowIterableDataset(store, **KW), num_workers=2, persistent_workers=persistent
    )
    assert isinstance(loader, DataLoader)
    passes = [windows_of(loader) for _ in range(3)]
    reference = WindowLoader(store, **KW)
    n = len(reference.index)
    for epoch, got in enumerate(passes):
        assert sorted(_flat(got)) == list(range(n))
        reference.set_epoch(epoch)
        assert _flat(got) == reference.order().tolist()
    assert passes[0] != passes[1] != passes[2]
    assert loader.state_dict()["epoch"] == 2


def test_live_batches_keep_their_clip_ids(store: Path) -> None:
    """Live mode has no clip numbering (`clip` is -1): its torch batches keep `clip_id`."""
    ds = WindowIterableDataset(store, length=3, stride=2, batch_size=2, live=True,
                               poll_s=0.05, idle_timeout_s=5)  # fmt: skip
    seen = []
    for batch in WindowDataLoader(ds):
        assert (batch["clip"] == -1).all()
        assert ds.clip_ids(batch) == batch["clip_id"]
        seen += [(c, int(s)) for c, s in zip(batch["clip_id"], batch["start"], strict=True)]
    ref = WindowLoader(store, length=3, stride=2, batch_size=2, shuffle=False)
    want = [(i.clip_id, s) for i in ref.index.clips for s in range(0, i.n_frames - 2, 2)]
    assert sorted(seen) == sorted(want)


def test_prefetch_without_workers_keeps_order_and_resume(store: Path) -> None:
    """prefetch=2 with no DataLoader workers reads ahead in a thread: the same batches in the
    same order, and a state saved mid-epoch (batches read ahead but not handed out are not
    consumed) resumes exactly; stopping early stops the thread."""
    import threading

    def windows(loader: WindowDataLoader, stop: int | None = None) -> list[int]:
        out: list[int] = []
        for i, batch in enumerate(loader):
            out += batch["window"].tolist()
            if i + 1 == stop:
                break
        return out

    plain = windows(WindowDataLoader(WindowIterableDataset(store, **KW)))
    ahead = WindowDataLoader(WindowIterableDataset(store, prefetch=2, **KW))
    assert windows(ahead) == plain
    again = WindowDataLoader(WindowIterableDataset(store, prefetch=2, **KW))
    again.set_epoch(0)
    head = windows(again, stop=3)
    state = again.state_dict()
    assert not [t for t in threading.enumerate() if t.name == "egosynth-prefetch"]
    resumed = WindowDataLoader(WindowIterableDataset(store, prefetch=2, **KW))
    resumed.load_state_dict(state)
    assert head + windows(resumed) == plain
