"""Ray Data adapter: a Dataset with one row per window (egosynth.data's only ray importer).

Rows carry the fields of egosynth.data.core's layout without the batch axis (rgb (T, E, 3, H, W)
uint8, made contiguous for Arrow; instance int32 as in egosynth.data.torch), plus window / clip /
source / start (`clip` indexes `WindowDatasource.loader.index.clips` for the clip id). The rows
of an epoch are that epoch's (seed, epoch) global order; each read task reads a contiguous run of
it through egosynth's reader (not `ray.data.read_zarr`, which reads only Zarr v2).

    >>> ds = read_windows("clips.zarr", LoaderConfig(length=8, stride=4, seed=0), epoch=0)
    >>> for batch in ds.iter_torch_batches(batch_size=32): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray.data
from ray.data.block import Block, BlockAccessor, BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from egosynth.data.core import LoaderConfig, WindowLoader
from egosynth.errors import EgosynthError


def _rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray columns: contiguous arrays; instance as int32 (as in egosynth.data.torch); no
    clip_id strings, which `iter_torch_batches` cannot convert (`clip` + `source` name the clip).
    """
    out = {k: np.ascontiguousarray(v) for k, v in batch.items() if k != "clip_id"}
    if "instance" in out:
        out["instance"] = out["instance"].astype(np.int32)
    return out


def _read_run(loader: WindowLoader, ids: np.ndarray, rows_per_block: int) -> Iterator[Block]:
    """Read windows `ids` (in order) into Arrow blocks of `rows_per_block` rows."""
    for lo in range(0, len(ids), rows_per_block):
        rows = _rows(loader.read_windows(ids[lo : lo + rows_per_block]))
        yield BlockAccessor.batch_to_block(rows)


class WindowDatasource(Datasource):
    """Windows of one epoch of egosynth clip stores, in the (seed, epoch) global order."""

    def __init__(
        self,
        sources: str | Path | Sequence[str | Path],
        config: LoaderConfig | None = None,
        *,
        epoch: int = 0,
        rows_per_block: int = 64,
        **settings: Any,
    ) -> None:
        cfg = LoaderConfig.of(config, **settings)
        if cfg.live:
            raise EgosynthError("read_windows: live = True is not supported (one epoch's rows)")
        if rows_per_block < 1:
            raise EgosynthError(f"read_windows: rows_per_block = {rows_per_block!r}: must be >= 1")
        # one row per window: the config's batch_size is for the torch adapters (Ray Data
        # batches rows with iter_batches / map_batches), and Ray splits rows across workers
        self.loader = WindowLoader(sources, cfg.replace(batch_size=1), rank=0, world_size=1)
        self.loader.set_epoch(epoch)
        self.order = self.loader.order()
        self.rows_per_block = rows_per_block

    def get_name(self) -> str:
        return "EgosynthWindows"

    def _row_bytes(self) -> int:
        """Bytes of one window, from one window actually read (read once, then cached)."""
        if not hasattr(self, "_row_nbytes"):
            sample = self.loader.read_windows(self.order[:1])
            self._row_nbytes = sum(v.nbytes for v in sample.values())
        return self._row_nbytes

    def estimate_inmemory_data_size(self) -> int | None:
        return self._row_bytes() * len(self.order)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        n = len(self.order)
        parts = [p for p in np.array_split(self.order, max(1, min(parallelism, n))) if len(p)]
        row_bytes = self._row_bytes()
        tasks = []
        for ids in parts:
            meta = BlockMetadata(
                num_rows=len(ids),
                size_bytes=row_bytes * len(ids),
                exec_stats=None,
                input_files=None,
            )
            fn = partial(_read_run, self.loader, ids, self.rows_per_block)
            tasks.append(ReadTask(fn, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def read_windows(
    sources: str | Path | Sequence[str | Path],
    config: LoaderConfig | None = None,
    *,
    epoch: int = 0,
    rows_per_block: int = 64,
    override_num_blocks: int | None = None,
    ray_args: dict[str, Any] | None = None,
    **settings: Any,
) -> ray.data.Dataset:
    """A Ray Dataset with one row per window of one epoch (see the module doc): the windows
    `config` (plus any LoaderConfig setting by name) gives a torch loader, in its order.
    `ray_args` go to ray.data.read_datasource."""
    cfg = LoaderConfig.of(config, **settings)
    if config is None and "decode_threads" not in settings:
        cfg = cfg.replace(decode_threads=1)  # Ray runs one read task per CPU already
    source = WindowDatasource(sources, cfg, epoch=epoch, rows_per_block=rows_per_block)
    return ray.data.read_datasource(
        source, override_num_blocks=override_num_blocks, **(ray_args or {})
    )


def windows_from_items(
    sources: str | Path | Sequence[str | Path],
    config: LoaderConfig | None = None,
    *,
    epoch: int = 0,
    **settings: Any,
) -> ray.data.Dataset:
    """The same rows via `ray.data.from_items` + `map_batches` (ids first, then reads)."""
    cfg = LoaderConfig.of(config, **settings).replace(batch_size=1)
    loader = WindowLoader(sources, cfg, rank=0, world_size=1)
    loader.set_epoch(epoch)
    items: Iterable[dict[str, int]] = ({"window": int(i)} for i in loader.order())

    def read(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _rows(loader.read_windows(batch["window"]))

    return ray.data.from_items(list(items)).map_batches(read, batch_format="numpy")
