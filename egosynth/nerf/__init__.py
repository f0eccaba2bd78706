"""Trained NeRF scenes: bundles (bundle.py), fitting (fit.py), importing (importer.py) and
fidelity checks (check.py). nerfstudio itself is only touched through egosynth.render.nerf."""
