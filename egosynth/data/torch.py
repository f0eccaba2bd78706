"""PyTorch datasets over egosynth clip stores (the only egosynth.data module importing torch).

* `WindowIterableDataset` + `WindowDataLoader`: the streaming path. The dataset yields whole
  batches (DataLoader `batch_size=None`), sharded by rank and DataLoader worker so every window
  of an epoch is read once; `WindowDataLoader` counts the batches it hands out, which is all
  `state_dict()` needs to resume mid-epoch, with any number of workers.
* `WindowDataset` + `EpochSampler`: map-style random access to single windows.

Tensor layout is the numpy layout of egosynth.data.core (rgb (B, T, E, 3, H, W) uint8, ...),
except `instance`, which becomes int32 (torch's uint16 supports few operations). Every value
is a tensor: `clip_id` (strings) is left out, so that trainers that gather, concatenate or
broadcast batches between processes (accelerate's dispatcher does) take them as they are; the
`clip` tensor names the clip, and `clip_ids(batch)` gives the ids. Only live mode, which has
no clip numbering, keeps `clip_id` (a list of str).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from egosynth.data.core import LoaderConfig, WindowLoader, prefetched
from egosynth.data.index import Shard, env_rank_world, epoch_order, used_windows
from egosynth.errors import EgosynthError


def to_torch(batch: Mapping[str, np.ndarray], strings: bool = False) -> dict[str, Any]:
    """numpy batch -> tensors without copies (strides kept), except uint16 -> int32; string
    arrays (clip_id) become lists with `strings`, else are left out."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if value.dtype.kind == "U":
            if strings:
                out[key] = value.tolist()
        elif value.dtype == np.uint16:
            out[key] = torch.from_numpy(value.astype(np.int32))
        else:
            out[key] = torch.from_numpy(value)
    return out


def _clip_ids(index: Any, batch: Mapping[str, Any]) -> list[str]:
    """Clip ids of a batch's (or one item's) windows: from `clip_id` where the batch carries
    it (live mode), else by the `clip` numbers in the loader's index."""
    if "clip_id" in batch:
        ids = batch["clip_id"]
        return [ids] if isinstance(ids, str) else list(ids)
    return [index.clips[c].clip_id for c in torch.as_tensor(batch["clip"]).reshape(-1).tolist()]


