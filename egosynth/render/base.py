"""The renderer interface every scene backend implements (mesh ground truth, NeRF).

Callers hand a batch of cameras in egosynth's conventions (OpenCV camera-to-world in metres,
pinhole K in pixels) and get dense frames back. Backends convert to their own conventions
internally; nothing outside a backend knows about them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

# The label type lives in the neutral egosynth.labels (scenes build label tables without
# importing the renderer); re-exported here as the type `Renderer.labels` returns.
from egosynth.labels import Label

__all__ = ["Frames", "Label", "Renderer", "batch_intrinsics"]


@dataclass
class Frames:
    """A batch of N rendered views.

    rgb (N, H, W, 3) uint8; depth (N, H, W) float32 z-depth in metres (0 where nothing was
    hit); instance (N, H, W) uint16 (0 = background); part (N, H, W) uint8 (0 = no part);
    accumulation (N, H, W) float32 opacity in [0, 1] (1 everywhere for meshes).
    """

    rgb: NDArray[np.uint8]
    depth: NDArray[np.float32]
    instance: NDArray[np.uint16]
    part: NDArray[np.uint8]
    accumulation: NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    def __getitem__(self, index: slice) -> Frames:
        """The views `index` selects (a slice), every array alike."""
        return Frames(**{f: getattr(self, f)[index] for f in _FRAME_FIELDS})

    @classmethod
    def concat(cls, batches: Sequence[Frames]) -> Frames:
        """One batch of all views of `batches`, in order."""
        return cls(**{f: np.concatenate([getattr(b, f) for b in batches]) for f in _FRAME_FIELDS})

    @classmethod
    def empty(cls, n: int, height: int, width: int) -> Frames:
        return cls(
            rgb=np.zeros((n, height, width, 3), np.uint8),
            depth=np.zeros((n, height, width), np.float32),
            instance=np.zeros((n, height, width), np.uint16),
            part=np.zeros((n, height, width), np.uint8),
            accumulation=np.zeros((n, height, width), np.float32),
        )


_FRAME_FIELDS = ("rgb", "depth", "instance", "part", "accumulation")


def batch_intrinsics(K: NDArray[np.floating], n: int) -> NDArray[np.float64]:
    """Pinhole intrinsics for n views: K (3, 3) shared, or (n, 3, 3) one each -> (n, 3, 3)."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (n, 3, 3))
    if K.shape != (n, 3, 3):
        raise ValueError(f"K must be (3, 3) or ({n}, 3, 3), got {K.shape}")
    return K


@runtime_checkable
class Renderer(Protocol):
    """A scene that can be rendered from arbitrary pinhole cameras."""

    def render(
        self,
        cam_to_world: NDArray[np.floating],
        K: NDArray[np.floating],
        width: int,
        height: int,
    ) -> Frames:
        """Render N views: cam_to_world (N, 4, 4) OpenCV, K (3, 3) or (N, 3, 3)."""
        ...

    def labels(self) -> list[Label]:
        """The label table for the instance and part ids this renderer emits."""
        ...
