"""Windows of frames from a clip store, for the trainer and its diagnostics.

Everything here reads through the streaming loader (`egosynth.data`), in its one batch layout
(docs/loader.md): `store_loader` feeds the trainer, `probe_from_store` collects the held-out
diagnostics windows (rgb (N, T, E, 3, H, W) uint8) and, from whole clips, object crops.
`CategoryTable` maps each scene's instance ids to object categories from the store's label
table.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def batch_categories(instance: Any, scenes: Sequence[str], table: CategoryTable) -> torch.Tensor:
    """(B, T) category index of each frame's dominant object over both eyes (-1 = none), from
    instance masks (B, T, E, H, W) of windows of the given scenes."""
    from egosynth.train.diagnostics import frame_categories

    inst = np.asarray(instance)
    b, t = inst.shape[:2]
    out = np.full((b, t), -1, np.int64)
    for i, scene in enumerate(scenes):
        out[i] = frame_categories(inst[i].reshape(t, -1), table.by_scene.get(scene, {}))
    return torch.from_numpy(out)


MIN_OBJECT_FRACTION = 30 / (128 * 96)  # least share of a frame an object needs to be probed


@dataclass
class ProbeData:
    """Held-out diagnostics inputs: windows (N, T, E, 3, H, W) uint8 with per-frame category
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
    store = open_store(path)
    table = CategoryTable.from_store(store)

    def collect(ids: list[str]) -> tuple[torch.Tensor, ...]:
        from egosynth.data.core import LoaderConfig, WindowLoader
        from egosynth.data.index import ClipInfo

        clips = [store.clip(cid) for cid in ids]
        # The trainer's reader and layout: non-overlapping windows in clip order.
        windows = WindowLoader(
            path,
            LoaderConfig(length=window, stride=window, batch_size=1, shuffle=False,
                         drop_last=False, fields=("rgb", "instance")),
            clips=[ClipInfo(0, c.clip_id, c.n_frames) for c in clips],
        )  # fmt: skip
        n = len(windows.index)
        if n == 0:
            raise EgosynthError(f"{path}: clips {ids} have fewer than {window} frames")
        # Evenly spaced windows: the first `limit` in order would all come from one clip.
        keep = np.unique(np.linspace(0, n - 1, min(limit, n)).round()).astype(np.int64)
        batch = windows.read_windows(keep)
        scenes = [clips[c].scene for c in batch["clip"]]
        rgb = torch.from_numpy(np.ascontiguousarray(batch["rgb"]))  # (N, T, E, 3, H, W)
        cat = batch_categories(batch["instance"], scenes, table)
        crops, labels = [], []
        for clip in clips:
            arrays = clip.read(names=["rgb", "instance"])
            first, inst = arrays["rgb"], arrays["instance"].astype(np.int32)
            wh = size or (first.shape[-2], first.shape[-3])
            ids_to_cat = table.by_scene.get(clip.scene, {})
            # 30 pixels of a 128x96 frame: an object big enough to recognise, at any size.
            least = max(2, round(MIN_OBJECT_FRACTION * first.shape[-3] * first.shape[-2]))
            c, y = object_crops(first, inst, ids_to_cat, wh, min_pixels=least)
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
