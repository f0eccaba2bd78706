"""Geometry of object categories and furniture, built from boxes, cylinders and pyramids.

Categories come in families that share everything but ONE diagnostic part:
- animals (cat, dog): same torso, legs, tail, skull, eyes and colours; the `head` differs
  (cat: pointed ears and a short face; dog: a long snout and floppy ears).
- vehicles (car, tractor): same chassis, cabin, lights and colours; the `wheels` differ
  (car: four equal wheels; tractor: big rear wheels and small front ones). The chassis sits
  at the same height in both, so nothing but the wheels tells them apart.

Objects are built in their own frame: x forward, y left, z up, feet/tyres on z = 0.
Sizes scale with the object's length `L` (metres).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from egosynth.scenes.textures import RGB, Material

if TYPE_CHECKING:
    import trimesh

FAMILIES: dict[str, tuple[str, ...]] = {"animal": ("cat", "dog"), "vehicle": ("car", "tractor")}
CATEGORIES: tuple[str, ...] = tuple(c for cats in FAMILIES.values() for c in cats)
FAMILY_OF: dict[str, str] = {c: f for f, cats in FAMILIES.items() for c in cats}
DIAGNOSTIC_PART: dict[str, str] = {
    "cat": "head",
    "dog": "head",
    "car": "wheels",
    "tractor": "wheels",
}
PARTS: dict[str, tuple[str, ...]] = {
    "animal": ("torso", "legs", "tail", "head"),
    "vehicle": ("chassis", "cabin", "lights", "wheels"),
}
# Colours are drawn from the FAMILY's palette, never the category's: colour is no cue.
PALETTES: dict[str, tuple[RGB, ...]] = {
    "animal": (
        (0.85, 0.55, 0.25),
        (0.55, 0.55, 0.55),
        (0.2, 0.18, 0.16),
        (0.55, 0.35, 0.2),
        (0.92, 0.88, 0.8),
    ),
    "vehicle": (
        (0.8, 0.15, 0.12),
        (0.15, 0.3, 0.75),
        (0.2, 0.6, 0.25),
        (0.9, 0.75, 0.15),
        (0.9, 0.9, 0.9),
    ),
}

_BLACK = Material("solid", (0.05, 0.05, 0.05), (0.2, 0.2, 0.2), 0.05)
_TYRE = Material("noise", (0.08, 0.08, 0.08), (0.22, 0.22, 0.22), 0.05)
_HUB = Material("solid", (0.75, 0.75, 0.78), (0.5, 0.5, 0.5), 0.05)
_GLASS = Material("noise", (0.25, 0.35, 0.45), (0.45, 0.6, 0.7), 0.2)
_LAMP = Material("solid", (1.0, 0.95, 0.6), (1.0, 1.0, 1.0), 0.05, emissive=True)
_PINK = Material("solid", (0.85, 0.5, 0.55), (0.6, 0.3, 0.3), 0.05)


@dataclass
class Piece:
    """One mesh piece of an object: the part it belongs to, geometry, material."""

    part: str
    mesh: trimesh.Trimesh
    material: Material


def _box(extents, center, yaw_deg: float = 0.0) -> trimesh.Trimesh:
    import trimesh

    T = trimesh.transformations.rotation_matrix(np.radians(yaw_deg), (0, 0, 1))
    T[:3, 3] = center
    return trimesh.creation.box(extents=extents, transform=T)


def _wheel(radius: float, width: float, center) -> trimesh.Trimesh:
    import trimesh

    T = trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0))  # axis along y
    T[:3, 3] = center
    return trimesh.creation.cylinder(radius=radius, height=width, sections=20, transform=T)


def _pyramid(base: float, height: float, center_base) -> trimesh.Trimesh:
    import trimesh

    T = np.eye(4)
    T[:3, 3] = center_base
    return trimesh.creation.cone(radius=base, height=height, sections=4, transform=T)


def object_pieces(category: str, length: float, color: RGB) -> list[Piece]:
    """Mesh pieces of one object of `category`, `length` metres long, in the object frame."""
    family = FAMILY_OF[category]
    if family == "animal":
        return _animal(category, length, color)
    return _vehicle(category, length, color)


def _animal(category: str, L: float, color: RGB) -> list[Piece]:
    fur = Material("noise", color, tuple(0.7 * c for c in color), 0.08)
    leg_h = 0.3 * L
    torso_h = 0.25 * L
    top = leg_h + torso_h
    pieces = [Piece("torso", _box((0.6 * L, 0.28 * L, torso_h), (0, 0, leg_h + torso_h / 2)), fur)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            leg = _box(
                (0.08 * L, 0.08 * L, leg_h + 0.02 * L),
                (sx * 0.22 * L, sy * 0.09 * L, (leg_h + 0.02 * L) / 2),
            )
            pieces.append(Piece("legs", leg, fur))
    pieces.append(
        Piece("tail", _box((0.26 * L, 0.05 * L, 0.05 * L), (-0.42 * L, 0, top - 0.04 * L)), fur)
    )
    # the head: a shared skull and eyes, then the diagnostic features
    s = 0.22 * L
    hx, hz = 0.36 * L, top + 0.06 * L
    pieces.append(Piece("head", _box((s, s, s), (hx, 0, hz)), fur))
    for sy in (-1, 1):
        eye = _box(
            (0.02 * L, 0.04 * L, 0.04 * L), (hx + s / 2 + 0.005 * L, sy * 0.05 * L, hz + 0.04 * L)
        )
        pieces.append(Piece("head", eye, _BLACK))
    if category == "cat":
        for sy in (-1, 1):
            ear = _pyramid(
                0.06 * L, 0.13 * L, (hx - 0.02 * L, sy * 0.065 * L, hz + s / 2 - 0.005 * L)
            )
            pieces.append(Piece("head", ear, fur))
        nose = _box((0.02 * L, 0.035 * L, 0.03 * L), (hx + s / 2 + 0.005 * L, 0, hz - 0.02 * L))
        pieces.append(Piece("head", nose, _PINK))
    else:  # dog
        snout_len = 0.16 * L
        snout_c = (hx + s / 2 + snout_len / 2 - 0.01 * L, 0, hz - 0.05 * L)
        pieces.append(Piece("head", _box((snout_len, 0.12 * L, 0.1 * L), snout_c), fur))
        nose = _box(
            (0.02 * L, 0.05 * L, 0.04 * L),
            (snout_c[0] + snout_len / 2 + 0.005 * L, 0, hz - 0.02 * L),
        )
        pieces.append(Piece("head", nose, _BLACK))
        for sy in (-1, 1):
            ear = _box(
                (0.07 * L, 0.025 * L, 0.16 * L),
                (hx - 0.02 * L, sy * (s / 2 + 0.012 * L), hz - 0.03 * L),
            )
            pieces.append(
                Piece("head", ear, Material("noise", tuple(0.6 * c for c in color), color, 0.08))
            )
    return pieces


def _vehicle(category: str, L: float, color: RGB) -> list[Piece]:
    paint = Material("solid", color, tuple(0.8 * c for c in color), 0.1)
    clearance = 0.1 * L
    ch_h, ch_w = 0.26 * L, 0.42 * L
    ch_z = clearance + ch_h / 2
    pieces = [
        Piece("chassis", _box((L, ch_w, ch_h), (0, 0, ch_z)), paint),
        Piece(
            "cabin",
            _box(
                (0.5 * L, 0.38 * L, 0.2 * L), (-0.08 * L, 0, clearance + ch_h + 0.1 * L - 0.005 * L)
            ),
            _GLASS,
        ),
    ]
    for sy in (-1, 1):
        lamp = _box((0.02 * L, 0.08 * L, 0.05 * L), (L / 2 + 0.005 * L, sy * 0.13 * L, ch_z))
        pieces.append(Piece("lights", lamp, _LAMP))
    if category == "car":
        wheels = [(0.32 * L, 0.12 * L), (-0.32 * L, 0.12 * L)]
    else:  # tractor: big rear wheels, small front wheels
        wheels = [(0.33 * L, 0.1 * L), (-0.27 * L, 0.22 * L)]
    w = 0.08 * L
    for x, r in wheels:
        for sy in (-1, 1):
            y = sy * (ch_w / 2 + w / 2 + 0.005 * L)
            pieces.append(Piece("wheels", _wheel(r, w, (x, y, r)), _TYRE))
            hub = _wheel(0.45 * r, 0.01 * L, (x, y + sy * (w / 2 + 0.004 * L), r))
            pieces.append(Piece("wheels", hub, _HUB))
    return pieces


# ------------------------------------------------------------------ furniture
FURNITURE_KINDS: tuple[str, ...] = ("table", "cabinet", "sofa", "shelf")


def furniture_pieces(kind: str, size: tuple[float, float, float], color: RGB) -> list[Piece]:
    """Furniture in its own frame (x along its width, y depth with the back at -y, z up)."""
    w, d, h = size
    wood = Material("planks", color, tuple(0.75 * c for c in color), 0.08)
    if kind == "table":
        t = 0.04
        pieces = [Piece("", _box((w, d, t), (0, 0, h - t / 2)), wood)]
        for sx in (-1, 1):
            for sy in (-1, 1):
                pieces.append(
                    Piece(
                        "",
                        _box(
                            (0.06, 0.06, h - t),
                            (sx * (w / 2 - 0.06), sy * (d / 2 - 0.06), (h - t) / 2),
                        ),
                        wood,
                    )
                )
        return pieces
    if kind == "cabinet":
        pieces = [Piece("", _box((w, d, h), (0, 0, h / 2)), wood)]
        knob = Material("solid", (0.8, 0.75, 0.5), (0.6, 0.5, 0.3), 0.05)
        pieces.append(Piece("", _box((0.04, 0.02, 0.04), (0.0, d / 2 + 0.01, 0.6 * h)), knob))
        return pieces
    if kind == "sofa":
        cloth = Material("noise", color, tuple(0.6 * c for c in color), 0.15)
        return [
            Piece("", _box((w, d, 0.42), (0, 0, 0.21)), cloth),
            Piece("", _box((w, 0.2, h), (0, -d / 2 + 0.1, h / 2)), cloth),
            Piece("", _box((0.18, d, 0.62), (-w / 2 + 0.09, 0, 0.31)), cloth),
            Piece("", _box((0.18, d, 0.62), (w / 2 - 0.09, 0, 0.31)), cloth),
        ]
    if kind == "shelf":
        pieces = [
            Piece("", _box((w, 0.03, h), (0, -d / 2 + 0.015, h / 2)), wood),
            Piece("", _box((0.03, d, h), (-w / 2 + 0.015, 0, h / 2)), wood),
            Piece("", _box((0.03, d, h), (w / 2 - 0.015, 0, h / 2)), wood),
        ]
        n = max(2, int(h / 0.4))
        for i in range(n + 1):
            z = 0.02 + i * (h - 0.04) / n
            pieces.append(Piece("", _box((w - 0.06, d - 0.03, 0.03), (0, 0.015, z)), wood))
        return pieces
    raise ValueError(f"unknown furniture kind {kind!r}")
