"""Checkpoints that load with `torch.load(weights_only=True)` and nothing else.

A checkpoint is one dict of state dicts (tensors, numbers, strings, lists) plus the run's
metadata as a JSON string. Nothing in it is a pickled Python object, so loading a checkpoint
from someone else never executes code. RNG states of Python's `random` and numpy are stored as
integer tensors, not as the objects their getstate() returns.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egosynth.errors import EgosynthError

FORMAT = "egosynth-train-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """Every global RNG the training step may touch, as tensors and ints."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(mt, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy": torch.from_numpy(np.asarray(np_keys, np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "numpy_kind": str(np_kind),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    mt = tuple(int(v) for v in state["python"].tolist())
    random.setstate((state["python_version"], mt, state["python_gauss"]))
    np.random.set_state(
        (
            state["numpy_kind"],
            state["numpy"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, states: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write `states` (state dicts) and `meta` (JSON-able) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "meta_json": json.dumps(meta), **states}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # readers never see a half-written checkpoint
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the weights-only loader. Returns the states with `meta` parsed."""
    from egosynth.readers import torch_load

    path = Path(path)
    payload = torch_load(path, "checkpoint", map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EgosynthError(f"{path}: format is not {FORMAT!r}")
    if payload.get("version") != VERSION:
        raise EgosynthError(f"{path}: version = {payload.get('version')!r}: expected {VERSION}")
    try:
        payload["meta"] = json.loads(payload.pop("meta_json"))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise EgosynthError(f"{path}: meta_json is missing or not JSON ({exc})") from None
    return payload


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in `folder` (files step_<n>.pt), or None."""
    found = []
    for f in Path(folder).glob("step_*.pt"):
        try:
            found.append((int(f.stem.split("_")[1]), f))
        except ValueError:
            continue
    return max(found)[1] if found else None
