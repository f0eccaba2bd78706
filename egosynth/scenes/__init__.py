"""Procedural ground-truth scenes: generator, multi-view captures, previews.

- procedural: generator config + index -> room layout -> scene config YAML and mesh.
- shapes: object categories (with diagnostic parts) and furniture geometry.
- textures: procedural solid textures and shading used by the mesh backend.
- capture: multi-view captures in nerfstudio's data format.
- preview: contact sheets of views with depth and masks.
"""
