"""Clip planning: which clips a scene set contains and the seed of each.

The ONE place that names clips and derives their seeds. A clip's seed depends on the set's
seed, the scene's name and the clip's index, so adding a scene never changes another's clips.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from egosynth.config import SceneConfig, SceneSetConfig
from egosynth.motion import Trajectory, generate_trajectory


@dataclass(frozen=True)
class ClipPlan:
    clip_id: str
    scene: str
    scene_index: int
    clip_index: int
    seed: int
    n_frames: int
    fps: float


def plan_clips(sset: SceneSetConfig, clips_per_scene: int | None = None) -> list[ClipPlan]:
    """Every clip of a scene set, in a stable order (scene by scene, then clip index)."""
    n = clips_per_scene if clips_per_scene is not None else sset.clips_per_scene
    plans = []
    for si, scene in enumerate(sset.scene_configs):
        for ci in range(n):
            ss = np.random.SeedSequence([sset.seed, zlib.crc32(scene.name.encode()), ci])
            plans.append(
                ClipPlan(
                    clip_id=f"{scene.name}-{ci:04d}",
                    scene=scene.name,
                    scene_index=si,
                    clip_index=ci,
                    seed=int(ss.generate_state(1, np.uint64)[0]),
                    n_frames=sset.frames_per_clip,
                    fps=sset.fps,
                )
            )
    return plans


def clip_trajectory(sset: SceneSetConfig, plan: ClipPlan) -> Trajectory:
    """The trajectory of one planned clip."""
    scene: SceneConfig = sset.scene_configs[plan.scene_index]
    return generate_trajectory(scene, sset.rig, sset.motion, plan.n_frames, plan.fps, plan.seed)


def split_clips(clip_ids: Sequence[str], scenes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train, held out): the last clip (sorted id) of every scene with two or more clips is
    held out; the rest train. The ONE split rule shared by the trainer's diagnostics and the
    synthetic twin, so encoders are never scored on clips they trained on.

    Held-out clips come from scenes also seen in training, so probes test generalisation to
    new trajectories through known rooms.
    """
    by_scene: dict[str, list[str]] = {}
    for cid, scene in zip(clip_ids, scenes, strict=True):
        by_scene.setdefault(scene, []).append(cid)
    train, held = [], []
    for ids in by_scene.values():
        ids = sorted(ids)
        if len(ids) >= 2:
            train += ids[:-1]
            held.append(ids[-1])
        else:
            train += ids
    return sorted(train), sorted(held)
