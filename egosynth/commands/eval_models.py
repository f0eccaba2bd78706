"""Checkpoint arguments shared by the `egosynth eval` subcommands: comma lists, NAME=PATH
and folder expansion, and loading the models they name (torch only inside the loaders)."""

from __future__ import annotations

from pathlib import Path

from egosynth.errors import EgosynthError


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


SEED_SUFFIX = "#*"


def checkpoints(values: list[str]) -> list[tuple[str | None, Path]]:
    """(name, file) pairs; a folder stands for every *.pt under it (sorted).

    Sweeps write one checkpoint per seed into a folder: `NAME=FOLDER` names them NAME#<seed>,
    a plain FOLDER keeps each checkpoint's own name.
    """
    out: list[tuple[str | None, Path]] = []
    for v in values:
        name, sep, path = v.partition("=")
        named = bool(sep and name and not Path(v).exists())
        target = Path(path) if named else Path(v)
        if target.is_dir():
            files = sorted(target.rglob("*.pt"))
            if not files:
                raise EgosynthError(f"--checkpoint = {v!r}: no *.pt checkpoint in this folder")
            out += [((name + SEED_SUFFIX) if named else None, f) for f in files]
        else:
            out.append((name if named else None, target))
    return out


def load_models(given: list[tuple[str | None, Path]], input_size: int | None) -> list:
    from egosynth.eval.evaluate import model_facts
    from egosynth.eval.probe import load_model

    models = []
    for i, (name, path) in enumerate(given):
        m = load_model(path, input_size, name)
        if m.name.endswith(SEED_SUFFIX):
            m.name = m.name[: -len(SEED_SUFFIX)] + f"#{model_facts(m).get('seed', i)}"
        models.append(m)
    return models
