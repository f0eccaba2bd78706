"""Declarative pipelines: stages of `egosynth` subcommands with cached, skippable results.

A pipeline YAML lists stages; each runs one egosynth subcommand with arguments, may need
other stages, and declares its outputs. A finished stage writes a marker under
`<workdir>/.stages/<stage>.json` holding a fingerprint of everything that determines its
result (its command, resolved arguments, the fingerprints of the stages it needs, and the
contents of the config files it names). A rerun skips a stage whose marker matches and whose
outputs exist; change anything upstream and everything downstream reruns.

Each stage runs as its own process, forked from one helper that imported torch and egosynth
once for the run (egosynth/zygote.py; a 2-step baseline stage took 7.7 s cold, 1.0 s warm here),
or, with `warm=False` (`--cold`), as a fresh `python -m egosynth.cli`.

Matrix stages (`matrix: {seed: [0, 1]}`) run once per combination of values
(`expand_matrix`); `extends: base.yaml` reuses another pipeline's vars and stages.

Variables: `{workdir}` and every key of `vars:` (overridable with `--set key=value`, which
also overrides `workdir`) are substituted into arguments and outputs. Relative paths are
relative to the working directory the pipeline is run from (normally the repository root).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from egosynth import zygote
from egosynth.config import StrictModel, read_yaml, validate
from egosynth.errors import ConfigError, EgosynthError
from egosynth.readers import resolve


class Stage(StrictModel):
    command: str = Field(min_length=1)
    args: list[str | int | float] = []
    needs: list[str] = []
    outputs: list[str] = []
    # One stage per combination of values: {seed: [0, 1, 2], level: "{levels}"} (a string is
    # substituted, then split at commas, so `--set levels=0,1` resizes a sweep).
    matrix: dict[str, list[str | int | float] | str] = {}

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


def _read_extended(path: Path, trail: tuple[Path, ...] = ()) -> Any:
    """A pipeline document with `extends: <file>` merged onto the file it names.

    The base's vars and stages come first; the extending file's vars override them and its
    stages replace same-named ones or add new ones (a GPU-sized copy of a CPU pipeline shares
    its stage definitions instead of repeating them). Its name and workdir are its own.
    """
    data = read_yaml(path)
    if not isinstance(data, dict) or "extends" not in data:
        return data
    base_file = data.pop("extends")
    if not isinstance(base_file, str) or not base_file:
        raise ConfigError(path, "extends", base_file, "expected a pipeline file name")
    base_path = (path.parent / base_file).resolve()
    if base_path in (*trail, path.resolve()):
        raise ConfigError(path, "extends", base_file, "pipelines extend each other in a cycle")
    if not base_path.is_file():
        raise ConfigError(path, "extends", base_file, f"no such file ({base_path})")
    base = _read_extended(base_path, (*trail, path.resolve()))
    if not isinstance(base, dict):
        raise ConfigError(path, "extends", base_file, "the base is not a pipeline mapping")
    merged = {**{k: v for k, v in base.items() if k not in ("name", "workdir")}, **data}
    merged["vars"] = {**(base.get("vars") or {}), **(data.get("vars") or {})}
    merged["stages"] = {**(base.get("stages") or {}), **(data.get("stages") or {})}
    return merged


def load_pipeline(path: str | Path, overrides: dict[str, str] | None = None) -> Pipeline:
    path = resolve(path, "config")
    data = _read_extended(Path(path))
    if isinstance(data, dict) and overrides:
        data = {**data, "vars": {**(data.get("vars") or {}), **overrides}}
    pipe: Pipeline = validate(Pipeline, data, path)
    return pipe


# `{name}` substitutes a variable, `{{` and `}}` are literal braces. Only plain names: no
# attribute access, indexing or format specs (str.format would evaluate `{x.__class__}`).
_VAR = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def _subst(text: str | int | float, env: dict[str, Any], path: Path, where: str) -> str:
    def one(m: re.Match[str]) -> str:
        token, name = m.group(0), m.group(1)
        if token in ("{{", "}}"):
            return token[0]
        if not name.isidentifier():
            raise ConfigError(path, where, text, f"{token} is not a plain variable name")
        if name not in env:
            raise ConfigError(path, where, text, f"unknown variable {name!r}")
        return str(env[name])

    return _VAR.sub(one, str(text))


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


@dataclass
class _Planned:
    name: str
    command: str
    args: list[str]
    needs: list[str]
    outputs: list[Path]
    key: dict[str, Any]
    fingerprint: str
    marker: Path


def _matrix_values(st: Stage, env: dict[str, str], path: Path, name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, raw in st.matrix.items():
        if not key.isidentifier():
            raise ConfigError(path, f"stages.{name}.matrix", key, "not a plain variable name")
        if isinstance(raw, str):
            items = [v.strip() for v in _subst(raw, env, path, f"stages.{name}.matrix").split(",")]
        else:
            items = [_subst(v, env, path, f"stages.{name}.matrix") for v in raw]
        items = [v for v in items if v]
        if not items or len(set(items)) != len(items):
            raise ConfigError(path, f"stages.{name}.matrix.{key}", raw, "needs distinct values")
        values[key] = items
    return values


def expand_matrix(
    pipe: Pipeline, path: Path, env: dict[str, str]
) -> dict[str, tuple[Stage, dict[str, str]]]:
    """Stages after matrix expansion: name -> (stage with concrete needs, its variables).

    A matrix stage `fit` with {seed: [0, 1]} becomes `fit[seed=0]` and `fit[seed=1]`, each
    with `{seed}` set. A stage that needs a matrix stage depends on the expansions whose
    values agree with its own on the keys they share (`eval[level=0.5]` needs
    `fit[level=0.5,seed=*]`), or on all of them when they share none (a summary).
    """
    grids: dict[str, list[dict[str, str]]] = {}
    for name, st in pipe.stages.items():
        values = _matrix_values(st, env, path, name)
        for key in values:
            if key in env:
                raise ConfigError(path, f"stages.{name}.matrix", key, "shadows a variable")
        keys = list(values)
        grids[name] = [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(values[k] for k in keys))
        ]

    def label(name: str, combo: dict[str, str]) -> str:
        if not pipe.stages[name].matrix:
            return name
        return f"{name}[{','.join(f'{k}={v}' for k, v in combo.items())}]"

    out: dict[str, tuple[Stage, dict[str, str]]] = {}
    for name in topo_order(pipe.stages):
        st = pipe.stages[name]
        for combo in grids[name]:
            needs = []
            for dep in st.needs:
                for dc in grids[dep]:
                    if all(combo[k] == v for k, v in dc.items() if k in combo):
                        needs.append(label(dep, dc))
            out[label(name, combo)] = (st.model_copy(update={"needs": needs}), combo)
    return out


def plan_pipeline(pipe: Pipeline, path: Path, env: dict[str, str]) -> list[_Planned]:
    """Resolve every stage's arguments and fingerprint, in dependency order."""
    markers = Path(env["workdir"]) / ".stages"
    fingerprints: dict[str, str] = {}
    planned = []
    for name, (st, combo) in expand_matrix(pipe, path, env).items():
        senv = {**env, **combo}
        args = [_subst(a, senv, path, f"stages.{name}.args") for a in st.args]
        outputs = [Path(_subst(o, senv, path, f"stages.{name}.outputs")) for o in st.outputs]
        key = {
            "command": st.command,
            "args": args,
            "needs": {d: fingerprints[d] for d in st.needs},
            # config files the stage reads; not its own outputs (a .json report it writes
            # would change the fingerprint once it exists, and the stage would never be current)
            "files": {a: d for a in args if Path(a) not in outputs and (d := _file_digest(a))},
        }
        fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        fingerprints[name] = fp
        planned.append(
            _Planned(name, st.command, args, st.needs, outputs, key, fp, markers / f"{name}.json")
        )
    return planned


