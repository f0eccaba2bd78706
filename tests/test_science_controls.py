"""Controls (egosynth.eval.controls) and the summary (egosynth.eval.summary) against
synthetic known answers: the human map itself scores 1 / 0.65753, an independent
perturbation of it scores at the noise ceiling, shuffled maps score near 0, and a dose that
raises a metric is found by the trend test while a null dose is not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.eval.controls import (
    Perturbation,
    centre_bias_maps,
    derangement,
    map_controls,
    morph,
    noise_ceiling,
    part_mask,
    perturbed_map,
)
from egosynth.eval.metrics import HUMAN_SPEARMAN_CEILING, preprocess_clickme_heatmaps
from egosynth.eval.metrics import score_saliency as score
from egosynth.eval.stats import bootstrap_mean
from egosynth.eval.summary import (
    markdown,
    parse_model_name,
    read_reports,
    summarize_rows,
)
from egosynth.eval.twin import human_map

SIGMA = 6.0


def _raw_maps(n: int, seed: int = 0) -> np.ndarray:
    """Twin-like raw heatmaps: blurred rectangles ("parts") anywhere in the 256 frame."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(12, 40, size=2)
        y, x = rng.integers(0, 256 - h), rng.integers(0, 256 - w)
        m = np.zeros((256, 256), bool)
        m[y : y + h, x : x + w] = True
        out.append(human_map(m, m, SIGMA))
    return np.stack(out)


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return _raw_maps(24)


def test_centre_bias_peaks_at_the_centre() -> None:
    g = centre_bias_maps(2, size=224, sigma=0.25)
    assert g.shape == (2, 224, 224) and np.array_equal(g[0], g[1])
    peak = np.unravel_index(np.argmax(g[0]), g[0].shape)
    assert peak in {(111, 111), (111, 112), (112, 111), (112, 112)}
    assert g[0, 0, 0] < 0.1 * g[0].max()


@given(n=st.integers(2, 60), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=40, deadline=None)
def test_derangement_has_no_fixed_point(n: int, seed: int) -> None:
    p = derangement(n, seed)
    assert sorted(p.tolist()) == list(range(n)) and not np.any(p == np.arange(n))


def test_morph_grows_and_shrinks() -> None:
    m = np.zeros((20, 20), bool)
    m[8:12, 8:12] = True
    assert morph(m, 1).sum() == 16 + 4 * 4  # a diamond step adds one pixel row per side
    assert morph(m, -1).sum() == 4 and morph(m, 0).sum() == 16
    assert morph(m, 2)[m].all() and not morph(m, -1)[~m].any()


def test_part_mask_recovers_the_mask() -> None:
    m = np.zeros((256, 256), bool)
    m[100:140, 60:120] = True
    rec = part_mask(human_map(m, m, SIGMA))
    # the half-peak contour of a blurred rectangle is its edge, up to the rounded corners
    assert (rec ^ m).sum() < 0.05 * m.sum()


