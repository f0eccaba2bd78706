"""Render ONE planned clip into the store, in this process.

trajectory -> renderer batches (chunk_frames frames x 2 eyes per call) -> store writes.
The Ray workers (egosynth.orchestration) call exactly this function, so a clip rendered on a
cluster is byte-identical to one rendered here single-process; the tests check that.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egosynth.camera import intrinsics_from_fov
from egosynth.config import SceneSetConfig
from egosynth.labels import Label
from egosynth.plan import ClipPlan, clip_trajectory, plan_clips
from egosynth.render.base import Renderer
from egosynth.store.schema import LabelTable


@dataclass
class ClipStats:
    """What rendering one clip cost. `write_s` is the time spent inside store writes."""

    clip_id: str
    frames: int
    render_s: float
    write_s: float
    total_s: float


def set_config_json(sset: SceneSetConfig) -> dict[str, Any]:
    """The parts of a scene set that decide a clip's bytes, as plain JSON.

    Left out on purpose: the output path and the number of clips per scene (clips are
    seeded per scene and index, so asking for more clips later extends the same store).
    """
    data = sset.model_dump(mode="json", exclude={"output", "clips_per_scene", "scenes", "name"})
    data["scenes"] = [s.model_dump(mode="json") for s in sset.scene_configs]
    return data


def config_fingerprint(sset: SceneSetConfig) -> str:
    """Short stable hash of `set_config_json`: a store only accepts clips of one config."""
    blob = json.dumps(set_config_json(sset), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def store_attrs(sset: SceneSetConfig) -> dict[str, Any]:
    """Root attributes describing the set (beside format/schema/fingerprint)."""
    return {
        "set_name": sset.name,
        "set_config": set_config_json(sset),
        "scenes": [s.name for s in sset.scene_configs],
    }


def labels_json(labels: list[Label]) -> list[dict[str, Any]]:
    """A renderer's label table as the store records it (`egosynth.store.LabelTable`)."""
    return LabelTable.from_labels(labels).to_json()


def clip_intrinsics(sset: SceneSetConfig) -> np.ndarray:
    """(2, 3, 3) K of the left and right eye (identical pinholes)."""
    res = sset.resolution
    K = intrinsics_from_fov(res.width, res.height, sset.rig.hfov_deg)
    return np.stack([K, K])


def render_clip(
    sset: SceneSetConfig,
    plan: ClipPlan,
    store_path: str | Path,
    renderer: Renderer,
    chunk_frames: int | None = None,
) -> ClipStats:
    """Render `plan` with `renderer` and write it as one complete clip group of the store.

    The store must already exist (`egosynth.store.prepare_store`). Any partial group of this
    clip is replaced; `status` becomes "complete" only after every array is written.
    """
    from egosynth.store import ClipWriter

    t_start = time.perf_counter()
    traj = clip_trajectory(sset, plan)
    W, H = sset.resolution.width, sset.resolution.height
    K = clip_intrinsics(sset)
    attrs = {
        "scene": plan.scene,
        "scene_index": plan.scene_index,
        "clip_index": plan.clip_index,
        "seed": str(plan.seed),  # uint64 seeds overflow JSON readers that use doubles
        "fps": plan.fps,
        "rig": sset.rig.model_dump(mode="json"),
        "fingerprint": config_fingerprint(sset),
    }
    t0 = time.perf_counter()
    writer = ClipWriter(store_path, plan.clip_id, len(traj), H, W, attrs, chunk_frames)
    write_s = time.perf_counter() - t0
    render_s = 0.0
    tc = writer.chunk_frames
    for start in range(0, len(traj), tc):
        cams = traj.eye_to_world[start : start + tc]  # (n, 2, 4, 4)
        n = len(cams)
        t0 = time.perf_counter()
        frames = renderer.render(cams.reshape(n * 2, 4, 4), K[0], W, H)
        t1 = time.perf_counter()
        batch = {
            "rgb": frames.rgb.reshape(n, 2, H, W, 3),
            "depth": frames.depth.reshape(n, 2, H, W),
            "instance": frames.instance.reshape(n, 2, H, W),
            "part": frames.part.reshape(n, 2, H, W),
        }
        writer.write_frames(start, batch)
        render_s += t1 - t0
        write_s += time.perf_counter() - t1
    t0 = time.perf_counter()
    meta = traj.arrays()
    meta["cam_to_world"] = traj.eye_to_world
    writer.write_meta(meta, K)
    writer.complete({"labels": labels_json(renderer.labels())})
    write_s += time.perf_counter() - t0
    return ClipStats(plan.clip_id, len(traj), render_s, write_s, time.perf_counter() - t_start)


def render_set(
    sset: SceneSetConfig,
    store_path: str | Path,
    clips_per_scene: int | None = None,
    chunk_frames: int | None = None,
) -> Path:
    """Render every clip of a scene set in this process, no Ray: a new, finalized store.

    What every distributed render must equal byte for byte; also the quickest way to make a
    small store in tests and benchmarks.
    """
    from egosynth.render import open_renderer
    from egosynth.store import finalized_on_exit, prepare_store, writer_lock

    with writer_lock(store_path):
        prepare_store(store_path, config_fingerprint(sset), store_attrs(sset))
        plans = plan_clips(sset, clips_per_scene)
        with finalized_on_exit(store_path, [p.clip_id for p in plans]):
            renderers = {s.name: open_renderer(s) for s in sset.scene_configs}
            for p in plans:
                render_clip(sset, p, store_path, renderers[p.scene], chunk_frames)
    return Path(store_path)
