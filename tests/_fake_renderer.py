"""A tiny deterministic renderer for store/orchestration tests that must not wait on a backend.

Every pixel is an analytic function of the camera position and the pixel index, so two renders
of the same cameras are bit-identical and a frame's content identifies which camera made it.
"""

from __future__ import annotations

import time

import numpy as np

from egosynth.labels import Label
from egosynth.render.base import Frames, Renderer


class FakeRenderer:
    """rgb encodes the camera centre; depth = 1 + distance of the camera from the origin."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def render(self, cam_to_world, K, width, height) -> Frames:
        if self.delay_s:
            time.sleep(self.delay_s)
        c2w = np.asarray(cam_to_world, np.float64)
        n = len(c2w)
        out = Frames.empty(n, height, width)
        jj, ii = np.meshgrid(np.arange(width), np.arange(height))
        for k in range(n):
            x, y, z = c2w[k, :3, 3]
            out.rgb[k, ..., 0] = (np.floor(x * 100) + jj) % 256
            out.rgb[k, ..., 1] = (np.floor(y * 100) + ii) % 256
            out.rgb[k, ..., 2] = np.floor(z * 100) % 256
            out.depth[k] = 1.0 + float(np.linalg.norm([x, y, z])) + 0.01 * ii
            out.instance[k] = (jj // 8 + ii // 8) % 3
            out.part[k] = (out.instance[k] == 2).astype(np.uint8)
            out.accumulation[k] = 1.0
        return out

    def labels(self) -> list[Label]:
        return [Label(1, "box_0", "box"), Label(2, "dog_0", "dog", {1: "head"})]


class SlowRenderer:
    """Wraps a real renderer and sleeps before each batch, to make mid-clip faults reachable."""

    def __init__(self, inner: Renderer, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def render(self, cam_to_world, K, width, height) -> Frames:
        time.sleep(self.delay_s)
        return self.inner.render(cam_to_world, K, width, height)

    def labels(self) -> list[Label]:
        return self.inner.labels()


def fake_factory(scene, device=None) -> FakeRenderer:
    return FakeRenderer()


def slow_real_factory(scene, device=None) -> SlowRenderer:
    from egosynth.render import open_renderer

    return SlowRenderer(open_renderer(scene, device), 0.25)


def tiny_set(folder, scenes=None, **overrides):
    """Write a small scene set YAML (32x24, 12 frames, 2 clips/scene) into `folder`."""
    from pathlib import Path

    import yaml

    from egosynth.config import DEFAULT_SCENE_SET, load_scene_set

    demo = load_scene_set(DEFAULT_SCENE_SET)
    data = {
        "name": "tiny",
        "scenes": [str(s.source) for s in demo.scene_configs] if scenes is None else scenes,
        "clips_per_scene": 2,
        "clip_seconds": 1.2,
        "fps": 10,
        "resolution": [32, 24],
        "rig": "adult",
        "motion": "adult",
        "seed": 3,
        "output": str(Path(folder) / "tiny.zarr"),
        **overrides,
    }
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _Failing:
    def render(self, cam_to_world, K, width, height) -> Frames:
        raise RuntimeError("cannot render this scene")

    def labels(self) -> list[Label]:
        return []


def failing_factory(bad_scene: str):
    """A factory whose renderer raises for one scene and is the real one for the others."""

    def factory(scene, device=None):
        if scene.name == bad_scene:
            return _Failing()
        from egosynth.render import open_renderer

        return open_renderer(scene, device)

    return factory
