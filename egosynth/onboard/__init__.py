"""Onboarding a real scene: derive what a user's own nerfstudio run lacks (docs/bundles.md).

A NeRF fitted on a phone capture lives in COLMAP's frame: arbitrary up axis, origin and scale,
no floor, no walkable region, no objects. `egosynth scenes onboard` infers them as plain,
editable data:

    frame.py      up axis and floor plane (capture cameras + dominant horizontal plane), metric
                  scale (--camera-height / --scale / --scale-from-distance), world_from_scene
    floor.py      walkable floor polygon and obstacle footprints from an occupancy slice
    masks.py      the user's 2D instance/part masks (PNG or COCO RLE) and label table, checked
    lift.py       masks lifted to 3D with NeRF depth, fused by voting, stored as per-object voxel
                  occupancy the NeRF renderer labels new views with (masks.npz + masks.json)
    pipeline.py   the command's steps: geometry from the bundle, the above, files, pictures
    synthetic.py  test scenes: a procedural capture or bundle moved into a COLMAP-like frame

Everything here is numpy/scipy/shapely; the NeRF is only touched through a depth callback, so
the same code runs on mesh ground truth in tests.
"""
