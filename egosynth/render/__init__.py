"""Scene backends behind one interface (`Renderer`), and the factory that picks one.

- mesh: procedural ground-truth scenes (egosynth.render.mesh), exact depth and masks.
- nerf: trained NeRF scene bundles (egosynth.render.nerf), the only module importing nerfstudio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from egosynth.config import SceneConfig
    from egosynth.render.base import Renderer


def open_renderer(scene: SceneConfig, device: str | None = None) -> Renderer:
    """Build the renderer for a scene config, by its backend. `device` is e.g. "cuda"."""
    if scene.backend == "mesh":
        from egosynth.render.mesh import MeshRenderer

        return MeshRenderer.from_scene(scene)
    from egosynth.render.nerf import NerfRenderer

    return NerfRenderer.from_scene(scene, device=device)
