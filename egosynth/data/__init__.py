"""Streaming windows of clips from egosynth clip stores into trainers.

`egosynth.data` (this package) is numpy-only; `egosynth.data.torch` adds PyTorch datasets and
`egosynth.data.ray` a Ray Data adapter. Layout and examples: docs/loader.md.
"""

from egosynth.data.core import LoaderConfig, WindowLoader
from egosynth.data.index import (
    ClipInfo,
    Shard,
    WindowIndex,
    WindowSpec,
    epoch_order,
    rank_batch_count,
    shard_batches,
)
from egosynth.data.reader import ALL_FIELDS, DEFAULT_FIELDS, ChunkCache, WindowReader, list_clips

__all__ = [
    "ALL_FIELDS",
    "DEFAULT_FIELDS",
    "ChunkCache",
    "ClipInfo",
    "LoaderConfig",
    "Shard",
    "WindowIndex",
    "WindowLoader",
    "WindowReader",
    "WindowSpec",
    "epoch_order",
    "list_clips",
    "rank_batch_count",
    "shard_batches",
]