def run_pipeline(
    path: str | Path,
    overrides: dict[str, str] | None = None,
    force: bool = False,
    log=print,
    jobs: int = 1,
    warm: bool = True,
) -> list[StageResult]:
    """Run every stage in dependency order, skipping stages whose cached result is current.

    With `jobs` > 1, independent stages run concurrently and each stage's output goes to
    `<workdir>/logs/<stage>.log`; with 1 job it goes to the terminal. With `warm`, stages are
    forked from one pre-imported helper (egosynth/zygote.py: ~5 s less per stage on a small
    CPU); otherwise each starts a fresh Python.
    """
    path = resolve(path, "config")
    pipe = load_pipeline(path, overrides)
    env = pipeline_env(pipe, path)
    workdir = Path(env["workdir"])
    pending = plan_pipeline(pipe, path, env)
    results: dict[str, StageResult] = {}
    running: dict[str, tuple[_Planned, Any, float]] = {}
    to_run = {
        st.command
        for st in pending
        if force or not _is_current(st.marker, st.fingerprint, st.outputs)
    }
    launcher = _Launcher(warm and zygote.available(), workdir if jobs > 1 else None, to_run)
    try:
        failure = _schedule(pending, running, results, launcher, force, log, jobs, workdir, path)
    finally:
        launcher.close(running)
    if failure:
        raise EgosynthError(failure)
    return [results[s] for s in expand_matrix(pipe, path, env)]


