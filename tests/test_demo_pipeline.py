"""pipelines/demo.yaml end to end on a tiny configuration, then a cached rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egosynth.commands.demo import DEMO_PIPELINE
from egosynth.pipeline import load_pipeline, pipeline_env, run_pipeline
from egosynth.store import ClipStore

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


def test_demo_pipeline_tiny_then_rerun_skips(tmp_path: Path) -> None:
    overrides = {
        "workdir": str(tmp_path / "demo"),
        "clips": "2",
        "seconds": "4",
        "steps": "2",
        "baseline_steps": "2",
        "render_workers": "0",  # in the stage's process: Ray has its own tests
        "twin_max": "12",  # images per twin split: enough for every stage's plumbing
    }
    results = run_pipeline(DEMO_PIPELINE, overrides, log=lambda *_: None, jobs=2)
    pipe = load_pipeline(DEMO_PIPELINE, overrides)
    assert {r.name for r in results} == set(pipe.stages)
    assert all(r.status == "ran" for r in results)
    for r in results:
        assert r.outputs and all(o.exists() for o in r.outputs), r.name
    work = Path(pipeline_env(pipe, DEMO_PIPELINE)["workdir"])
    store = ClipStore(work / "store.zarr")  # the main data: NeRF renders
    assert len(store.clip_ids()) == 4  # 2 scenes x 2 clips, all complete
    mesh = ClipStore(work / "store_mesh.zarr")  # the control: the same rooms' meshes
    for st, backend in ((store, "nerf"), (mesh, "mesh")):
        assert {s["backend"] for s in st.attrs["set_config"]["scenes"]} == {backend}
    report = json.loads((work / "eval" / "report.json").read_text())
    models = {row["model"] for row in report["results"]}
    assert {"slow", "predictive", "supervised-s0", "supervised-s1"} <= models
    assert {row["dataset"] for row in report["results"]} == {"twin_s0", "twin_s1", "twin_mesh_s0"}
    fidelity = json.loads((work / "fidelity.json").read_text())["scenes"]
    assert len(fidelity) == 2  # both NeRF rooms, against their meshes at the stored poses
    for row in fidelity:  # loose floors: a broken pose or label convention scores far lower
        assert row["psnr_db"] > 18 and row["depth_median_rel_error"] < 0.1
        assert row["instance_iou"] > 0.5
    assert (work / "eval" / "alignment_vs_accuracy.png").is_file()

    again = run_pipeline(DEMO_PIPELINE, overrides, log=lambda *_: None)
    assert [r.status for r in again] == ["skipped"] * len(again)
