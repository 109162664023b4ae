"""Paired comparisons on constructed results tables whose right answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harmonia import statistics
from harmonia.report import MetricInfo, gap_comparison
from harmonia.results import HEAD_COLUMNS, TAIL_COLUMNS, summarize

DOMAINS = ("A", "B")
STRENGTH = "cohort.synthetic.strength"


def table(points: list[dict], seeds: int, value, metric: str = "dice") -> pd.DataFrame:
    """A results.csv-shaped frame: ``points`` give each sweep point's mitigations and swept values;
    ``value(point, seed, train_domain, same)`` gives each row's value (``same``: tested on the training domain)."""
    swept = list(dict.fromkeys(k for p in points for k in p if k != "mitigations"))
    rows = []
    for sweep_id, point in enumerate(points):
        for seed in range(seeds):
            for train in DOMAINS:
                for test in DOMAINS:
                    rows.append(
                        {
                            "cohort": "toy",
                            "modality": "MR",
                            "data": "synthetic",
                            "sweep_id": sweep_id,
                            **{k: point.get(k) for k in swept},
                            "mitigations": point["mitigations"],
                            "seed": seed,
                            "train_domain": train,
                            "test_domain": test,
                            "metric": metric,
                            "value": value(point, seed, train, train == test),
                            "n": 10,
                        }
                    )
    return pd.DataFrame(rows, columns=HEAD_COLUMNS + swept + TAIL_COLUMNS)


def noise(seed: int, train: str, scale: float, salt: int = 0) -> float:
    """A reproducible draw for one (seed, training domain) cell, shared by every sweep point that uses it."""
    return scale * np.random.default_rng([seed, DOMAINS.index(train), salt]).standard_normal()


# per-seed jitter of the true effect; zero-sum, so the mean over the six seeds is the effect itself
JITTER = [0.01, -0.01, 0.02, -0.02, 0.005, -0.005]


def by_setting(comparisons: list[statistics.Comparison]) -> dict[int, statistics.Comparison]:
    return {c.setting: c for c in comparisons}


def test_mitigations_by_strength_sweep_pairs_each_setting_with_the_baseline_of_its_strength():
    """DANN narrows the gap by 0.10 at both strengths; the plain model's gap is 0.2 at 0.5 and 0.5 at 1.0.

    Compared with sweep point 0 (the plain model at strength 0.5), DANN at strength 1.0 would seem to widen the gap by 0.3.
    """
    points = [
        {"mitigations": "none", STRENGTH: 0.5},
        {"mitigations": "none", STRENGTH: 1.0},
        {"mitigations": "dann", STRENGTH: 0.5},
        {"mitigations": "dann", STRENGTH: 1.0},
    ]
    gap = {0.5: 0.2, 1.0: 0.5}

    def value(point, seed, train, same):
        base_same = 0.8 + noise(seed, train, 0.03)
        if same:
            return base_same
        base_other = base_same - gap[point[STRENGTH]] + noise(seed, train, 0.03, salt=1)
        return base_other + (0.10 + JITTER[seed] if point["mitigations"] == "dann" else 0.0)

    results = table(points, seeds=6, value=value)
    assert statistics.baselines(results) == {2: 0, 3: 1}
    comparisons = by_setting(statistics.compare(results, "dice", higher_is_better=True))
    for setting in (2, 3):
        narrowing = comparisons[setting].narrowing
        assert narrowing.n == 6  # seeds, not (seed, training domain) cells
        assert narrowing.mean == pytest.approx(0.10)
        assert narrowing.low < 0.10 < narrowing.high and narrowing.low > 0
        assert comparisons[setting].verdict == statistics.NARROWED
        assert comparisons[setting].same.mean == pytest.approx(0.0)
        assert not comparisons[setting].same_worse
    lines = gap_comparison(results, MetricInfo("dice"))
    assert any(line.startswith(f"dann ({STRENGTH}=1.0) vs none ({STRENGTH}=1.0): narrowed the gap") for line in lines)
    assert not any("widened" in line for line in lines)


def test_a_setting_without_a_baseline_of_its_values_is_not_compared():
    points = [
        {"mitigations": "none", STRENGTH: 0.5},
        {"mitigations": "dann", STRENGTH: 0.5},
        {"mitigations": "dann", STRENGTH: 1.0},
    ]
    results = table(points, seeds=3, value=lambda p, seed, train, same: 0.8 if same else 0.6 + 0.01 * seed)
    assert statistics.baselines(results) == {1: 0, 2: None}
    comparison = by_setting(statistics.compare(results, "dice", True))[2]
    assert comparison.verdict == statistics.NO_BASELINE and comparison.narrowing is None
    line = gap_comparison(results, MetricInfo("dice"))[-1]
    assert line == (
        f"dann ({STRENGTH}=1.0): no comparison: no sweep point without mitigations has the same cohort, {STRENGTH}."
    )


