"""Distributed rendering on Ray: the ONE module that imports ray.

The driver plans clips (egosynth.plan), skips those already complete in the store, and hands
the rest to one actor per device. An actor keeps its scenes' renderers warm between clips and
renders a clip with `egosynth.render_clip.render_clip` (the same function a single process
uses), so each clip has exactly one writer. The driver owns the store's root metadata: it
prepares the store before any work and writes the index and consolidated metadata at the end.

Faults: a call that fails because its actor died (SIGKILL, OOM, lost node) restarts the actor
(Ray `max_restarts`) and requeues the clip; an exception inside a clip requeues it too. After
`max_attempts` attempts a clip is reported as failed while the others complete.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from egosynth.config import SceneConfig, SceneSetConfig
from egosynth.errors import ConfigError, EgosynthError
from egosynth.plan import ClipPlan, plan_clips
from egosynth.render.base import Renderer
from egosynth.render_clip import config_fingerprint, render_clip, store_attrs


class _LazyRay:
    """The `ray` module, imported on first use: `workers=0` renders without it (importing
    ray costs ~1 s of a small CPU, in every render stage of a pipeline)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("ray"), name)


ray: Any = _LazyRay()


def _ray_initialized() -> bool:
    """Whether Ray is running in this process, without importing it."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


Device = Literal["auto", "gpu", "cpu"]
RendererFactory = Callable[[SceneConfig, str | None], Renderer]
ACTOR_MAX_RESTARTS = 4  # per actor; beyond that the actor is retired
MAX_WARM_SCENES = 4  # renderers an actor keeps loaded (NeRF bundles hold GPU memory)
KILL_WAIT_S = 20.0  # how long an interrupted driver waits for its killed actors to be gone


def _open_renderer(scene: SceneConfig, device: str | None) -> Renderer:
    from egosynth.render import open_renderer

    return open_renderer(scene, device)


@dataclass
class RenderReport:
    """Outcome of one `render_set` run."""

    planned: int
    skipped: int  # already complete before this run
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # clip id -> last error (one line)
    frames: int = 0
    seconds: float = 0.0
    render_s: float = 0.0
    write_s: float = 0.0
    retries: int = 0
    actor_restarts: int = 0
    workers: int = 0
    device: str = "cpu"
    gpu_ids: list[list[Any]] = field(default_factory=list)
    attempt_errors: list[str] = field(default_factory=list)  # "clip: error" per failed attempt

    @property
    def ok(self) -> bool:
        return not self.failed


# --------------------------------------------------------------------------- placement
def worker_plan(
    resources: dict[str, float], workers: int | None, device: Device = "auto"
) -> tuple[int, dict[str, Any], str]:
    """(number of actors, Ray actor options, "gpu"|"cpu") for a cluster's resources.

    One actor per GPU when the cluster has GPUs (or `device="gpu"`), else one per CPU. A
    request for GPUs on a cluster without any is an error here, not a task that waits forever.
    """
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if workers is not None and workers < 1:
        raise EgosynthError(f"--workers = {workers}: must be at least 1")
    if device == "gpu" and gpus < 1:
        raise EgosynthError("--device = 'gpu': the Ray cluster has no GPU resources")
    if device != "cpu" and gpus >= 1:
        n = gpus if workers is None else min(workers, gpus)
        return n, {"num_gpus": 1, "num_cpus": 1}, "gpu"
    if cpus < 1:
        raise EgosynthError("the Ray cluster has no CPU resources to run workers on")
    n = cpus if workers is None else min(workers, cpus)
    return n, {"num_cpus": 1}, "cpu"


class _Worker:
    """One per device. Renders whole clips; keeps up to MAX_WARM_SCENES renderers loaded."""

    def __init__(
        self,
        sset: SceneSetConfig,
        store_path: str,
        factory: RendererFactory,
        chunk_frames: int | None,
    ) -> None:
        # Nothing heavy here: a failing constructor would make Ray restart the actor in a loop.
        from egosynth import quiet

        quiet.install()  # this worker's warnings: the same filter as the CLI's (egosynth.quiet)
        self.sset, self.store_path, self.factory = sset, store_path, factory
        self.chunk_frames = chunk_frames
        self.renderers: dict[str, Renderer] = {}

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "gpu_ids": list(ray.get_gpu_ids())}

    def warm_scenes(self) -> list[str]:
        return list(self.renderers)

    def render(self, plan: ClipPlan, device: str | None = None) -> dict[str, Any]:
        scene = self.sset.scene_configs[plan.scene_index]
        renderer = self.renderers.pop(scene.name, None)
        if renderer is None:
            if device is None and _ray_initialized():  # an actor: the GPU Ray gave it
                device = "cuda" if ray.get_gpu_ids() else None
            renderer = self.factory(scene, device)
        self.renderers[scene.name] = renderer  # most recently used last
        while len(self.renderers) > MAX_WARM_SCENES:
            self.renderers.pop(next(iter(self.renderers)))
        stats = render_clip(self.sset, plan, self.store_path, renderer, self.chunk_frames)
        return {**stats.__dict__, "pid": os.getpid(), "scene": scene.name}


# --------------------------------------------------------------------------- cluster
# Ray gives a new node's raylet a fixed 30 s to register with its GCS (not configurable in Ray
# 2.60); a loaded 2-core machine sometimes misses that (seen once in CI). A local start is
# retried this many times in all.
LOCAL_START_ATTEMPTS = 3


def init_local_ray(num_cpus: int, **kwargs: Any) -> Any:
    """`ray.init` of a new local cluster, retried when its node times out during startup."""
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            return ray.init(num_cpus=num_cpus, **kwargs)
        except Exception as exc:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise
            ray.shutdown()  # whatever of the failed node came up
            time.sleep(2.0 * attempt)
    raise AssertionError("unreachable")


def _own_sigterm_handler() -> Any:
    """The caller's SIGTERM handler in the main thread, if it set one (else None)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return handler if callable(handler) else None


