"""Egocentric motion: where a walking observer's head and eyes are, frame by frame."""

from egosynth.motion.floorplan import FloorPlan
from egosynth.motion.trajectory import Trajectory, generate_trajectory

__all__ = ["FloorPlan", "Trajectory", "generate_trajectory"]