def _schedule(pending, running, results, launcher, force, log, jobs, workdir, path) -> str | None:
    """The run loop: start ready stages up to `jobs` at a time; return the first failure."""
    failure: str | None = None
    while pending or running:
        for st in [s for s in pending if all(d in results for d in s.needs)]:
            if failure or len(running) >= max(1, jobs):
                break
            pending.remove(st)
            if not force and _is_current(st.marker, st.fingerprint, st.outputs):
                log(f"[{st.name}] cached, skipped ({st.command})")
                results[st.name] = StageResult(st.name, "skipped", 0.0, st.outputs)
                continue
            _discard_stale(st.marker, st.outputs, workdir, log)
            log(f"[{st.name}] egosynth {st.command} {' '.join(st.args)}")
            running[st.name] = (st, launcher.launch(st), time.perf_counter())
        if not running:
            if pending and not failure:
                continue  # stages became ready through skips: schedule them
            break
        time.sleep(0.05)
        for name, (st, proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            dt = time.perf_counter() - t0
            problem = _finish(st, proc.returncode, dt, jobs > 1, workdir)
            if problem:
                failure = failure or f"{path}: {problem}"
                continue
            log(f"[{name}] done in {dt:.0f} s")
            results[name] = StageResult(name, "ran", dt, st.outputs)
    return failure


class _Launcher:
    """Starts stages: forked from a warm helper, or as fresh `python -m egosynth.cli`."""

    def __init__(self, warm: bool, log_dir: Path | None, commands: set[str]) -> None:
        self.warm, self.log_dir, self.commands = warm, log_dir, commands
        self.zygote: zygote.Zygote | None = None  # started with the first stage that runs

    def launch(self, st: _Planned) -> Any:
        argv = [st.command, *st.args]
        log_file = None
        if self.log_dir is not None:
            log_file = self.log_dir / "logs" / f"{st.name}.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.warm:
            self.zygote = self.zygote or zygote.Zygote(zygote.preload_for(self.commands))
            return self.zygote.launch(argv, log_file)
        cmd = [sys.executable, "-m", "egosynth.cli", *argv]
        if log_file is None:
            return subprocess.Popen(cmd)
        with log_file.open("wb") as fh:  # the child keeps its own handle
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)

    def close(self, running: dict) -> None:
        """Stages still running when the run stops (Ctrl-C, SIGTERM, an error) are stopped
        too, and waited for, so nothing keeps writing into the workdir after we return."""
        procs = [proc for _, proc, _ in running.values()]
        # Ctrl-C reached the stages too: give their own clean-up a moment before SIGTERM
        for grace, signal_them in ((10, False), (60, True)):
            for proc in procs:
                if signal_them and proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + grace
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.zygote is not None:
            self.zygote.close()


def _finish(st: _Planned, rc: int, seconds: float, logged: bool, workdir: Path) -> str | None:
    """Check a finished stage and write its marker; return a problem description or None."""
    where = f" (log: {workdir / 'logs' / (st.name + '.log')})" if logged else ""
    if rc != 0:
        return f"stage {st.name!r} ({st.command}) failed with exit {rc}{where}"
    missing = [str(o) for o in st.outputs if not o.exists()]
    if missing:
        return f"stage {st.name!r} did not write {', '.join(missing)}{where}"
    st.marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = st.marker.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"fingerprint": st.fingerprint, "seconds": seconds, **st.key}, indent=1)
    )
    tmp.replace(st.marker)  # atomic: a stage is done only once its marker is complete
    return None


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
    from egosynth.readers import ReadError, read_json

    try:
        done = read_json(marker, "stage marker")
    except ReadError:  # a damaged marker: the stage simply reruns
        return False
    if not isinstance(done, dict):
        return False
    return done.get("fingerprint") == fingerprint and all(o.exists() for o in outputs)