class _Cluster:
    """Join `address` (or RAY_ADDRESS), reuse an initialised Ray, or start a local cluster."""

    def __init__(self, address: str | None, num_cpus: int | None) -> None:
        self.started = False
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS") or None
        kw: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR"}
        # ray.init replaces the driver's SIGTERM handler with one that exits with status 15;
        # a handler of the caller's own (the CLI turns SIGTERM into a clean interrupt) stays.
        own = _own_sigterm_handler()
        try:
            if address:
                ray.init(address=address, **kw)
            else:
                init_local_ray(num_cpus or os.cpu_count() or 1, **kw)
            if own is not None:
                signal.signal(signal.SIGTERM, own)
        except Exception as exc:  # Ray raises a bare Exception when its node times out
            where = address or "a local cluster"
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EgosynthError(f"Ray: cannot start or join {where} ({msg})") from None
        self.started = True

    def close(self) -> None:
        if self.started:
            ray.shutdown()


def _one_line(exc: BaseException) -> str:
    """The last meaningful line of a (possibly remote) exception."""
    # a RayTaskError exists only where ray was imported: no import just to rule it out
    if "ray" in sys.modules and isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


# --------------------------------------------------------------------------- driver
def render_set(
    sset: SceneSetConfig,
    store_path: str | Path,
    *,
    clips_per_scene: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    address: str | None = None,
    device: Device = "auto",
    max_attempts: int = 3,
    chunk_frames: int | None = None,
    renderer_factory: RendererFactory | None = None,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[list[dict[str, Any]]], None] | None = None,
) -> RenderReport:
    """Render every planned clip of `sset` that the store does not hold complete yet.

    `workers=0` renders in this process, one clip after another, without Ray: for sets too
    small to repay a cluster's start (~15 s on a small CPU) and its workers' imports, and for
    debugging. The store it writes is byte-identical (tests/test_render_ray.py).

    `on_start(worker_infos)` is called once the actors are up (pid, gpu_ids each) and
    `on_result(stats)` after each finished clip; both are hooks for tools and tests.
    """
    from egosynth.store import complete_clip_ids, finalized_on_exit, prepare_store, writer_lock

    store_path = str(store_path)
    _preflight(sset)
    fp = config_fingerprint(sset)
    with writer_lock(store_path):  # one driver per store: a second would render clips twice
        prepare_store(store_path, fp, store_attrs(sset), overwrite=overwrite)
        plans = plan_clips(sset, clips_per_scene)
        # The index and store_status are written at the end, also when interrupted (Ctrl-C,
        # an error): "rendering" must not outlive the run (live readers would wait for it).
        with finalized_on_exit(store_path, [p.clip_id for p in plans]):
            complete = complete_clip_ids(store_path, fp)
            todo = [p for p in plans if p.clip_id not in complete]
            report = RenderReport(planned=len(plans), skipped=len(plans) - len(todo))
            if todo and workers == 0:
                factory = renderer_factory or _open_renderer
                _run_here(sset, store_path, todo, report, device, max_attempts, chunk_frames,
                          factory, progress, on_result, on_start)  # fmt: skip
            elif todo:
                cluster = _Cluster(address, workers)
                try:
                    _run(
                        sset,
                        store_path,
                        todo,
                        report,
                        workers,
                        device,
                        max_attempts,
                        chunk_frames,
                        renderer_factory or _open_renderer,
                        progress,
                        on_result,
                        on_start,
                    )
                finally:
                    cluster.close()
    return report


