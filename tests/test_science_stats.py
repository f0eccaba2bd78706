"""egosynth.eval.stats: bootstrap intervals and the monotonic-trend test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egosynth.eval.stats import (
    bootstrap_mean,
    hierarchical_bootstrap,
    spearman_rho,
    spearman_trend,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@given(value=finite, sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5))
@settings(max_examples=30, deadline=None)
def test_interval_of_a_constant_is_a_point(value: float, sizes: list[int]) -> None:
    iv = hierarchical_bootstrap([np.full(n, value) for n in sizes], n_boot=200, seed=1)
    assert iv.estimate == pytest.approx(value, abs=1e-9)
    assert iv.low == pytest.approx(value, abs=1e-9) and iv.high == pytest.approx(value, abs=1e-9)
    assert iv.n_groups == len(sizes) and iv.n_values == sum(sizes)


@given(
    groups=st.lists(st.lists(finite, min_size=1, max_size=20), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=30, deadline=None)
def test_interval_contains_estimate_and_is_deterministic(groups, seed: int) -> None:
    a = hierarchical_bootstrap(groups, n_boot=100, seed=seed)
    b = hierarchical_bootstrap(groups, n_boot=100, seed=seed)
    assert a == b
    assert a.low <= a.estimate <= a.high
    assert a.estimate == pytest.approx(np.mean([np.mean(g) for g in groups]))
    lo, hi = min(map(min, groups)), max(map(max, groups))
    assert lo - 1e-9 <= a.low and a.high <= hi + 1e-9


def test_coverage_of_the_true_mean_is_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    reps, hits = 300, 0
    for i in range(reps):
        x = rng.normal(2.0, 1.0, size=60)
        iv = bootstrap_mean(x, n_boot=400, seed=i)
        hits += iv.low <= 2.0 <= iv.high
    # The percentile bootstrap undercovers slightly at n = 60; binomial sd at 300 reps ~ 1.3 %.
    assert 0.89 <= hits / reps <= 0.99


def test_seed_variation_widens_the_interval() -> None:
    # Same images scores, but seeds that disagree: the hierarchical interval must be wider
    # than an image-only interval over the pooled values, and must cover the seed spread.
    rng = np.random.default_rng(3)
    groups = [rng.normal(mu, 0.05, size=100) for mu in (0.1, 0.4, 0.7)]
    hier = hierarchical_bootstrap(groups, n_boot=1000, seed=0)
    flat = bootstrap_mean(np.concatenate(groups), n_boot=1000, seed=0)
    assert (hier.high - hier.low) > 3 * (flat.high - flat.low)
    assert hier.low < 0.3 and hier.high > 0.5


def test_nan_values_are_dropped_and_counted() -> None:
    iv = hierarchical_bootstrap([[1.0, np.nan, 1.0], [np.nan]], n_boot=50)
    assert iv.estimate == 1.0 and iv.n_nan == 2 and iv.n_groups == 1 and iv.n_values == 2
    empty = hierarchical_bootstrap([[np.nan]], n_boot=50)
    assert math.isnan(empty.estimate) and empty.n_groups == 0


def test_scaled_interval() -> None:
    iv = bootstrap_mean([0.1, 0.2, 0.3], n_boot=200).scaled(-2.0)
    assert iv.low <= iv.estimate <= iv.high and iv.estimate == pytest.approx(-0.4)


@given(
    x=st.lists(st.integers(0, 5), min_size=3, max_size=15),
    y=st.lists(st.integers(0, 5), min_size=3, max_size=15),
)
@settings(max_examples=50, deadline=None)
def test_rho_matches_scipy(x: list[int], y: list[int]) -> None:
    from scipy.stats import spearmanr

    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    ours = spearman_rho(x, y)
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_strictly_increasing_gives_the_minimum_exact_p(n: int) -> None:
    t = spearman_trend(range(n), np.arange(n) ** 2, alternative="increasing")
    assert t.exact and t.rho == pytest.approx(1.0)
    assert t.p_value == pytest.approx(1 / math.factorial(n))
    two = spearman_trend(range(n), -np.arange(n), alternative="two-sided")
    assert two.rho == pytest.approx(-1.0)
    assert two.p_value == pytest.approx(2 / math.factorial(n))
    # the wrong direction is as unsurprising as it gets
    assert spearman_trend(range(n), np.arange(n), alternative="decreasing").p_value == 1.0


def test_monte_carlo_minimum_p_and_ties_in_levels() -> None:
    # 6 levels x 3 seeds (the dose-response design): levels are tied within a level.
    levels = np.repeat([0, 0.25, 0.5, 0.75, 0.9, 1.0], 3)
    values = np.arange(levels.size, dtype=float)  # strictly increasing with the level
    t = spearman_trend(levels, values, alternative="increasing", n_perm=2000, seed=0)
    assert not t.exact and t.n == 18
    assert t.rho > 0.97
    assert t.p_value == pytest.approx(1 / 2001)
    assert spearman_trend(levels, values, n_perm=2000, seed=0) == spearman_trend(
        levels, values, n_perm=2000, seed=0
    )


def test_permuted_null_gives_uniform_p_values() -> None:
    rng = np.random.default_rng(11)
    levels = np.repeat([0, 1, 2, 3], 3)
    ps = np.array(
        [
            spearman_trend(levels, rng.normal(size=12), n_perm=300, seed=i).p_value
            for i in range(200)
        ]
    )
    # uniform on (0, 1]: mean 0.5, about 5 % below 0.05, about half below 0.5
    assert 0.42 <= ps.mean() <= 0.58
    assert np.mean(ps < 0.05) <= 0.11
    assert 0.38 <= np.mean(ps < 0.5) <= 0.62


def test_trend_input_checks() -> None:
    with pytest.raises(ValueError, match="alternative"):
        spearman_trend([1, 2], [1, 2], alternative="up")
    with pytest.raises(ValueError, match="differ"):
        spearman_trend([1, 2, 3], [1, 2])
    flat = spearman_trend([1, 2, 3], [5, 5, 5])
    assert math.isnan(flat.rho) and math.isnan(flat.p_value)


# --------------------------------------------------------------------------- reference points
def test_shipped_reference_points_parse_and_bad_ones_are_one_line_errors(tmp_path) -> None:
    import json

    from egosynth.cli import main
    from egosynth.config import REPO_ROOT
    from egosynth.errors import EgosynthError
    from egosynth.eval.summary import parse_reference

    shipped = REPO_ROOT / "docs" / "data" / "harmonization_reference.json"
    ref = parse_reference(json.loads(shipped.read_text()), shipped)
    assert len(ref) >= 4 and all(r["source"] and 0 < r["alignment"] < 1 for r in ref)
    assert parse_reference([{"name": "m", "alignment": 0.5, "accuracy": 0.7}], "f")[0] == {
        "name": "m", "alignment": 0.5, "accuracy": 0.7, "source": ""
    }  # fmt: skip
    bad = [
        ({"name": "m"}, "'alignment' = None"),
        ({"name": "", "alignment": 0.3}, "'name'"),
        ({"name": "m", "alignment": float("nan")}, "'alignment' = nan"),
        ({"name": "m", "alignment": 0.3, "accuracy": 1.5}, "'accuracy' = 1.5"),
        ({"name": "m", "alignment": True}, "'alignment' = True"),
        ("m", "expected an object"),
    ]
    for entry, msg in bad:
        with pytest.raises(EgosynthError, match=f"f.json: entry 1.*{msg}"):
            parse_reference([{"name": "ok", "alignment": 0.1}, entry], "f.json")
    junk = tmp_path / "ref.json"
    junk.write_bytes(b"\x00\xff{[")
    assert main(["eval", "summarize", str(tmp_path), "--out", str(tmp_path / "s"),
                 "--reference", str(junk)]) != 0  # fmt: skip
    assert not (tmp_path / "s").exists()
