"""Scene backends behind one interface (`Renderer`), and the factory that picks one.

- mesh: procedural ground-truth scenes (egosynth.render.mesh), exact depth and masks; the
  scene's mesh is built by egosynth.scenes (procedural.scene_mesh), not by the renderer.
- nerf: trained NeRF scene bundles (egosynth.render.nerf); the model is built by
  egosynth.nerf.nerfstudio, the adapter to nerfstudio's model building, trainer and configs.

Imports go one way: the backends import egosynth.scenes and egosynth.nerf's bundle, bake and
nerfstudio modules, never the tools above them (capture, preview, fit, bake, check).
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
