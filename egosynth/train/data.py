"""Windows of frames from a clip store, for the trainer and its diagnostics.

A small, deterministic, in-memory reader (clips are read whole once through
`egosynth.store.ClipStore`), used when the streaming loader (`egosynth.data`) is not asked for
and for the probe sets. Batches are dicts:

    rgb       (B, T, E, H, W, 3) uint8   as stored (channels last, eye 0 = left)
    instance  (B, T, E, H, W)    int32   (0 = background)
    scene     list of B scene names; clip: list of B clip ids; start: list of B first frames

Windows are shuffled per epoch from (seed, epoch) and sharded by DDP rank (window i goes to
rank i % world), so every rank sees a disjoint, equally long share.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from egosynth.errors import EgosynthError
from egosynth.plan import split_clips  # noqa: F401  (re-exported: the trainer's split)
from egosynth.store.schema import LabelTable

if TYPE_CHECKING:
    from egosynth.data.core import LoaderConfig


def open_store(path: str | Path):
    from egosynth.store import ClipStore  # zarr stays behind the store module

    if not Path(path).exists() and "://" not in str(path):
        raise EgosynthError(f"{path}: store not found (make one with `egosynth render`)")
    return ClipStore(path)


@dataclass
class CategoryTable:
    """Object categories of a store: names, and per scene instance id -> category index."""

    names: list[str]
    by_scene: dict[str, dict[int, int]]

    @classmethod
    def from_store(cls, store) -> CategoryTable:
        """From the label table each scene's first clip records (`Clip.labels`)."""
        tables: dict[str, LabelTable] = {}
        for clip in store:
            if clip.scene not in tables:
                tables[clip.scene] = clip.labels
        names = sorted({c for table in tables.values() for c in table.categories})
        index = {n: i for i, n in enumerate(names)}
        by_scene = {
            s: {iid: index[cat] for iid, cat in table.category_of().items()}
            for s, table in tables.items()
        }
        return cls(names, by_scene)