def test_swept_mitigation_parameters_do_not_split_the_pairing():
    points = [
        {"mitigations": "none", "mitigations.0.params.weight": None},
        {"mitigations": "dann", "mitigations.0.params.weight": 0.1},
        {"mitigations": "dann", "mitigations.0.params.weight": 1.0},
    ]
    results = table(points, seeds=2, value=lambda p, seed, train, same: 0.8 if same else 0.6)
    assert statistics.baselines(results) == {1: 0, 2: 0}


def test_a_lower_is_better_metric_that_narrows_is_narrowed():
    """Hausdorff distance: same 5 mm, other 9 mm for the baseline and 7 mm with the mitigation.

    The gap (other − same) went from 4 to 2 mm; Δ fell by 2, which read as a higher-is-better change is a widening.
    """
    points = [{"mitigations": "none"}, {"mitigations": "dann"}]

    def value(point, seed, train, same):
        if same:
            return 5.0 + noise(seed, train, 0.3)
        return 9.0 + noise(seed, train, 0.3, salt=1) - (2.0 + JITTER[seed] if point["mitigations"] == "dann" else 0.0)

    results = table(points, seeds=6, value=value, metric="hd95")
    right = statistics.compare(results, "hd95", higher_is_better=False)[0]
    assert right.verdict == statistics.NARROWED and right.narrowing.mean == pytest.approx(2.0)
    assert right.other.mean == pytest.approx(-2.0)
    assert statistics.compare(results, "hd95", higher_is_better=True)[0].verdict == statistics.WIDENED
    line = gap_comparison(results, MetricInfo("hd95", higher_is_better=False))[-1]
    assert line.startswith("dann vs none: narrowed the gap in hd95 by 2.000, 95% CI +")


def test_pure_noise_is_no_clear_change():
    points = [{"mitigations": "none"}, {"mitigations": "noise"}]
    salt = {"none": 2, "noise": 3}

    def value(point, seed, train, same):
        return (0.8 if same else 0.6) + noise(seed, train, 0.02, salt=salt[point["mitigations"]] + 10 * same)

    comparison = statistics.compare(table(points, seeds=8, value=value), "dice", True)[0]
    assert comparison.narrowing.low < 0 < comparison.narrowing.high
    assert comparison.verdict == statistics.NO_CLEAR_CHANGE


def test_identical_settings_are_no_clear_change():
    """A mitigation that changed nothing: every paired difference is exactly 0 (scipy's t-test is undefined)."""
    points = [{"mitigations": "none"}, {"mitigations": "identity"}]
    results = table(
        points, seeds=4, value=lambda p, seed, train, same: (0.8 if same else 0.6) + noise(seed, train, 0.05)
    )
    comparison = statistics.compare(results, "dice", True)[0]
    assert (comparison.narrowing.low, comparison.narrowing.high, comparison.narrowing.p) == (0.0, 0.0, 1.0)
    assert comparison.verdict == statistics.NO_CLEAR_CHANGE


def test_holm_formula():
    # sorted: 0.01, 0.03, 0.04 -> 3·0.01, 2·0.03, max(0.06, 1·0.04); capped at 1
    assert statistics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_holm_adjusts_the_p_values_of_every_setting_of_a_report_and_decides_the_verdict():
    """Three settings whose per-seed narrowing is given; b's raw p (0.034) is below 0.05, its Holm-adjusted p is not."""
    narrowing = {
        "a": [0.10 + j for j in JITTER],
        "b": [0.03, 0.01, 0.02, -0.005, 0.025, 0.01],
        "c": [0.01, -0.02, 0.005, 0.002, -0.01, 0.015],
    }
    points = [{"mitigations": "none"}] + [{"mitigations": name} for name in narrowing]

    def value(point, seed, train, same):
        if same:
            return 0.8 + noise(seed, train, 0.03)
        gain = 0.0 if point["mitigations"] == "none" else narrowing[point["mitigations"]][seed]
        return 0.6 + noise(seed, train, 0.03, salt=1) + gain

    results = table(points, seeds=6, value=value)
    comparisons = statistics.compare(results, "dice", True)
    raw = [stats.ttest_1samp(v, 0.0).pvalue for v in narrowing.values()]
    assert [c.narrowing.p for c in comparisons] == pytest.approx(raw)
    assert raw[0] < raw[1] < 0.05 < raw[2]
    holm = [3 * raw[0], max(3 * raw[0], 2 * raw[1]), max(3 * raw[0], 2 * raw[1], raw[2])]
    assert [c.p_adjusted for c in comparisons] == pytest.approx(holm)
    assert [c.verdict for c in comparisons] == [
        statistics.NARROWED,
        statistics.NO_CLEAR_CHANGE,
        statistics.NO_CLEAR_CHANGE,
    ]
    assert comparisons[1].narrowing.low > 0  # its own CI excludes 0; the correction is what holds it back
    line = gap_comparison(results, MetricInfo("dice"))[2]
    assert line.startswith("b vs none: no clear change in the gap in dice (narrowing +0.015), 95% CI +0.")
    assert f"(paired t over seeds, n = 6; Holm-adjusted p = {holm[1]:.3f} across 3 settings)" in line