def _preflight(sset: SceneSetConfig) -> None:
    """Fail fast, before any cluster starts, on inputs every worker would trip over."""
    for scene in sset.scene_configs:
        if scene.backend == "nerf" and not scene.bundle_path().is_dir():
            raise ConfigError(scene.source, "bundle", str(scene.bundle), "bundle folder not found")


@dataclass
class _Slot:
    actor: Any
    deaths: int = 0
    retired: bool = False
    warm: list[str] = field(default_factory=list)  # the actor's loaded scenes, LRU first


def _run(
    sset: SceneSetConfig,
    store_path: str,
    todo: list[ClipPlan],
    report: RenderReport,
    workers: int | None,
    device: Device,
    max_attempts: int,
    chunk_frames: int | None,
    factory: RendererFactory,
    progress: bool,
    on_result: Callable[[dict[str, Any]], None] | None,
    on_start: Callable[[list[dict[str, Any]]], None] | None,
) -> None:
    n, options, kind = worker_plan(ray.cluster_resources(), workers, device)
    n = min(n, len(todo))
    report.workers, report.device = n, kind
    remote_cls = ray.remote(max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=0, **options)(_Worker)
    slots = [_Slot(remote_cls.remote(sset, store_path, factory, chunk_frames)) for _ in range(n)]
    inflight: dict[Any, tuple[int, ClipPlan | None]] = {}
    t0 = time.perf_counter()
    bar = tqdm(
        total=len(todo), unit="clip", desc="render", disable=not progress, dynamic_ncols=True
    )
    try:
        infos = ray.get([s.actor.info.remote() for s in slots])
        report.gpu_ids = [i["gpu_ids"] for i in infos]
        if on_start:
            on_start(infos)
        _drive(slots, todo, report, max_attempts, bar, t0, on_result, inflight)
    finally:
        bar.close()
        for s in slots:  # actors hold renderers (and GPU memory): free them now
            ray.kill(s.actor, no_restart=True)
        # ray.kill is asynchronous. On an interrupt, wait until the killed actors' calls have
        # failed, i.e. their processes are gone, so that no stray writer can still touch a
        # clip that the next run rewrites.
        if inflight:
            ray.wait(list(inflight), num_returns=len(inflight), timeout=KILL_WAIT_S)
    report.seconds = time.perf_counter() - t0


def _run_here(
    sset: SceneSetConfig,
    store_path: str,
    todo: list[ClipPlan],
    report: RenderReport,
    device: Device,
    max_attempts: int,
    chunk_frames: int | None,
    factory: RendererFactory,
    progress: bool,
    on_result: Callable[[dict[str, Any]], None] | None,
    on_start: Callable[[list[dict[str, Any]]], None] | None,
) -> None:
    """`_run` without Ray: this process is the one worker, with the same retries and report."""
    report.workers, report.device = 1, "gpu" if device == "gpu" else "cpu"
    torch_device = {"gpu": "cuda", "cpu": "cpu"}.get(device)  # auto: the renderer's default
    worker = _Worker(sset, store_path, factory, chunk_frames)
    report.gpu_ids = [[]]
    if on_start:
        on_start([{"pid": os.getpid(), "gpu_ids": []}])
    t0 = time.perf_counter()
    with tqdm(
        total=len(todo), unit="clip", desc="render", disable=not progress, dynamic_ncols=True
    ) as bar:
        for plan in todo:
            for attempt in range(1, max_attempts + 1):
                try:
                    res = worker.render(plan, torch_device)
                except Exception as exc:  # as an actor's RayTaskError would be: retried
                    err = _one_line(exc)
                    report.attempt_errors.append(f"{plan.clip_id}: {err}")
                    if attempt == max_attempts:
                        report.failed[plan.clip_id] = err
                    else:
                        report.retries += 1
                    continue
                report.done.append(plan.clip_id)
                report.frames += res["frames"]
                report.render_s += res["render_s"]
                report.write_s += res["write_s"]
                if on_result:
                    on_result(res)
                break
            bar.update(1)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(fps=f"{report.frames / elapsed:.1f}", failed=len(report.failed))
    report.seconds = time.perf_counter() - t0


