"""Trained NeRF scenes, in two layers with imports going one way (tests/test_imports.py).

Below the renderer (egosynth.render.nerf imports them; they never import egosynth.render):
- bundle.py: the scene bundle format (plain JSON + weights-only tensors);
- baked.py: a bundle's bake (density and colour grids) on disk;
- nerfstudio.py: the adapter to nerfstudio's model building, trainer and run configs (the
  only nerfstudio contact outside the renderer's own rendering code).

Scene tooling (may use the renderer; nothing in egosynth.render imports them):
- fit.py: fitting a NeRF on a capture (through nerfstudio.py's trainer adapter);
- importer.py: a nerfstudio run -> a bundle (through nerfstudio.py's config reader);
- bake.py: baking a bundle from its field (renders with egosynth.render.nerf);
- check.py: fidelity checks against the mesh ground truth (renders both backends);
- synthetic.py: a tiny analytic scene written as a capture, for tests and smoke runs.
"""
