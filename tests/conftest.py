"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from collections import Counter
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
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        _compile_kernels_in_background(config)


def _compile_kernels_in_background(config: pytest.Config) -> None:
    """Fill numba's kernel cache while the xdist workers start and collect: in a fresh clone
    every process that renders NeRF frames first (test workers, the demo's render stage)
    would otherwise compile the kernels itself, ~16 s of CPU each. Failures are ignored
    (a core-only install has no numba): tests then compile as they would have."""
    import subprocess

    code = "from egosynth.render.grid import compile_kernels; compile_kernels()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    config.add_cleanup(lambda: (proc.kill(), proc.wait()))  # never holds up the exit


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


# --------------------------------------------------------------------------- Ray
@pytest.fixture
def ray_cluster() -> str:
    """The GCS address of a local Ray cluster (2 CPUs, one declared fake GPU), or of the
    running one RAY_ADDRESS names.

    Started by the first test that asks and kept up while tests marked `ray` follow one
    another (they run in one xdist worker, in one group: see below), so the suite starts a
    cluster once, not once per module (~10 s each on a small CPU). The first test not marked
    `ray` after them shuts it down (`_no_stray_ray`): no other test may find Ray initialised
    (a render would join it instead of failing or rendering in its own way).
    """
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        from egosynth.orchestration import init_local_ray

        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
        else:
            init_local_ray(2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    return ray.get_runtime_context().gcs_address


def _shutdown_ray() -> None:
    ray = sys.modules.get("ray")  # never imported by this test process: nothing to do
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True)
def _no_stray_ray(request: pytest.FixtureRequest) -> None:
    if not request.node.get_closest_marker("ray"):
        _shutdown_ray()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _shutdown_ray()


# --------------------------------------------------------------------------- scheduling
# pyproject.toml runs xdist with `--dist loadgroup --no-loadscope-reorder`: a group's tests go
# to one worker, and units are handed out in the order below whenever a worker has at most
# two tests left. The order is longest first (LPT): the whole-pipeline tests (minutes each)
# one per worker, then the Ray and NeRF groups, then the module groups, then single tests.
def _module_scoped(item: pytest.Item) -> bool:
    """Whether `item` uses a module- or class-scoped fixture (set up once per worker that runs
    any of its module's tests: such tests stay together)."""
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(fd[-1].scope in ("module", "class", "package") for fd in defs.values())


def _group(item: pytest.Item) -> str | None:
    """The xdist group `item` runs in, or None (any worker)."""
    if item.get_closest_marker("ray"):
        # One cluster at a time: two local clusters on a 2-core machine can starve each
        # other's raylets past Ray's fixed 30 s registration timeout (local starts retry).
        return "ray"
    if item.get_closest_marker("nerf"):
        # one worker fits the tiny nerfstudio run (tiny_fit, cached under the worker's
        # basetemp) and bakes once, for every module that uses them
        return "nerf"
    return item.module.__name__ if _module_scoped(item) else None


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {id(item): _group(item) for item in items}
    for item in items:
        if groups[id(item)]:
            item.add_marker(pytest.mark.xdist_group(groups[id(item)]))
    sizes = Counter(groups.values())

    def rank(item: pytest.Item) -> tuple[int, int]:
        group = groups[id(item)]
        if item.get_closest_marker("pipeline"):
            return (0, 0)
        if group in ("ray", "nerf"):
            return (1, 0 if group == "ray" else 1)
        # then module groups, the larger first (their size stands in for their time), then
        # single tests in file order: short units last, so the workers finish together
        return (2, -sizes[group]) if group else (3, 0)

    items.sort(key=rank)  # stable: file order within a rank


def pytest_collection_finish(session: pytest.Session) -> None:
    # xdist's grouping once stopped without a word (pytest 9.2, pytest-xdist#1386): then two
    # Ray clusters could start at once. A worker under loadgroup checks that it took.
    if getattr(session.config.option, "loadgroup", False):
        lost = [
            i.nodeid
            for i in session.items
            if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        ]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup lost the xdist groups, e.g. {lost[0]}")
