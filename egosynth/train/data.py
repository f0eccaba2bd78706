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

import numpy as np
import torch

from egosynth.errors import EgosynthError
from egosynth.plan import split_clips  # noqa: F401  (re-exported: the trainer's split)


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
        labels: dict[str, list[dict]] = {}
        for clip in store:
            labels.setdefault(clip.scene, clip.attrs.get("labels", []))
        names = sorted({lab["category"] for labs in labels.values() for lab in labs})
        index = {n: i for i, n in enumerate(names)}
        by_scene = {
            s: {int(lab["instance_id"]): index[lab["category"]] for lab in labs}
            for s, labs in labels.items()
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