class StoreWindows:
    """Iterable of batches of windows (see module doc). Call `set_epoch` to reshuffle."""

    def __init__(
        self,
        path: str | Path,
        clip_ids: Sequence[str] | None = None,
        window: int = 8,
        stride: int = 4,
        batch_size: int = 8,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
    ) -> None:
        store = open_store(path)
        self.clip_ids = list(clip_ids) if clip_ids is not None else store.clip_ids()
        if not self.clip_ids:
            raise EgosynthError(f"{path}: no complete clips to train on")
        self.window, self.batch_size, self.seed = window, batch_size, seed
        self.shuffle, self.rank, self.world, self.drop_last = shuffle, rank, world, drop_last
        self.epoch = 0
        self.rgb: dict[str, np.ndarray] = {}
        self.instance: dict[str, np.ndarray] = {}
        self.scene: dict[str, str] = {}
        self.windows: list[tuple[str, int]] = []
        for cid in self.clip_ids:
            clip = store.clip(cid)
            arrays = clip.read(names=["rgb", "instance"])
            self.rgb[cid] = arrays["rgb"]
            self.instance[cid] = arrays["instance"].astype(np.int32)
            self.scene[cid] = clip.scene
            if clip.n_frames < window:
                raise EgosynthError(
                    f"{path}: clip {cid} has {clip.n_frames} frames, fewer than window = {window}"
                )
            self.windows += [(cid, s) for s in range(0, clip.n_frames - window + 1, stride)]
        if len(self.windows) // world < (batch_size if drop_last else 1):
            raise EgosynthError(
                f"{path}: {len(self.windows)} windows over {world} ranks cannot fill one batch "
                f"of batch_size = {batch_size}"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[tuple[str, int]]:
        order = list(self.windows)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        order = self._order()
        for b in range(len(self)):
            items = order[b * self.batch_size : (b + 1) * self.batch_size]
            t = self.window
            yield {
                "rgb": torch.from_numpy(np.stack([self.rgb[c][s : s + t] for c, s in items])),
                "instance": torch.from_numpy(
                    np.stack([self.instance[c][s : s + t] for c, s in items])
                ),
                "scene": [self.scene[c] for c, _ in items],
                "clip": [c for c, _ in items],
                "start": [s for _, s in items],
            }


def batch_categories(batch: dict, table: CategoryTable) -> torch.Tensor:
    """(B, T) category index of each frame's dominant object over both eyes (-1 = none)."""
    from egosynth.train.diagnostics import frame_categories

    inst = batch["instance"].numpy()
    b, t = inst.shape[:2]
    out = np.full((b, t), -1, np.int64)
    for i, scene in enumerate(batch["scene"]):
        out[i] = frame_categories(inst[i].reshape(t, -1), table.by_scene.get(scene, {}))
    return torch.from_numpy(out)


MIN_OBJECT_FRACTION = 30 / (128 * 96)  # least share of a frame an object needs to be probed


@dataclass
class ProbeData:
    """Held-out diagnostics inputs: windows (N, T, E, H, W, 3) uint8 with per-frame category
    (N, T) (-1 = no object) of training clips and held-out clips (eta, rank, next-frame error),
    and object crops (M, E, h, w, 3) uint8 with their categories (M,) of training clips (to fit
    the linear probe) and held-out clips (to score it). Without crops the probe falls back to
    whole frames labelled by their dominant object."""

    train_rgb: torch.Tensor
    train_cat: torch.Tensor
    heldout_rgb: torch.Tensor
    heldout_cat: torch.Tensor
    train_crops: torch.Tensor | None = None
    train_crop_cat: torch.Tensor | None = None
    heldout_crops: torch.Tensor | None = None
    heldout_crop_cat: torch.Tensor | None = None


def probe_from_store(
    path: str | Path,
    train_ids: list[str],
    held_ids: list[str],
    window: int,
    limit: int,
    size: tuple[int, int] | None = None,
    max_crops: int = 2000,
) -> ProbeData | None:
    """Diagnostics data of the training and held-out clips: up to `limit` non-overlapping
    windows per split, spread evenly over its clips and labelled by each frame's dominant
    object; and object crops (`diagnostics.object_crops`, resized to `size` (w, h), the
    store's frame size when None) of every frame of the split's clips, at most `max_crops`
    per split (evenly spaced). None when there is no held-out clip."""
    from egosynth.train.diagnostics import object_crops

    if not held_ids or not train_ids:
        return None
    table = CategoryTable.from_store(open_store(path))

    def collect(ids: list[str]) -> tuple[torch.Tensor, ...]:
        src = StoreWindows(path, ids, window, window, 1, shuffle=False, drop_last=False)
        batches = list(src)
        # Evenly spaced windows: the first `limit` in order would all come from one clip.
        keep = np.unique(np.linspace(0, len(batches) - 1, min(limit, len(batches))).round())
        rgb = torch.cat([batches[int(i)]["rgb"] for i in keep])
        cat = torch.cat([batch_categories(batches[int(i)], table) for i in keep])
        crops, labels = [], []
        for cid in ids:
            first = src.rgb[cid]
            wh = size or (first.shape[-2], first.shape[-3])
            ids_to_cat = table.by_scene.get(src.scene[cid], {})
            # 30 pixels of a 128x96 frame: an object big enough to recognise, at any size.
            least = max(2, round(MIN_OBJECT_FRACTION * first.shape[-3] * first.shape[-2]))
            c, y = object_crops(first, src.instance[cid], ids_to_cat, wh, min_pixels=least)
            crops.append(c)
            labels.append(y)
        all_crops, all_labels = np.concatenate(crops), np.concatenate(labels)
        if len(all_labels) > max_crops:
            pick = np.linspace(0, len(all_labels) - 1, max_crops).round().astype(int)
            all_crops, all_labels = all_crops[pick], all_labels[pick]
        return rgb, cat, torch.from_numpy(all_crops), torch.from_numpy(all_labels)

    tr, tc, tcr, tcy = collect(train_ids)
    hr, hc, hcr, hcy = collect(held_ids)
    if len(hcy) == 0 or len(torch.unique(tcy)) < 2:  # too few objects: whole-frame probe
        return ProbeData(tr, tc, hr, hc)
    return ProbeData(tr, tc, hr, hc, tcr, tcy, hcr, hcy)


def store_loader(
    store: str | Path,
    clip_ids: Sequence[str],
    device: torch.device,
    config: LoaderConfig,
    workers: int = 0,
) -> Any:
    """The streaming loader (egosynth.data) over `clip_ids` of the store with `config` (a
    LoaderConfig; rgb and, for foveal training, the gaze fields): sharded by rank (from
    torchrun's environment), resumable through its state_dict, full batches only (batch
    statistics, BatchNorm and SFA constraints, want them)."""
    from egosynth.data.index import ClipInfo
    from egosynth.data.torch import WindowDataLoader, WindowIterableDataset

    opened = open_store(store)
    clips = [ClipInfo(0, cid, opened.clip(cid).n_frames) for cid in clip_ids]
    dataset = WindowIterableDataset(store, config, drop_last=True, clips=clips)
    if len(dataset) == 0:
        c = dataset.loader.config
        raise EgosynthError(
            f"{store}: the training clips give no full batch of --batch-size {c.batch_size} "
            f"windows (--window {c.length}, --stride {c.stride})"
        )
    return WindowDataLoader(dataset, num_workers=workers, pin_memory=device.type == "cuda")
