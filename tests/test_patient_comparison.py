"""Per-patient comparisons with the baseline and the Bland–Altman points, from patients.csv."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from harmonia import figures, patient_comparison

DICE = {"none": [0.80, 0.70, 0.90, 0.60], "ct_standardizer": [0.85, 0.72, 0.95, 0.66]}


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """results.csv and patients.csv rows of a baseline and a setting tested on M40, four patients, one seed."""
    results, patients = [], []
    for sweep_id, (method, values) in enumerate(DICE.items()):
        results.append(
            {
                "cohort": "ct_recon",
                "modality": "CT",
                "data": "synthetic",
                "mitigations": method,
                "sweep_id": sweep_id,
                "seed": 0,
                "train_domain": "M80",
                "test_domain": "M40",
                "metric": "dice",
                "value": 0.0,
                "n": 4,
            }
        )
        for i, value in enumerate(values):
            key = {"sweep_id": sweep_id, "seed": 0, "train_domain": "M80", "test_domain": "M40", "patient": f"P{i}"}
            patients += [
                {**key, "metric": "dice", "value": value},
                {**key, "metric": "dice_liver", "value": value},  # a one-class task: a copy of dice
                {**key, "metric": "volume_predicted", "value": 100 * (1 + i) * (1.1 if sweep_id else 1.3)},
                {**key, "metric": "volume_reference", "value": 100 * (1 + i)},
            ]
    return pd.DataFrame(results), pd.DataFrame(patients)


def test_each_setting_is_paired_with_its_baseline_patient_by_patient_as_scipy_pairs_them():
    results, patients = frames()
    assert patient_comparison.compared_metrics(patients) == ["dice"]  # no copy, no raw volumes
    (row,) = patient_comparison.paired_table(patients, results).to_dict("records")
    expected = stats.ttest_rel(DICE["ct_standardizer"], DICE["none"])
    assert row["setting"] == "ct_standardizer" and row["test domain"] == "M40" and row["pairs (seeds)"] == "4 (1)"
    assert float(row["paired t p"]) == pytest.approx(expected.pvalue, rel=1e-2)
    assert row["difference (95% CI)"].startswith("+0.045 (")


def test_bland_altman_points_are_mean_and_percent_difference_per_patient():
    _, patients = frames()
    points = patient_comparison.bland_altman_points(patients)
    baseline = points[points["sweep_id"] == 0].sort_values("patient")
    assert baseline["difference_pct"].tolist() == pytest.approx([30.0] * 4)
    assert baseline["mean"].tolist() == pytest.approx([115.0, 230.0, 345.0, 460.0])
    fig = figures.bland_altman(points, {0: "none", 1: "ct_standardizer"}, "SYNTHETIC data")
    assert any("bias +30.0%" in text for text in figures.visible_texts(fig))