def _drive(
    slots: list[_Slot],
    todo: list[ClipPlan],
    report: RenderReport,
    max_attempts: int,
    bar: tqdm,
    t0: float,
    on_result: Callable[[dict[str, Any]], None] | None,
    inflight: dict[Any, tuple[int, ClipPlan | None]],
) -> None:
    """Hand clips to idle actors until every clip is done or has failed `max_attempts` times.

    After a death an actor is only probed (`info`) until it answers again, so no clip is handed
    to an actor that is still restarting (such calls fail without running).
    """
    pending: deque[ClipPlan] = deque(todo)
    attempts: dict[str, int] = {}
    # `inflight` maps a call to (actor slot, clip), clip None for a liveness probe.
    idle = list(range(len(slots)))
    probe_at: dict[int, float] = {}  # slot -> when to probe it next

    def requeue(plan: ClipPlan, err: str, counts: bool = True) -> None:
        report.attempt_errors.append(f"{plan.clip_id}: {err}")
        if not counts:
            attempts[plan.clip_id] -= 1
        if attempts[plan.clip_id] >= max_attempts:
            report.failed[plan.clip_id] = err
            bar.update(1)
        else:
            report.retries += 1
            pending.appendleft(plan)

    while pending or inflight:
        now = time.monotonic()
        for i in [k for k, t in probe_at.items() if t <= now]:
            del probe_at[i]
            inflight[slots[i].actor.info.remote()] = (i, None)
        while idle and pending:
            i = idle.pop(0)
            plan = _pick(pending, slots[i].warm, [s.warm for s in slots if not s.retired])
            _touch(slots[i].warm, plan.scene)  # loaded by the actor as it starts the clip
            attempts[plan.clip_id] = attempts.get(plan.clip_id, 0) + 1
            inflight[slots[i].actor.render.remote(plan)] = (i, plan)
        if not inflight and not probe_at:  # every actor retired: nothing can make progress
            for plan in pending:
                report.failed[plan.clip_id] = "no live workers left (all actors died)"
            pending.clear()
            break
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.2) if inflight else ([], [])
        if not inflight:
            time.sleep(0.1)
        for ref in ready:
            i, plan = inflight.pop(ref)
            _settle(ref, i, plan, slots, report, requeue, idle, probe_at, bar, on_result)
        elapsed = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(
            fps=f"{report.frames / elapsed:.1f}",
            retries=report.retries,
            restarts=report.actor_restarts,
            failed=len(report.failed),
            refresh=False,
        )


def _settle(
    ref: Any,
    i: int,
    plan: ClipPlan | None,
    slots: list[_Slot],
    report: RenderReport,
    requeue: Callable[..., None],
    idle: list[int],
    probe_at: dict[int, float],
    bar: tqdm,
    on_result: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Account for one finished call (a clip or a probe) of actor `i`."""
    slot = slots[i]
    try:
        res = ray.get(ref)
    except ray.exceptions.ActorUnavailableError as exc:
        if plan is not None:
            # Unreachable, maybe still running: kill it so the clip never has two writers.
            ray.kill(slot.actor, no_restart=False)
            _actor_died(slot, report)
            requeue(plan, f"worker unavailable: {_one_line(exc)}", counts=False)
        probe_at[i] = time.monotonic() + 0.5  # restarting: ask again shortly
        return
    except ray.exceptions.RayActorError as exc:
        if plan is None:  # died for good (restart budget spent)
            slot.retired = True
            return
        _actor_died(slot, report)
        requeue(plan, f"worker died: {_one_line(exc)}")
        probe_at[i] = time.monotonic()
        return
    except ray.exceptions.RayTaskError as exc:
        if plan is not None:
            requeue(plan, _one_line(exc))
    else:
        if plan is not None:
            report.done.append(plan.clip_id)
            report.frames += res["frames"]
            report.render_s += res["render_s"]
            report.write_s += res["write_s"]
            bar.update(1)
            if on_result:
                on_result(res)
    if not slot.retired:
        idle.append(i)


def _actor_died(slot: _Slot, report: RenderReport) -> None:
    slot.deaths += 1
    slot.warm.clear()
    report.actor_restarts += 1
    if slot.deaths > ACTOR_MAX_RESTARTS:
        slot.retired = True


def _touch(warm: list[str], scene: str) -> None:
    """Mirror the actor's renderer LRU (`_Worker.render`): `scene` most recent, at most
    MAX_WARM_SCENES kept."""
    if scene in warm:
        warm.remove(scene)
    warm.append(scene)
    del warm[:-MAX_WARM_SCENES]


def _pick(pending: deque[ClipPlan], warm: list[str], all_warm: list[list[str]]) -> ClipPlan:
    """The next clip for an idle actor whose loaded scenes are `warm`.

    A clip of a scene it has loaded first (no bundle reload), the most recently used scene
    first. Otherwise a clip of the pending scene that the fewest actors have loaded
    (`all_warm`), so that actors spread over scenes instead of every actor loading every
    scene in plan order; ties go to the earliest pending clip.
    """
    for scene in reversed(warm):
        for k, plan in enumerate(pending):
            if plan.scene == scene:
                del pending[k]
                return plan
    loaded = Counter(s for w in all_warm for s in w)
    k = min(range(len(pending)), key=lambda k: (loaded[pending[k].scene], k))
    plan = pending[k]
    del pending[k]
    return plan
