"""egosynth: synthetic egocentric stereo video from NeRF scenes, and learning from it.

Import is deliberately light: heavy libraries (torch, nerfstudio, ray, zarr) are imported
inside the one module that owns each of them, never here.
"""

__version__ = "0.1.0"
