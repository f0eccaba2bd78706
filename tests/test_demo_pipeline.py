"""pipelines/demo.yaml end to end on a tiny configuration, then a cached rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egosynth.commands.demo import DEMO_PIPELINE
from egosynth.config import DEFAULT_SCENE_SET
from egosynth.pipeline import load_pipeline, pipeline_env, run_pipeline
from egosynth.store import ClipStore

pytestmark = pytest.mark.slow


def test_demo_pipeline_tiny_then_rerun_skips(tmp_path: Path) -> None:
    overrides = {
        "workdir": str(tmp_path / "demo"),
        "set": str(DEFAULT_SCENE_SET),
        "clips": "2",
        "seconds": "4",
        "steps": "2",
        "baseline_steps": "2",
    }
    results = run_pipeline(DEMO_PIPELINE, overrides, log=lambda *_: None, jobs=2)
    pipe = load_pipeline(DEMO_PIPELINE, overrides)
    assert {r.name for r in results} == set(pipe.stages)
    assert all(r.status == "ran" for r in results)
    for r in results:
        assert r.outputs and all(o.exists() for o in r.outputs), r.name
    work = Path(pipeline_env(pipe, DEMO_PIPELINE)["workdir"])
    store = ClipStore(work / "store.zarr")
    assert len(store.clip_ids()) == 4  # 2 scenes x 2 clips, all complete
    report = json.loads((work / "eval" / "report.json").read_text())
    models = {row["model"] for row in report["results"]}
    assert {"slow", "predictive", "supervised-s0", "supervised-s1"} <= models
    assert {row["dataset"] for row in report["results"]} == {"twin_s0", "twin_s1"}
    assert (work / "eval" / "alignment_vs_accuracy.png").is_file()

    again = run_pipeline(DEMO_PIPELINE, overrides, log=lambda *_: None)
    assert [r.status for r in again] == ["skipped"] * len(again)
