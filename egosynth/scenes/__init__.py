"""Procedural ground-truth scenes: generator, multi-view captures, previews.

- procedural: generator config + index -> room layout -> scene config YAML and mesh.
- mesh: the scene geometry (SceneMesh, MeshBuilder) the mesh backend renders.
- shapes: object categories (with diagnostic parts) and furniture geometry.
- textures: procedural solid textures and shading used by the mesh backend.
- capture: multi-view captures in nerfstudio's data format.
- preview: contact sheets of views with depth and masks.

Imports go one way: egosynth.render may import the scene modules; procedural, mesh, shapes
and textures never import egosynth.render. capture and preview render a scene (through
egosynth.render.open_renderer), so they sit above the renderer and nothing in it imports them.
"""
