"""The shift-anatomy table: the share of the plain gap each method recovers, per kind of shift."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harmonia import anatomy, figures

KEY = "cohort.synthetic.components"


def results(gaps: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """results.csv rows of Dice for (shift, method) points: same-domain 0.9, other-domain 0.9 − the seed's gap."""
    rows = []
    for sweep_id, ((shift, method), per_seed) in enumerate(gaps.items()):
        for seed, gap in enumerate(per_seed):
            for train, test, value in (("A", "A", 0.9), ("A", "B", 0.9 - gap)):
                rows.append(
                    {
                        "cohort": "mnms",
                        "modality": "MRI",
                        "data": "synthetic",
                        "mitigations": method,
                        "sweep_id": sweep_id,
                        KEY: shift,
                        "seed": seed,
                        "train_domain": train,
                        "test_domain": test,
                        "metric": "dice",
                        "value": value,
                        "n": 2,
                    }
                )
    return pd.DataFrame(rows)


def test_the_share_is_the_narrowing_over_the_plain_gap_and_a_shift_without_a_gap_is_left_out():
    frame = results(
        {
            ("contrast", "none"): [0.20, 0.22, 0.18],
            ("contrast", "histogram_standardization"): [0.05, 0.08, 0.05],
            ("noise", "none"): [0.01, -0.02, 0.01],  # no clear gap: its CI reaches 0
            ("noise", "histogram_standardization"): [0.0, 0.0, 0.01],
        }
    )
    table = anatomy.recovery_table(frame, "dice", higher_is_better=True).set_index("shift")
    contrast = table.loc["contrast"]
    narrowing = np.array([0.15, 0.14, 0.13])
    assert contrast["gap_mean"] == pytest.approx(0.20)
    assert contrast["share"] == pytest.approx(narrowing.mean() / 0.20)
    assert contrast["share_low"] < contrast["share"] < contrast["share_high"]
    assert contrast["note"] == ""
    noise = table.loc["noise"]
    assert math.isnan(noise["share"]) and noise["note"] == anatomy.NO_CLEAR_GAP
    text = anatomy.markdown(table.reset_index())
    assert "+0.70 [" in text and anatomy.NO_CLEAR_GAP in text
    fig = figures.recovery_heatmap(table.reset_index(), "dice", "SYNTHETIC twin")
    assert anatomy.NO_CLEAR_GAP in figures.visible_texts(fig) and "histogram_standardization" in " ".join(
        figures.visible_texts(fig)
    )


def test_a_lower_is_better_metric_orients_the_gap_the_other_way():
    frame = results(
        {("bias", "none"): [0.2, 0.3, 0.25], ("bias", "m"): [0.1, 0.1, 0.1], ("psf", "none"): [0.1, 0.2, 0.1]}
    )
    frame["value"] = 1 - frame["value"]  # a distance: the other domain is worse by the gap, upwards
    frame["metric"] = "distance"
    row = anatomy.recovery_table(frame, "distance", higher_is_better=False).set_index("shift").loc["bias"]
    assert row["gap_mean"] == pytest.approx(0.25) and row["gap_low"] < row["gap_mean"] < row["gap_high"]
    assert row["share"] == pytest.approx(0.15 / 0.25)


def test_a_run_without_a_swept_shift_has_no_table():
    frame = results({("x", "none"): [0.2, 0.2, 0.3], ("x", "m"): [0.1, 0.1, 0.1]})
    assert anatomy.recovery_table(frame, "dice", True).empty