def test_a_gap_narrowed_by_losing_same_domain_accuracy_is_flagged():
    points = [{"mitigations": "none"}, {"mitigations": "blur"}]

    def value(point, seed, train, same):
        base = (0.8 if same else 0.6) + noise(seed, train, 0.03, salt=int(same))
        return base - (0.10 + JITTER[seed] if same and point["mitigations"] == "blur" else 0.0)

    results = table(points, seeds=6, value=value)
    comparison = statistics.compare(results, "dice", True)[0]
    assert comparison.verdict == statistics.NARROWED and comparison.same_worse
    assert comparison.other.mean == pytest.approx(0.0)
    line = gap_comparison(results, MetricInfo("dice"))[-1]
    assert "narrowed the gap in dice by 0.100" in line and ", but same-domain dice fell by 0.100 (95% CI -" in line


def test_one_seed_is_not_enough_seeds():
    points = [{"mitigations": "none"}, {"mitigations": "dann"}]
    results = table(
        points, seeds=1, value=lambda p, seed, train, same: 0.8 if same else 0.5 + 0.1 * (p["mitigations"] == "dann")
    )
    comparison = statistics.compare(results, "dice", True)[0]
    assert comparison.verdict == statistics.FEW_SEEDS and comparison.narrowing.n == 1
    assert np.isnan(comparison.narrowing.low) and np.isnan(comparison.p_adjusted)
    lines = gap_comparison(results, MetricInfo("dice"))
    assert lines[0] == "Baseline none: mean Δ -0.300 (other − same dice) over 1 seed; not enough seeds for a CI."
    assert lines[1] == "dann vs none: narrowing of the gap +0.100 on 1 seed; not enough seeds for a CI or a verdict."


def test_baseline_line_states_its_interval():
    points = [{"mitigations": "none"}]
    results = table(points, seeds=5, value=lambda p, seed, train, same: 0.8 if same else 0.6 + noise(seed, train, 0.02))
    (line,) = gap_comparison(results, MetricInfo("dice"))
    delta = statistics.shift(statistics.cell_values(results, "dice"), 0)
    assert delta.n == 5 and delta.high < 0
    assert line == (
        f"Setting none: mean Δ {delta.mean:+.3f} (other − same dice), 95% CI {delta.low:+.3f} to {delta.high:+.3f} "
        "(t over 5 seeds): other-domain dice was worse than same-domain, a cross-domain loss."
    )


def test_summary_has_the_sd_of_the_per_seed_delta():
    points = [{"mitigations": "none"}]
    deltas = [-0.1, -0.2, -0.3]
    results = table(
        points, seeds=3, value=lambda p, seed, train, same: 0.8 + 0.1 * seed + (0 if same else deltas[seed])
    )
    row = summarize(results).iloc[0]
    assert row["delta"] == pytest.approx(-0.2)
    assert row["delta_sd"] == pytest.approx(0.1)
    assert row["same_sd"] == pytest.approx(0.1)


def test_a_run_without_a_plain_point_describes_every_setting_and_compares_none():
    points = [{"mitigations": "dann"}, {"mitigations": "noise"}]
    results = table(points, seeds=3, value=lambda p, seed, train, same: 0.8 if same else 0.6 + 0.01 * seed)
    lines = gap_comparison(results, MetricInfo("dice"))
    assert [line.split(":")[0] for line in lines] == ["Setting dann", "Setting noise", "dann", "noise"]
    assert all("no comparison" in line for line in lines[2:])
