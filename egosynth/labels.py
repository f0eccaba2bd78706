"""The label table: what a frame's instance and part ids mean (docs/conventions.md).

A neutral module every layer may import: the scene generator builds label tables
(egosynth.scenes), renderers return them (egosynth.render), the store writes them as JSON.
It imports nothing of egosynth, so it can never close an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Label:
    """One entry of a scene's label table: instance id -> object, part id -> part name, and
    the name of the part that tells the object's category apart from its family's others
    (`diagnostic_part`, None where the scene does not say; the ClickMe twin's "human" map)."""

    instance_id: int
    name: str
    category: str
    parts: dict[int, str] = field(default_factory=dict)
    diagnostic_part: str | None = None
