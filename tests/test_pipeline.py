"""Pipeline runner: dependency order, caching, invalidation, errors (with cheap stages)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from egosynth.cli import main
from egosynth.config import DEFAULT_SCENE_SET
from egosynth.errors import ConfigError, EgosynthError
from egosynth.pipeline import run_pipeline


def write(tmp: Path, stages: dict, vars: dict | None = None) -> Path:
    p = tmp / "pipe.yaml"
    doc = {
        "name": "t",
        "workdir": str(tmp / "work"),
        "vars": vars or {"clips": 1},
        "stages": stages,
    }
    p.write_text(yaml.safe_dump(doc))
    return p


STAGES = {
    "b": {
        "command": "trajectory",
        "needs": ["a"],
        "args": [str(DEFAULT_SCENE_SET), "--clips", "{clips}", "--out", "{workdir}/b.npz"],
        "outputs": ["{workdir}/b.npz"],
    },
    "a": {
        "command": "trajectory",
        "args": [str(DEFAULT_SCENE_SET), "--clips", "{clips}", "--out", "{workdir}/a.npz"],
        "outputs": ["{workdir}/a.npz"],
    },
}


def test_runs_in_order_then_skips_then_reruns_on_change(tmp_path: Path) -> None:
    p = write(tmp_path, STAGES)
    first = run_pipeline(p, log=lambda *_: None)
    assert [r.name for r in first] == ["a", "b"] and {r.status for r in first} == {"ran"}
    mtime = (tmp_path / "work" / "b.npz").stat().st_mtime_ns
    again = run_pipeline(p, log=lambda *_: None)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert (tmp_path / "work" / "b.npz").stat().st_mtime_ns == mtime
    # A changed variable changes a's arguments, so a and everything after it rerun.
    changed = run_pipeline(p, overrides={"clips": "2"}, log=lambda *_: None)
    assert [r.status for r in changed] == ["ran", "ran"]
    # A missing output forces its stage (only) to rerun.
    (tmp_path / "work" / "b.npz").unlink()
    partial = run_pipeline(p, overrides={"clips": "2"}, log=lambda *_: None)
    assert [r.status for r in partial] == ["skipped", "ran"]


def test_failing_stage_is_one_line_error_and_not_marked_done(tmp_path: Path) -> None:
    stages = {"a": {"command": "trajectory", "args": ["missing.yaml", "--out", "{workdir}/a"]}}
    p = write(tmp_path, stages)
    with pytest.raises(EgosynthError, match=r"stage 'a'.*failed"):
        run_pipeline(p, log=lambda *_: None)
    assert not (tmp_path / "work" / ".stages" / "a.json").exists()


@pytest.mark.parametrize(
    "stages,field",
    [
        ({"a": {"command": "teleport"}}, "stages.a.command"),
        ({"a": {"command": "trajectory", "needs": ["zz"]}}, "stages"),
        (
            {
                "a": {"command": "trajectory", "needs": ["b"]},
                "b": {"command": "trajectory", "needs": ["a"]},
            },
            "cycle",
        ),
        ({"a": {"command": "trajectory", "args": ["{nope}"]}}, "stages.a.args"),
    ],
)
def test_bad_pipelines(tmp_path: Path, stages: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        run_pipeline(write(tmp_path, stages), log=lambda *_: None)


def test_pipeline_cli_set_override(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = write(tmp_path, {"a": STAGES["a"]})
    assert main(["pipeline", "run", str(p), "--set", "clips=1"]) == 0
    assert main(["pipeline", "run", str(p), "--set", "clips"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_changed_stage_replaces_outputs_it_owns_but_keeps_partial_ones(tmp_path: Path) -> None:
    p = write(tmp_path, {"a": STAGES["a"]})
    run_pipeline(p, log=lambda *_: None)
    out = tmp_path / "work" / "a.npz"
    stale = out.read_bytes()
    removed: list[str] = []
    run_pipeline(p, overrides={"clips": "2"}, log=removed.append)
    assert any("removing outdated" in m for m in removed)
    assert out.read_bytes() != stale
    # No finished marker (an interrupted stage): outputs are left for the command to resume.
    (tmp_path / "work" / ".stages" / "a.json").unlink()
    logs: list[str] = []
    run_pipeline(p, overrides={"clips": "2"}, log=logs.append)
    assert not any("removing" in m for m in logs)


def test_parallel_jobs_give_the_same_results_and_log_per_stage(tmp_path: Path) -> None:
    stages = {
        **STAGES,
        "c": {
            **STAGES["a"],
            "args": [*STAGES["a"]["args"][:-1], "{workdir}/c.npz"],
            "outputs": ["{workdir}/c.npz"],
        },
    }
    p = write(tmp_path, stages)
    res = run_pipeline(p, jobs=2, log=lambda *_: None)
    assert [r.name for r in res] == ["a", "b", "c"] and {r.status for r in res} == {"ran"}
    logs = tmp_path / "work" / "logs"
    assert {f.stem for f in logs.glob("*.log")} == {"a", "b", "c"}
    assert "wrote" in (logs / "b.log").read_text()
    assert [r.status for r in run_pipeline(p, jobs=2, log=lambda *_: None)] == ["skipped"] * 3


def test_parallel_failure_stops_and_names_the_log(tmp_path: Path) -> None:
    stages = {
        "a": {"command": "trajectory", "args": ["missing.yaml", "--out", "{workdir}/a"]},
        "b": STAGES["a"] | {"needs": ["a"]},
    }
    p = write(tmp_path, stages)
    with pytest.raises(EgosynthError, match=r"stage 'a'.*log: .*a\.log"):
        run_pipeline(p, jobs=2, log=lambda *_: None)
    assert not (tmp_path / "work" / "a.npz").exists()


PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_validate_and_resolve(path: Path) -> None:
    """Every shipped pipeline parses, has no cycles, and substitutes every variable."""
    from egosynth.pipeline import load_pipeline, pipeline_env, plan_pipeline

    pipe = load_pipeline(path)
    planned = plan_pipeline(pipe, path, pipeline_env(pipe, path))
    assert [p.name for p in planned] and all("{" not in a for p in planned for a in p.args)
    from egosynth.config import REPO_ROOT, load_scene_set

    for p in planned:  # scene sets a pipeline names exist and load
        for a in p.args:
            if a.startswith("scene_configs/"):
                load_scene_set(REPO_ROOT / a)


def test_a_json_output_named_in_the_args_does_not_change_the_fingerprint(tmp_path: Path) -> None:
    """Config files in the args are hashed; the stage's own .json output is not (once it
    exists, the stage would otherwise never be current again)."""
    from egosynth.pipeline import load_pipeline, pipeline_env, plan_pipeline

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("a: 1\n")
    stages = {
        "r": {
            "command": "trajectory",
            "args": [str(cfg), "--out", "{workdir}/report.json"],
            "outputs": ["{workdir}/report.json"],
        }
    }
    p = write(tmp_path, stages)

    def fingerprint() -> str:
        pipe = load_pipeline(p)
        return plan_pipeline(pipe, p, pipeline_env(pipe, p))[0].fingerprint

    before = fingerprint()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "report.json").write_text('{"x": 1}')
    assert fingerprint() == before
    cfg.write_text("a: 2\n")  # an input config that changes does change it
    assert fingerprint() != before


# --------------------------------------------------------------------------- warm stages
def test_warm_and_cold_stages_write_the_same_results(tmp_path: Path) -> None:
    """Stages forked from the warm helper and fresh `python -m egosynth.cli` processes write
    the same arrays, log the same way and are cached the same way."""
    import numpy as np

    outs = {}
    for warm in (True, False):
        d = tmp_path / str(warm)
        d.mkdir()
        p = write(d, STAGES)
        res = run_pipeline(p, jobs=2, warm=warm, log=lambda *_: None)
        assert {r.status for r in res} == {"ran"}
        assert "wrote" in (d / "work" / "logs" / "a.log").read_text()
        with np.load(d / "work" / "b.npz") as z:
            outs[warm] = {k: z[k] for k in z.files}
        assert {r.status for r in run_pipeline(p, warm=warm, log=lambda *_: None)} == {"skipped"}
    assert outs[True].keys() == outs[False].keys()
    for k in outs[True]:
        np.testing.assert_array_equal(outs[True][k], outs[False][k])


def test_forked_stages_exit_as_fresh_processes_do(tmp_path: Path) -> None:
    """Exit codes (usage error, egosynth error, success, a signal), logs, and a helper that
    runs no Python thread of its own (forking a threaded process is unsafe)."""
    import signal
    import subprocess
    import sys
    import time

    from egosynth import zygote

    cases = [
        ["trajectory", "--no-such-flag"],
        ["trajectory", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "m.npz")],
        ["trajectory", str(DEFAULT_SCENE_SET), "--clips", "1", "--out", str(tmp_path / "t.npz")],
    ]
    cold = [
        subprocess.run([sys.executable, "-m", "egosynth.cli", *c], capture_output=True).returncode
        for c in cases
    ]
    z = zygote.Zygote(zygote.preload_for({"trajectory"}))
    try:
        stages = [z.launch(c, tmp_path / f"{i}.log") for i, c in enumerate(cases)]
        while any(s.poll() is None for s in stages):
            time.sleep(0.05)
        assert [s.returncode for s in stages] == cold == [2, cold[1], 0] and cold[1] != 0
        assert "missing.yaml" in (tmp_path / "1.log").read_text()
        long = z.launch(["trajectory", str(DEFAULT_SCENE_SET), "--clips", "400", "--out",
                         str(tmp_path / "long.npz")], None)  # fmt: skip
        long.send_signal(signal.SIGTERM)
        while long.poll() is None:
            time.sleep(0.05)
        assert long.returncode in (143, -signal.SIGTERM)
        assert not (tmp_path / "long.npz").exists()
        threads = subprocess.run(
            [sys.executable, "-c", f"import threading; "
             f"[__import__(m) for m in {zygote.preload_for({'trajectory'})!r}]; "
             f"print(threading.active_count())"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert threads.stdout.strip() == "1"
    finally:
        z.close()
    assert z.proc.returncode == 0