def _rank_world(
    rank: int | None, world_size: int | None, fill_env: bool = False
) -> dict[str, int | None]:
    """rank and world_size: as given, else from an initialised torch.distributed group, else
    (`fill_env`) the environment's (left None otherwise: the loader reads it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if rank is None:
            rank = torch.distributed.get_rank()
        if world_size is None:
            world_size = torch.distributed.get_world_size()
    if fill_env and (rank is None or world_size is None):
        env_rank, env_world = env_rank_world()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    return {"rank": rank, "world_size": world_size}


class WindowIterableDataset(IterableDataset):
    """Batches of windows for this rank, split across DataLoader workers.

    Takes a LoaderConfig (and/or its settings by name: length, stride, batch_size, seed, ...)
    and this process's rank / world_size (default: torch.distributed's, else the
    environment's, asked again before every pass: see `place`). Use it with
    `WindowDataLoader` (or a DataLoader with `batch_size=None`).
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path] | None = None,
        config: LoaderConfig | None = None,
        *,
        loader: WindowLoader | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        if loader is None:
            if sources is None:
                raise EgosynthError("WindowIterableDataset: give sources or a WindowLoader")
            loader = WindowLoader(sources, config, **_rank_world(rank, world_size), **settings)
        self.loader = loader
        # (epoch, offset, batches_done, rank, world_size) in shared memory: DataLoader
        # workers hold a copy of the loader made when they started (persistent workers:
        # once), so each pass tells them here where it starts and which rank they serve.
        self.position = torch.zeros(5, dtype=torch.int64).share_memory_()
        self.publish_position()

    def place(self) -> None:
        """Ask again where this process sits: the rank and world size given, else those of
        torch.distributed's group, else the environment's. Trainers often start the group
        after the loader was built (Lightning's DDP does, in `fit`), so this runs before
        every pass and length, not once at construction."""
        rank, world = self.loader.requested
        self.loader.place(**_rank_world(rank, world, fill_env=True))

    def publish_position(self) -> None:
        """Make the loader's current position the one workers start their next pass at."""
        if get_worker_info() is None:  # in the main process: place it first
            self.place()
        state = self.loader
        self.position[:] = torch.tensor(
            [state.epoch, state.offset, state.batches_done, state.rank, state.world_size]
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:  # a worker's copy: take the pass's position from the main process
            epoch, offset, done, rank, world = (int(v) for v in self.position.tolist())
            self.loader.epoch, self.loader.offset, self.loader.batches_done = epoch, offset, done
            self.loader.rank, self.loader.world_size = rank, world
        else:
            self.place()
        reader = self.loader.reader
        if info is not None and reader.decode_threads is None:
            # Worker processes share the CPUs: split the decode threads between them (this
            # is the worker's own copy of the loader).
            reader.decode_threads = max(1, reader.threads() // num_workers)
        source = self.loader.batches(worker, num_workers)
        if info is None and self.loader.prefetch:
            # no workers: read `prefetch` batches ahead in a thread, overlapping the step (the
            # DataLoader counts batches as it hands them out, so resume is unchanged)
            source = prefetched(source, self.loader.prefetch)
        try:
            for batch in source:
                yield to_torch(batch, strings=self.loader.live)
        finally:
            source.close()  # stops a prefetch thread now, not at garbage collection

    def __len__(self) -> int:
        if get_worker_info() is None:
            self.place()
        return len(self.loader)

    def clip_ids(self, batch: Mapping[str, Any]) -> list[str]:
        """The clip id of each window of `batch` (batches hold the `clip` number only)."""
        return _clip_ids(self.loader.index, batch)

    def set_epoch(self, epoch: int) -> None:
        # published at once: a DataLoader that is not a WindowDataLoader (accelerate rebuilds
        # the one it is given) calls set_epoch and then starts its workers, which read it here
        self.loader.set_epoch(epoch)
        self.publish_position()


def _from_worker(exc: EgosynthError) -> EgosynthError:
    """An EgosynthError as its own line: torch re-raises a worker's exception with the
    worker's traceback as the message ("Caught EgosynthError in DataLoader worker process 0.
    Original Traceback ..."); the user's line is what follows the last "<type>: "."""
    text = str(exc)
    head, sep, tail = text.rpartition(f"{type(exc).__name__}: ")
    if sep and head.startswith(f"Caught {type(exc).__name__} in DataLoader worker"):
        return EgosynthError(tail)
    return exc


class WindowDataLoader(DataLoader):
    """A torch DataLoader over a WindowIterableDataset that advances epochs and resumes.

    >>> ds = WindowIterableDataset("clips.zarr", length=8, stride=4, batch_size=32, seed=0)
    >>> loader = WindowDataLoader(ds, num_workers=4, pin_memory=True, persistent_workers=True)
    >>> loader.load_state_dict(ckpt["loader"])          # optional: resume mid-epoch
    >>> for epoch in range(n_epochs):
    ...     for batch in loader:                        # each pass is the next epoch
    ...         ...
    ...         ckpt = {"loader": loader.state_dict(), ...}

    Each new pass after a finished one is the next epoch (a trainer that never calls
    `set_epoch`, such as Lightning with an iterable dataset, still gets a new order every
    epoch); `set_epoch(e)` picks one. The state is global: saved on any rank, it resumes
    on any rank, with any number of workers and (ranks stepping together) any world size.
    """

    def __init__(self, dataset: WindowIterableDataset, **dataloader_kwargs: Any) -> None:
        for bad in ("batch_size", "shuffle", "sampler", "batch_sampler"):
            if dataloader_kwargs.get(bad):
                raise EgosynthError(
                    f"WindowDataLoader: {bad} = {dataloader_kwargs[bad]!r}: batching, "
                    "shuffling and sharding are the dataset's (WindowLoader arguments)"
                )
            dataloader_kwargs.pop(bad, None)
        super().__init__(dataset, batch_size=None, **dataloader_kwargs)

    @property
    def loader(self) -> WindowLoader:
        return self.dataset.loader

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        state = self.loader
        self.dataset.place()
        state.begin_pass()
        self.dataset.publish_position()
        try:
            for batch in super().__iter__():
                state.batches_done += 1
                yield batch
        except EgosynthError as exc:
            raise _from_worker(exc) from None

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def clip_ids(self, batch: Mapping[str, Any]) -> list[str]:
        """The clip id of each window of `batch` (batches hold the `clip` number only)."""
        return self.dataset.clip_ids(batch)

    def state_dict(self) -> dict[str, Any]:
        self.dataset.place()
        return self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.place()
        self.loader.load_state_dict(state)


class WindowDataset(Dataset):
    """Map-style: item i is window i of the index (clip-major), as tensors without a batch axis.

    Pair it with `EpochSampler` (or DistributedSampler) and a DataLoader with a batch_size.
    """

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        config: LoaderConfig | None = None,
        **settings: Any,
    ) -> None:
        for bad in ("batch_size", "live", "rank", "world_size"):
            if bad in settings:
                raise EgosynthError(f"WindowDataset: {bad} is not an argument of a map dataset")
        cfg = LoaderConfig.of(config, **settings)
        if cfg.live:
            raise EgosynthError("WindowDataset: live = True: a map dataset needs a fixed length")
        # item i is window i: the sampler orders and batches (a config's shuffle and
        # batch_size are the sampler's and the DataLoader's business here)
        self.windows = WindowLoader(sources, cfg.replace(batch_size=1, shuffle=False))

    def __len__(self) -> int:
        return len(self.windows.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range [0, {len(self)})")
        batch = self.windows.read_windows(np.array([i % len(self)]))
        return {k: v[0] for k, v in to_torch(batch).items()}

    def clip_ids(self, batch: Mapping[str, Any]) -> list[str]:
        """The clip id of each window of a collated batch (or of one item)."""
        return _clip_ids(self.windows.index, batch)


class EpochSampler(Sampler[int]):
    """Window ids in the (seed, epoch) order of egosynth.data.epoch_order, this rank's share.

    Rank r of R takes positions r, r + R, ... of the global order (drop_last: the same number
    on every rank, as DDP needs).
    """

    def __init__(
        self,
        dataset: WindowDataset,
        *,
        seed: int = 0,
        shuffle: bool = True,
        block: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.requested = (rank, world_size)
        self.place()  # validates now; asked again before each pass (see `place`)
        self.index = dataset.windows.index
        self.seed, self.shuffle, self.block, self.drop_last = seed, shuffle, block, drop_last
        self.epoch = 0

    def place(self) -> None:
        """Rank and world size: as given, else torch.distributed's, else the environment's;
        asked again before each pass (trainers may start the process group after this
        sampler was built)."""
        placed = _rank_world(*self.requested, fill_env=True)
        self.rank, self.world_size = placed["rank"], placed["world_size"]
        Shard(self.rank, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _n_used(self) -> int:
        return used_windows(len(self.index), 1, self.world_size, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        self.place()
        order = epoch_order(self.index, self.seed, self.epoch, self.shuffle, self.block)
        return iter(order[self.rank : self._n_used() : self.world_size].tolist())

    def __len__(self) -> int:
        self.place()
        return len(range(self.rank, self._n_used(), self.world_size))
