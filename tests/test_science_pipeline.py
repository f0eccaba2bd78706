"""pipelines/science.yaml: matrix stages of egosynth.pipeline, the twin's validation split,
and the whole science pipeline at a tiny size (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from egosynth.errors import ConfigError
from egosynth.pipeline import expand_matrix, load_pipeline, pipeline_env, plan_pipeline

REPO = Path(__file__).parent.parent
SCIENCE = REPO / "pipelines" / "science.yaml"


def _write(tmp_path: Path, stages: dict, vars: dict | None = None) -> Path:
    p = tmp_path / "p.yaml"
    doc = {"name": "t", "workdir": str(tmp_path / "work"), "vars": vars or {}, "stages": stages}
    p.write_text(yaml.safe_dump(doc))
    return p


def _plan(path: Path, overrides: dict | None = None):
    pipe = load_pipeline(path, overrides)
    return plan_pipeline(pipe, path, pipeline_env(pipe, path))


STAGES = {
    "make": {
        "command": "trajectory",
        "matrix": {"level": "{levels}"},
        "args": ["x.yaml", "--out", "{workdir}/m{level}.npz"],
        "outputs": ["{workdir}/m{level}.npz"],
    },
    "fit": {
        "command": "trajectory",
        "needs": ["make"],
        "matrix": {"level": "{levels}", "seed": [0, 1]},
        "args": ["x.yaml", "--out", "{workdir}/f{level}_{seed}.npz"],
    },
    "report": {"command": "trajectory", "needs": ["fit"], "args": ["x.yaml", "--out", "r"]},
}


def test_matrix_expands_and_matches_needs_on_shared_keys(tmp_path: Path) -> None:
    planned = {p.name: p for p in _plan(_write(tmp_path, STAGES, {"levels": "0,0.5,1"}))}
    assert set(planned) == {
        *(f"make[level={lv}]" for lv in ("0", "0.5", "1")),
        *(f"fit[level={lv},seed={s}]" for lv in ("0", "0.5", "1") for s in (0, 1)),
        "report",
    }
    fit = planned["fit[level=0.5,seed=1]"]
    assert fit.needs == ["make[level=0.5]"]  # only the make of its own level
    assert fit.args[-1].endswith("f0.5_1.npz")
    assert len(planned["report"].needs) == 6  # no shared key: every expansion
    fps = {p.fingerprint for p in planned.values()}
    assert len(fps) == len(planned)  # every expansion is its own cached stage


def test_set_resizes_a_sweep_and_bad_matrices_are_refused(tmp_path: Path) -> None:
    p = _write(tmp_path, STAGES, {"levels": "0,0.5,1"})
    assert len(_plan(p, {"levels": "0,1"})) == 2 + 4 + 1
    dup = {**STAGES, "make": {**STAGES["make"], "matrix": {"level": "0,0"}}}
    with pytest.raises(ConfigError, match="distinct"):
        _plan(_write(tmp_path, dup, {"levels": "0"}))
    shadow = {**STAGES, "make": {**STAGES["make"], "matrix": {"levels": "0,1"}}}
    with pytest.raises(ConfigError, match="shadows"):
        _plan(_write(tmp_path, shadow, {"levels": "0"}))


def test_extends_merges_vars_and_stages_and_refuses_cycles(tmp_path: Path) -> None:
    base = _write(tmp_path, STAGES, {"levels": "0,0.5,1", "other": "x"})
    child = tmp_path / "child.yaml"
    extra = {"command": "trajectory", "args": ["x.yaml", "--out", "{other}"]}
    child.write_text(
        yaml.safe_dump(
            {
                "name": "c",
                "extends": base.name,
                "vars": {"levels": "0,1"},
                "stages": {"extra": extra},
            }
        )
    )
    pipe = load_pipeline(child)
    assert pipe.name == "c" and pipe.vars == {"levels": "0,1", "other": "x"}
    assert set(pipe.stages) == {"make", "fit", "report", "extra"}
    assert len(_plan(child)) == 2 + 4 + 1 + 1
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump({"name": "l", "extends": "loop.yaml", "stages": STAGES}))
    with pytest.raises(ConfigError, match="cycle"):
        load_pipeline(loop)


def test_experiments_shares_the_science_stages() -> None:
    sci = load_pipeline(SCIENCE)
    exp = load_pipeline(REPO / "pipelines" / "experiments.yaml")
    for name in ("supervised", "harmonized", "widths", "select_lambda", "controls", "summary"):
        assert exp.stages[name] == sci.stages[name]
    assert int(exp.vars["enc_steps"]) > int(sci.vars["enc_steps"])
    assert int(exp.vars["baseline_steps"]) > int(sci.vars["baseline_steps"])
    assert "predictive" in " ".join(map(str, exp.stages["eval_encoders"].args))
    # every ablation arm scored at CPU size is scored at GPU size too
    arms = {str(a) for a in sci.stages["eval_encoders"].args if "={workdir}" in str(a)}
    assert len(arms) >= 6 and arms <= set(map(str, exp.stages["eval_encoders"].args))


def test_science_pipeline_design() -> None:
    """The shipped design: 6 levels x 3 seeds for both sweeps, >= 4 widths, >= 3 seeds per
    ablation arm, controls and a summary that needs every scoring stage."""
    pipe = load_pipeline(SCIENCE)
    expanded = expand_matrix(pipe, SCIENCE, pipeline_env(pipe, SCIENCE))
    names = list(expanded)

    def count(stage: str) -> int:
        return sum(n == stage or n.startswith(stage + "[") for n in names)

    assert count("supervised") == count("harmonized") == 6 * 3
    assert count("widths") >= 4 * 3
    arms = ("enc_reference", "enc_time_shuffled", "enc_whole_frame", "enc_mono", "enc_mesh",
            "enc_toddler")  # fmt: skip
    for arm in arms:
        assert count(arm) >= 3
    env = pipeline_env(pipe, SCIENCE)
    assert env["select_level"] in env["levels"].split(",")
    assert env["width_level"] in env["levels"].split(",")
    summary, _ = expanded["summary"]
    assert {
        "eval_supervised",
        "eval_harmonized",
        "eval_widths",
        "eval_encoders",
        "controls",
    } <= set(summary.needs)
    # the harmonized sweep takes lambda from the validation choice, never a fixed number
    harm, _ = expanded["harmonized[level=0,seed=0]"]
    assert "--harmonize-from" in harm.args and "--harmonize" not in harm.args


def test_twin_validation_split_leaves_train_and_test_images_alone(tmp_path: Path) -> None:
    from test_eval_twin import write_tiny_store

    from egosynth.eval.twin import TwinConfig, export_twin

    # the tiny store has 2 clips per scene: no room for a validation clip
    store = write_tiny_store(tmp_path / "tiny.zarr")
    with pytest.raises(Exception, match="validation"):
        export_twin(
            store,
            tmp_path / "v",
            TwinConfig(stride=1, crop=32, min_object_px=20, validation=True),
            progress=False,
        )


@pytest.mark.slow
@pytest.mark.pipeline
def test_science_pipeline_tiny(tmp_path: Path) -> None:
    """Every stage at a tiny size: outputs exist, the summary has intervals for every
    condition, trend tests for the sweeps, and the controls' known ordering."""
    from egosynth.pipeline import run_pipeline

    overrides = {
        "workdir": str(tmp_path / "science"),
        "set": "scene_configs/sets/demo.yaml",  # mesh renders: no NeRF needed for the plumbing
        "toddler_set": "scene_configs/sets/demo.yaml",
        "clips": "4",
        "seconds": "2",  # 20 frames a clip: 5 windows of 4 (stride 4) per training clip
        "batch": "16",  # every training window of the 4 training clips, less 4
        "mono_batch": "20",  # all 20: one eye gives 80 samples for 64-d whitening
        "levels": "0,0.5,1.0",
        "seeds": "0,1",
        "lambdas": "0.3,3",
        "select_level": "1.0",
        "widths": "4,8,12",
        "width_level": "0.5",
        "baseline_steps": "2",
        "enc_steps": "2",
        "max_images": "12",
        "twin_max": "24",
        "render_workers": "0",  # in the stage's process: Ray has its own tests
        "diag_every": "0",  # the encoders' diagnostics have their own tests (test_train.py)
    }
    results = run_pipeline(SCIENCE, overrides, log=lambda *_: None, jobs=2)
    for r in results:
        assert r.status == "ran" and r.outputs and all(o.exists() for o in r.outputs), r.name
    work = tmp_path / "science"
    info = json.loads((work / "twin_s0" / "twin.json").read_text())
    assert set(info["splits"]) == {"train", "test", "validation"}
    test_clips = set(info["splits"]["test"]["clips"])
    assert not test_clips & set(info["splits"]["validation"]["clips"])
    assert not test_clips & set(info["splits"]["train"]["clips"])
    sel = json.loads((work / "lambda_selection.json").read_text())
    assert sel["split"] == "validation" and sel["chosen"]["harmonize"] in (0.3, 3.0)

    s = json.loads((work / "summary" / "summary.json").read_text())
    conds = {(c["dataset"], c["series"], c["level"], c["scoring"]): c for c in s["conditions"]}
    for lv in (0.0, 0.5, 1.0):
        for series in ("supervised", "harmonized"):
            c = conds[("twin_s0", series, lv, "classifier")]
            assert c["seeds"] == ["0", "1"]
            for m in ("alignment", "accuracy", "accuracy_cue_conflict"):
                assert c[m]["low"] <= c[m]["estimate"] <= c[m]["high"], (series, lv, m)
    for w in (4.0, 8.0, 12.0):
        assert conds[("twin_s0", "width", w, "classifier")]["alignment"]["n_groups"] == 2
    for arm in (
        "slow-reference",
        "slow-time-shuffled",
        "slow-whole-frame",
        "slow-mono",
        "slow-mesh-trained",
        "slow-toddler",
    ):
        for ds in ("twin_s0", "twin_mesh_s0"):
            assert len(conds[(ds, arm, None, "probe")]["seeds"]) == 2
    trends = {(t["series"], t["measure"]) for t in s["trends"]}
    assert {
        ("supervised", "alignment"),
        ("harmonized", "alignment"),
        ("width", "alignment"),
        ("supervised", "accuracy_cue_conflict"),
    } <= trends
    ceiling = conds[("twin_s0", "noise-ceiling", None, "control")]["alignment"]
    shuffled = conds[("twin_s0", "shuffled-human", None, "control")]["alignment"]
    assert ceiling["low"] > shuffled["high"]  # the ceiling sits clearly above the null floor
    assert ("twin_s0", "random-init", None, "classifier") in conds
    assert (work / "summary" / "dose_response.png").stat().st_size > 10_000
    assert "supervised" in (work / "summary" / "summary.md").read_text()
