"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def torch_one_thread() -> Iterator[None]:
    """Tiny tensors: one torch thread is far faster than two on a shared, loaded machine.

    Restores the previous setting, so tests in one process do not leak it to each other.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
