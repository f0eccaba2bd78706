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
from egosynth.errors import EgosynthError
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


# Memory estimates for `check_plan`: a ClipPlan in the plan list, and one frame of a clip's
# trajectory (eye/head poses, time, fixation: ~0.4 KB stored, plus the motion model's working
# arrays).
PLAN_BYTES = 1024
TRAJECTORY_BYTES_PER_FRAME = 4096


def check_plan(
    sset: SceneSetConfig, clips_per_scene: int | None = None, clips_in_memory: int = 1
) -> int:
    """Refuse, before any work, a plan whose clips would not fit in memory; returns the
    number of clips. `clips_in_memory`: trajectories held at once (0 = all of them)."""
    from egosynth.checks import check_memory

    n = clips_per_scene if clips_per_scene is not None else sset.clips_per_scene
    if n < 1:
        raise EgosynthError(f"clips per scene = {n}: must be at least 1")
    total = n * len(sset.scene_configs)
    held = total if clips_in_memory == 0 else min(clips_in_memory, total)
    frames = sset.frames_per_clip
    clips = f"{total:,} clip{'s' if total != 1 else ''}"
    check_memory(
        total * PLAN_BYTES + held * frames * TRAJECTORY_BYTES_PER_FRAME,
        f"{clips} of {frames:,} frames ({sset.clip_seconds:g} s at {sset.fps:g} fps)",
    )
    return total


def plan_clips(sset: SceneSetConfig, clips_per_scene: int | None = None) -> list[ClipPlan]:
    """Every clip of a scene set, in a stable order (scene by scene, then clip index)."""
    check_plan(sset, clips_per_scene)
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