def test_perturbations_are_independent_and_bounded(raw: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    a, b = perturbed_map(raw[0], rng, SIGMA), perturbed_map(raw[0], rng, SIGMA)
    assert a.dtype == np.uint8 and a.max() == 255 and not np.array_equal(a, b)
    none = perturbed_map(raw[0], np.random.default_rng(0), SIGMA, Perturbation(0, 0, 0.0))
    assert np.abs(none.astype(int) - raw[0].astype(int)).max() <= 30  # mask recovery only


def test_known_answers_identity_ceiling_and_shuffled(raw: np.ndarray) -> None:
    human = preprocess_clickme_heatmaps(raw)
    # a model whose saliency IS the human map: Spearman 1 on every image
    ident = score(human, human)
    assert ident.alignment == pytest.approx(1 / HUMAN_SPEARMAN_CEILING)
    rows = {r["model"]: r for r in map_controls(human, raw, SIGMA, seed=1)}
    assert set(rows) == {"centre-bias", "shuffled-human", "noise-ceiling"}
    ceiling = rows["noise-ceiling"]["alignment_score"]
    shuffled = rows["shuffled-human"]["alignment_score"]
    # the ceiling is high but below the identity; shuffled maps sit near 0, far below it
    assert 0.6 / HUMAN_SPEARMAN_CEILING < ceiling < 1 / HUMAN_SPEARMAN_CEILING
    assert abs(shuffled) < 0.25 and shuffled < ceiling - 0.5
    # a "human-like model": a third, independent perturbation scores at the ceiling
    model = preprocess_clickme_heatmaps(
        np.stack(
            [perturbed_map(h, np.random.default_rng(99 + i), SIGMA) for i, h in enumerate(raw)]
        )
    )
    like = score(model, human)  # against the unperturbed map: an easier target
    iv = bootstrap_mean(noise_ceiling(raw, SIGMA, seed=2).spearman, n_boot=500)
    assert like.spearman.mean() >= iv.low - 0.02
    assert len(rows["noise-ceiling"]["per_image"]["spearman"]) == len(raw)


def test_parse_model_name() -> None:
    assert parse_model_name("supervised@0.25#2") == ("supervised", 0.25, "2")
    assert parse_model_name("harmonized@1#0") == ("harmonized", 1.0, "0")
    assert parse_model_name("slow-shuffled#1") == ("slow-shuffled", None, "1")
    assert parse_model_name("supervised-s1", row_seed=7) == ("supervised-s1", None, "7")
    assert parse_model_name("a@b#3") == ("a@b", None, "3")


def _rows(series: str, effect: float, levels, seeds=3, n=40, seed=0) -> list[dict]:
    """Rows like eval reports: per-image Spearman = 0.1 + effect * level + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for lv in levels:
        for s in range(seeds):
            sp = 0.1 + effect * lv + rng.normal(0, 0.1, size=n)
            correct = rng.random(n) < 0.5 + 0.4 * lv * (effect != 0)
            rows.append(
                {
                    "dataset": "twin",
                    "model": f"{series}@{lv}#{s}",
                    "scoring": "classifier",
                    "kind": "classifier",
                    "per_image": {
                        "spearman": sp.tolist(),
                        "correct": correct.tolist(),
                        "cue_conflict": (np.arange(n) % 2 == 0).tolist(),
                    },
                }
            )
    return rows


LEVELS = (0, 0.25, 0.5, 0.75, 0.9, 1.0)


def test_summary_intervals_and_trends_find_a_dose_and_not_a_null() -> None:
    rows = _rows("dose", 0.3, LEVELS) + _rows("null", 0.0, LEVELS, seed=1)
    rows.append(
        {
            "dataset": "twin",
            "model": "noise-ceiling",
            "scoring": "control",
            "kind": "control",
            "seed": 0,
            "per_image": {"spearman": [0.5] * 10},
        }
    )
    s = summarize_rows(rows, n_boot=300, n_perm=2000)
    conds = {(c["series"], c["level"]): c for c in s["conditions"]}
    assert len(conds) == 2 * len(LEVELS) + 1
    for lv in LEVELS:  # the interval covers the true alignment of each level
        iv = conds[("dose", lv)]["alignment"]
        true = (0.1 + 0.3 * lv) / HUMAN_SPEARMAN_CEILING
        assert iv["low"] <= true <= iv["high"] and iv["n_groups"] == 3
        assert iv["low"] < iv["estimate"] < iv["high"]
    assert conds[("noise-ceiling", None)]["alignment"]["low"] == pytest.approx(
        0.5 / HUMAN_SPEARMAN_CEILING
    )
    trends = {(t["series"], t["measure"]): t for t in s["trends"]}
    assert trends[("dose", "alignment")]["rho"] > 0.8
    assert trends[("dose", "alignment")]["p_value"] < 0.01
    assert trends[("dose", "accuracy")]["p_value"] < 0.05
    assert trends[("null", "alignment")]["p_value"] > 0.05
    assert ("noise-ceiling", "alignment") not in trends  # no levels, no trend
    md = markdown(s)
    assert "| twin | dose | 0.25 | classifier | 3 |" in md and "Spearman rho" in md


def test_summary_refuses_duplicate_seeds() -> None:
    from egosynth.errors import EgosynthError

    rows = _rows("dose", 0.3, (0,), seeds=1) * 2
    with pytest.raises(EgosynthError, match="twice"):
        summarize_rows(rows, n_boot=10)


def test_write_summary_files_and_cli(tmp_path: Path) -> None:
    from egosynth.cli import main

    centre = {
        "dataset": "twin",
        "model": "centre-bias",
        "scoring": "control",
        "kind": "control",
        "per_image": {"spearman": [0.2, 0.3, 0.25]},
    }
    rows = [*_rows("supervised", 0.3, LEVELS), centre]
    rep = tmp_path / "a" / "report.json"
    rep.parent.mkdir()
    rep.write_text(json.dumps({"results": rows}))
    assert len(read_reports([rep.parent])) == len(rows)
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps([{"name": "x", "accuracy": 0.7, "alignment": 0.4}]))
    out = tmp_path / "summary"
    assert (
        main(
            [
                "eval",
                "summarize",
                str(rep.parent),
                "--out",
                str(out),
                "--n-boot",
                "200",
                "--reference",
                str(ref),
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert {Path(f).name for f in s["figures"]} == {
        "dose_response.png",
        "alignment_vs_accuracy.png",
    }
    for f in s["figures"]:
        assert Path(f).stat().st_size > 10_000
    assert "supervised" in (out / "summary.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["eval", "summarize", str(bad), "--out", str(out)]) != 0


def test_per_image_values_line_up_with_the_test_files() -> None:
    from egosynth.eval.evaluate import SplitData, per_image
    from egosynth.eval.metrics import AlignmentScores

    meta = [{"label": 0, "cue": 0}, {"label": 1, "cue": 2}, {"label": 2, "cue": 2}]
    data = SplitData(
        np.zeros((3, 2, 2, 3), np.float32),
        np.zeros((3, 2, 2), np.float32),
        np.array([0, 1, 2]),
        ["a", "b", "c"],
        meta,
    )
    scores = AlignmentScores(np.array([0.1, np.nan, 0.3]), np.zeros(3), np.zeros(3))
    out = per_image(scores, data, np.array([0, 0, 2]))
    assert out["correct"] == [True, False, True]
    assert out["cue_conflict"] == [False, True, False]
    assert out["spearman"][0] == 0.1 and np.isnan(out["spearman"][1])
    # through JSON (NaN -> null) and back into the summary's alignment values
    from egosynth.eval.report import _jsonable
    from egosynth.eval.summary import _values

    row = json.loads(json.dumps(_jsonable({"per_image": out})))
    v = _values(row, "alignment")
    assert np.isnan(v[1]) and v[2] == pytest.approx(0.3 / HUMAN_SPEARMAN_CEILING)
    assert _values(row, "accuracy_cue_conflict").tolist() == [0.0]
    assert "correct" not in per_image(scores, data)  # label-free rows have no correctness
