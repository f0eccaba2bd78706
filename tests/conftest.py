"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

# Property tests check results, not speed: no per-example deadline (hypothesis' default
# 200 ms fails examples on a loaded 2-core CI machine: test_invert_pose did at load 7-26).
settings.register_profile("egosynth", deadline=None)
settings.load_profile("egosynth")


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


# --------------------------------------------------------------------------- store paths
# The store reads and writes local chunk files through its own fast path unless its switch is
# off (egosynth.store._fast; EGOSYNTH_STORE_FAST=0), when plain zarr does everything. CI runs
# one command (`pytest -q -n 2 ...`), so the store and loader tests run here under both settings: a
# test module opts in with `pytestmark = pytest.mark.usefixtures("store_path")` and each of
# its tests runs as [fast] and [plain] (a module-scoped fixture that depends on `store_path`
# does the same for the tests that use it); a test of the fast path itself is marked
# `fast_path`, and one that starts Ray is marked `ray`: they run as [fast] only.
STORE_PATHS = ("fast", "plain")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fast_path: tests the store's fast path itself (run with the switch on only)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_path" in metafunc.fixturenames:
        marks = ("fast_path", "ray")
        fast_only = any(metafunc.definition.get_closest_marker(m) for m in marks)
        modes = STORE_PATHS[:1] if fast_only else STORE_PATHS
        metafunc.parametrize("store_path", modes, indirect=True, scope="module")


@pytest.fixture(scope="module")
def store_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store's fast-path switch for a module's tests: "fast" (on) or "plain" (off)."""
    import egosynth.store._fast as fast

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast, "ENABLED", request.param == "fast")
        yield request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist with `--dist loadgroup`, every test that starts Ray runs in one
    # worker, one cluster at a time: two local clusters on a 2-core machine can starve each
    # other's raylets past Ray's fixed 30 s registration timeout (local starts also retry).
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
