"""Declarative pipelines: stages of `egosynth` subcommands with cached, skippable results.

A pipeline YAML lists stages; each runs one egosynth subcommand with arguments, may need
other stages, and declares its outputs. A finished stage writes a marker under
`<workdir>/.stages/<stage>.json` holding a fingerprint of everything that determines its
result (its command, resolved arguments, the fingerprints of the stages it needs, and the
contents of the config files it names). A rerun skips a stage whose marker matches and whose
outputs exist; change anything upstream and everything downstream reruns.

Variables: `{workdir}` and every key of `vars:` (overridable with `--set key=value`, which
also overrides `workdir`) are substituted into arguments and outputs. Relative paths are
relative to the working directory the pipeline is run from (normally the repository root).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from egosynth.config import StrictModel, read_yaml, validate
from egosynth.errors import ConfigError, EgosynthError


class Stage(StrictModel):
    command: str = Field(min_length=1)
    args: list[str | int | float] = []
    needs: list[str] = []
    outputs: list[str] = []

    @field_validator("command")
    @classmethod
    def _known(cls, v: str) -> str:
        from egosynth.cli import COMMANDS

        if v not in COMMANDS or v in ("pipeline", "demo"):
            raise ValueError(f"unknown stage command (choose from {', '.join(COMMANDS[:-2])})")
        return v


class Pipeline(StrictModel):
    name: str = Field(min_length=1)
    workdir: str = "outputs/pipelines/{name}"
    vars: dict[str, str | int | float] = {}
    stages: Annotated[dict[str, Stage], Field(min_length=1)]

    @model_validator(mode="after")
    def _graph(self) -> Pipeline:
        for name, st in self.stages.items():
            for dep in st.needs:
                if dep not in self.stages:
                    raise ValueError(f"stage {name!r} needs unknown stage {dep!r}")
        topo_order(self.stages)  # raises on cycles
        return self


def topo_order(stages: dict[str, Stage]) -> list[str]:
    """Stages in dependency order (stable: file order among independent stages)."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, trail: tuple[str, ...]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            raise ValueError(f"stages form a cycle: {' -> '.join((*trail, n))}")
        state[n] = 1
        for d in stages[n].needs:
            visit(d, (*trail, n))
        state[n] = 2
        order.append(n)

    for n in stages:
        visit(n, ())
    return order


@dataclass
class StageResult:
    name: str
    status: str  # "ran", "skipped", "failed"
    seconds: float
    outputs: list[Path]


def load_pipeline(path: str | Path, overrides: dict[str, str] | None = None) -> Pipeline:
    path = Path(path).resolve()
    data = read_yaml(path)
    if isinstance(data, dict) and overrides:
        data = {**data, "vars": {**(data.get("vars") or {}), **overrides}}
    pipe: Pipeline = validate(Pipeline, data, path)
    return pipe


def _subst(text: str | int | float, env: dict[str, Any], path: Path, where: str) -> str:
    try:
        return str(text).format(**env)
    except (KeyError, IndexError) as exc:
        raise ConfigError(path, where, text, f"unknown variable {exc}") from None


def pipeline_env(pipe: Pipeline, path: Path) -> dict[str, str]:
    """The substitution variables of a pipeline: `name`, its `vars` and the resolved `workdir`."""
    env = {"name": pipe.name, **{k: str(v) for k, v in pipe.vars.items()}}
    # `--set workdir=...` overrides the pipeline's own workdir (tests, scratch runs).
    env["workdir"] = _subst(env.get("workdir", pipe.workdir), env, path, "workdir")
    return env


def _file_digest(arg: str) -> str | None:
    p = Path(arg)
    if p.suffix in (".yaml", ".yml", ".json") and p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return None


def run_pipeline(
    path: str | Path,
    overrides: dict[str, str] | None = None,
    force: bool = False,
    log=print,
) -> list[StageResult]:
    """Run every stage in dependency order, skipping stages whose cached result is current."""
    path = Path(path).resolve()
    pipe = load_pipeline(path, overrides)
    env = pipeline_env(pipe, path)
    markers = Path(env["workdir"]) / ".stages"
    fingerprints: dict[str, str] = {}
    results = []
    for name in topo_order(pipe.stages):
        st = pipe.stages[name]
        args = [_subst(a, env, path, f"stages.{name}.args") for a in st.args]
        outputs = [Path(_subst(o, env, path, f"stages.{name}.outputs")) for o in st.outputs]
        key = {
            "command": st.command,
            "args": args,
            "needs": {d: fingerprints[d] for d in st.needs},
            "files": {a: _file_digest(a) for a in args if _file_digest(a)},
        }
        fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        fingerprints[name] = fp
        marker = markers / f"{name}.json"
        if not force and _is_current(marker, fp, outputs):
            log(f"[{name}] cached, skipped ({st.command})")
            results.append(StageResult(name, "skipped", 0.0, outputs))
            continue
        _discard_stale(marker, outputs, Path(env["workdir"]), log)
        log(f"[{name}] egosynth {st.command} {' '.join(args)}")
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "egosynth.cli", st.command, *args])
        dt = time.perf_counter() - t0
        if rc != 0:
            raise EgosynthError(f"{path}: stage {name!r} ({st.command}) failed with exit {rc}")
        missing = [str(o) for o in outputs if not o.exists()]
        if missing:
            raise EgosynthError(f"{path}: stage {name!r} did not write {', '.join(missing)}")
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "seconds": dt, **key}, indent=1))
        tmp.replace(marker)  # atomic: a stage is done only once its marker is complete
        results.append(StageResult(name, "ran", dt, outputs))
    return results


def _discard_stale(marker: Path, outputs: list[Path], workdir: Path, log) -> None:
    """Before rerunning a stage that finished with other inputs, drop its old outputs.

    Only outputs inside the pipeline's workdir are removed (the pipeline owns them), and only
    when a finished marker exists: an interrupted stage keeps its partial outputs so commands
    that resume (render) can pick up where they stopped.
    """
    if not marker.is_file():
        return
    marker.unlink()
    root = workdir.resolve()
    for out in outputs:
        target = out.resolve()
        if target.exists() and root in target.parents:
            log(f"  removing outdated {out}")
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def _is_current(marker: Path, fingerprint: str, outputs: list[Path]) -> bool:
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return done.get("fingerprint") == fingerprint and all(o.exists() for o in outputs)
