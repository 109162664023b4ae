"""The study's report (Table 2, Figures 2–5) on constructed run folders whose right answer is known.

No training: results.csv, manifest.json and recipe.yaml are written by hand with known numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from harmonia import figures, statistics, tables
from harmonia.errors import InputError
from harmonia.references import GUO_TABLE2
from harmonia.report import MetricInfo, console_lines, gap_comparison, matrix, study_figures, write_report
from harmonia.results import HEAD_COLUMNS, TAIL_COLUMNS

ALPHA = "mitigations.0.params.alpha"
#: cohort → (modality, its two domains), as the study's cohorts name them
COHORTS = {
    "ct_lidc": ("CT", ("GE", "Other")),
    "ct_kidney": ("CT", ("Siemens", "Other")),
    "mri_prostate": ("MRI", ("Siemens", "Other")),
    "xray_chest": ("X-ray", ("3", "5")),
}
#: the true Δ (other − same AUC) per cohort and training domain
DELTA = {
    ("ct_lidc", "GE"): -0.02,
    ("ct_lidc", "Other"): -0.04,
    ("ct_kidney", "Siemens"): -0.01,
    ("ct_kidney", "Other"): -0.05,
    ("mri_prostate", "Siemens"): -0.30,
    ("mri_prostate", "Other"): -0.10,
    ("xray_chest", "3"): -0.02,
    ("xray_chest", "5"): -0.12,
}
SEEDS = 4
#: zero-sum per-seed jitter of the other-domain value: the mean over seeds is the true value itself
JITTER = [0.01, -0.01, 0.02, -0.02]


def same_value(seed: int) -> float:
    return 0.9 + 0.01 * seed


def results_table(points: list[dict], value, cohorts=COHORTS, data: dict | None = None) -> pd.DataFrame:
    """A results.csv-shaped frame: every cohort × sweep point × seed × training domain × test domain;
    ``value(cohort, point, seed, train, test)`` gives each AUC."""
    swept = list(dict.fromkeys(k for p in points for k in p if k != "mitigations"))
    rows = []
    sweep_id = 0
    for cohort, (modality, domains) in cohorts.items():
        for point in points:
            for seed in range(SEEDS):
                for train in domains:
                    for test in domains:
                        rows.append(
                            {
                                "cohort": cohort,
                                "modality": modality,
                                "data": (data or {}).get(cohort, "synthetic"),
                                "mitigations": point["mitigations"],
                                "sweep_id": sweep_id,
                                **{k: point.get(k) for k in swept},
                                "seed": seed,
                                "train_domain": train,
                                "test_domain": test,
                                "metric": "auc",
                                "value": value(cohort, point, seed, train, test),
                                "n": 20,
                            }
                        )
            sweep_id += 1
    return pd.DataFrame(rows, columns=HEAD_COLUMNS + swept + TAIL_COLUMNS)


def shift_value(cohort, point, seed, train, test) -> float:
    same = same_value(seed)
    return same if train == test else same + DELTA[(cohort, train)] + JITTER[seed]


def write_run(path, results: pd.DataFrame, reference=None, data: dict | None = None, cells=None):
    """A run folder with ``results``, its manifest and a recipe.yaml naming ``reference``."""
    path.mkdir()
    results.to_csv(path / "results.csv", index=False)
    provenance = {
        c: {"data": (data or {}).get(c, "synthetic"), "origin": "constructed"} for c in results["cohort"].unique()
    }
    manifest = {
        "recipe": "study",
        "status": "completed",
        "metrics": {"primary": "auc", "higher_is_better": {"auc": True}},
        "data_provenance": provenance,
        "cells": cells or [],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "recipe.yaml").write_text(yaml.safe_dump({"name": "study", "reference": reference}))
    return manifest


def markdown_tables(report: str) -> list[pd.DataFrame]:
    """Every markdown table of ``report``, its cells as strings."""
    found, block = [], []
    for line in report.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            found.append(pd.DataFrame(block[2:], columns=block[0]))
            block = []
    return found


def markdown_table(report: str, column: str) -> pd.DataFrame:
    """The first markdown table of ``report`` that has ``column``."""
    return next(t for t in markdown_tables(report) if column in t.columns)


def table_captions(report: str) -> list[str]:
    """The line before each markdown table (its caption)."""
    lines = report.splitlines()
    captions = []
    for i, line in enumerate(lines):
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            captions.append(next(lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()))
    return captions


# -- Table 2 -----------------------------------------------------------------------------------------------


def test_table2_rows_and_the_mean_delta_per_modality_on_a_multi_cohort_run():
    results = results_table([{"mitigations": "none"}], shift_value)
    table = tables.study_table(results, "auc")
    assert list(zip(table["dataset"], table["train_domain"])) == list(DELTA)
    assert list(table["modality"]) == ["CT"] * 4 + ["MRI"] * 2 + ["X-ray"] * 2
    assert table["delta"].to_numpy() == pytest.approx(list(DELTA.values()))
    assert table["same_mean"].to_numpy() == pytest.approx([0.915] * 8)
    assert table["delta_sd"].to_numpy() == pytest.approx([np.std(JITTER, ddof=1)] * 8)
    assert set(table["n_same"]) == {SEEDS} and set(table["n_other"]) == {SEEDS}

    means = tables.modality_means(results, "auc").set_index("modality")
    ct = [-0.02, -0.04, -0.01, -0.05]
    assert means.loc["CT", "rows"] == 4
    assert means.loc["CT", "mean_delta"] == pytest.approx(np.mean(ct))
    assert means.loc["CT", "sd_rows"] == pytest.approx(np.std(ct, ddof=1))
    assert means.loc["MRI", "mean_delta"] == pytest.approx(-0.20)
    assert means.loc["X-ray", "mean_delta"] == pytest.approx(-0.07)
    # per seed the modality's mean Δ is the true mean plus that seed's jitter
    assert means["sd_seeds"].to_numpy() == pytest.approx([np.std(JITTER, ddof=1)] * 3)
    assert set(means["n_seeds"]) == {SEEDS}


def test_the_report_shows_table2_per_cohort_and_the_console_stays_on_the_primary_metric(tmp_path):
    results = results_table([{"mitigations": "none"}], shift_value)
    manifest = write_run(tmp_path / "run", results)
    report = write_report(tmp_path / "run").read_text()
    table2 = markdown_table(report, "training domain")
    assert list(table2.columns) == [
        "modality",
        "dataset",
        "training domain",
        "same-domain auc",
        "other-domain auc",
        "Δ",
        "seeds",
    ]
    row = table2[(table2["dataset"] == "mri_prostate") & (table2["training domain"] == "Siemens")].iloc[0]
    assert row["Δ"] == f"-0.300 ± {np.std(JITTER, ddof=1):.3f}" and row["seeds"] == "4"
    assert "paper" not in report

    console = console_lines(results, manifest)
    assert "dataset" in console[0] and "mri_prostate" in console[0]
    assert console[1] == "Mean Δ by modality (none): CT -0.030 (4 rows); MRI -0.200 (2 rows); X-ray -0.070 (2 rows)"


def test_the_paper_column_appears_only_with_the_reference_and_holds_the_papers_numbers(tmp_path):
    results = results_table([{"mitigations": "none"}], shift_value)
    write_run(tmp_path / "plain", results, reference=None)
    write_run(tmp_path / "study", results, reference="guo_table2")
    plain = write_report(tmp_path / "plain").read_text()
    study = write_report(tmp_path / "study").read_text()

    assert "paper Δ" not in plain and "paper mean Δ" not in plain
    table2 = markdown_table(study, "training domain").set_index(["dataset", "training domain"])
    paper = table2["paper Δ (AUC)"]
    assert paper[("ct_lidc", "GE")] == "-0.032" and paper[("ct_lidc", "Other")] == "-0.048"
    assert paper[("ct_kidney", "Other")] == "-0.056"
    assert paper[("ct_kidney", "Siemens")] == "—"  # not in our copy of the paper's table: left out, not invented
    assert paper[("mri_prostate", "Siemens")] == "-0.286" and paper[("xray_chest", "5")] == "-0.116"
    assert table2.loc[("mri_prostate", "Siemens"), "Δ"].startswith("-0.300")  # ours stays ours

    modality = markdown_table(study, "mean Δ").set_index("modality")
    assert modality.loc["MRI", "paper mean Δ (AUC)"] == "-0.097"
    assert modality.loc["X-ray", "paper mean Δ (AUC)"] == "-0.067"
    assert modality.loc["CT", "paper mean Δ (AUC)"] == "-0.026"
    assert modality.loc["CT", "mean Δ"] == "-0.030"
    assert "The paper's columns are the paper's, not this run's." in study
    assert "measured on real" in study and "what this run measured (SYNTHETIC data)" in study


def test_the_reference_holds_table2_as_printed():
    assert len(GUO_TABLE2.rows) == 13
    assert GUO_TABLE2.row("ct_kidney", "Siemens") is None
    for row in GUO_TABLE2.rows:
        assert row.other_mean - row.same_mean == pytest.approx(row.delta, abs=1e-9)
    mri = [r.delta for r in GUO_TABLE2.rows if r.modality == "MRI"]
    xray = [r.delta for r in GUO_TABLE2.rows if r.modality == "X-ray"]
    assert np.mean(mri) == pytest.approx(GUO_TABLE2.modality_means["MRI"], abs=5e-4)
    assert np.mean(xray) == pytest.approx(GUO_TABLE2.modality_means["X-ray"], abs=5e-4)


# -- provenance --------------------------------------------------------------------------------------------


def noise_sweep_results(cohorts=COHORTS, data=None, levels=(1, 2, 5, 10)) -> pd.DataFrame:
    """A noise sweep whose other-domain AUC falls by 0.01 per unit of alpha (0.02 for mri_prostate), the same-domain
    AUC unchanged; alpha 0 is recorded as the baseline without mitigations."""
    points = [{"mitigations": "none", ALPHA: 0}] + [{"mitigations": "gaussian_noise", ALPHA: a} for a in levels]
    slope = {"mri_prostate": 0.02}

    def value(cohort, point, seed, train, test):
        base = shift_value(cohort, point, seed, train, test)
        if train == test:
            return base
        return base - slope.get(cohort, 0.01) * point[ALPHA] + 0.001 * point[ALPHA] * JITTER[seed] * 10

    return results_table(points, value, cohorts, data)


@pytest.mark.parametrize(
    "data, label",
    [
        ({}, "SYNTHETIC data"),
        ({c: "real" for c in COHORTS}, "real data"),
        ({"ct_lidc": "real"}, "mixed data: SYNTHETIC and real"),
    ],
)
def test_every_figure_and_table_caption_says_where_the_data_came_from(tmp_path, data, label):
    results = noise_sweep_results({c: COHORTS[c] for c in ("ct_lidc", "mri_prostate")}, data=data, levels=(1, 5))
    manifest = write_run(tmp_path / "run", results, reference="guo_table2", data=data)
    report = write_report(tmp_path / "run").read_text()

    assert label in report.splitlines()[0]
    captions = table_captions(report)
    assert len(captions) >= 5 and all(label in c for c in captions), captions
    if label == "real data":
        assert "SYNTHETIC" not in report
    for name in ("table2_bars.png", "delta_by_modality.png", "level_alpha.png"):
        path = tmp_path / "run" / "figures" / name
        assert path.is_file() and f"![{name[:-4]}](figures/{name})" in report
        assert label in Image.open(path).text["Title"]

    made = study_figures(results, manifest, GUO_TABLE2)
    assert set(made) == {"table2_bars.png", "delta_by_modality.png", "level_alpha.png"}
    for name, (fig, _) in made.items():
        texts = figures.visible_texts(fig)
        assert label in fig.get_suptitle()
        stamp = fig.texts[-1].get_text()  # the corner stamp, visible without the title
        assert stamp == (label.upper() if "SYNTHETIC" in label else label), texts
        if data and len(data) == 1 and name != "delta_by_modality.png":  # mixed: each bar pair and panel says which
            assert any("ct_lidc (real)" in t for t in texts) and any("mri_prostate (SYNTHETIC)" in t for t in texts)
        figures.plt.close(fig)
    if data and len(data) == 1:
        kinds = markdown_table(report, "training domain").drop_duplicates("dataset").set_index("dataset")["data"]
        assert kinds.to_dict() == {"ct_lidc": "real", "mri_prostate": "SYNTHETIC"}


def test_figure3_draws_the_papers_means_as_labelled_red_lines_only_with_the_reference_and_without_mitigations():
    results = results_table([{"mitigations": "none"}, {"mitigations": "dann"}], shift_value)
    manifest = {"recipe": "study", "metrics": {"primary": "auc"}}
    with_paper = study_figures(results, manifest, GUO_TABLE2)["delta_by_modality.png"][0]
    without = study_figures(results, manifest, None)["delta_by_modality.png"][0]
    assert "paper mean Δ (AUC, real data, Guo et al.)" in figures.visible_texts(with_paper)
    assert not any("paper" in t for t in figures.visible_texts(without))
    red = [c for c in with_paper.axes[0].collections if c.get_label().startswith("paper")]
    assert [tuple(np.round(seg[0][1], 3) for seg in c.get_segments()) for c in red] == [(-0.026,), (-0.097,), (-0.067,)]
    assert [ax.get_title() for ax in with_paper.axes] == ["none", "dann"]
    assert not [c for c in with_paper.axes[1].collections if c.get_label().startswith("paper")]
    figures.plt.close("all")


# -- level sweeps (Figures 4/5) ----------------------------------------------------------------------------


def test_a_noise_sweep_gives_each_levels_change_from_the_comparisons_per_cohort():
    cohorts = {c: COHORTS[c] for c in ("ct_kidney", "mri_prostate")}
    results = noise_sweep_results(cohorts)
    assert tables.level_keys(results) == [ALPHA]
    table = tables.level_table(results, "auc", True, ALPHA)
    assert list(table["series"].unique()) == ["ct_kidney: gaussian_noise", "mri_prostate: gaussian_noise"]
    for series, slope in (("ct_kidney: gaussian_noise", 0.01), ("mri_prostate: gaussian_noise", 0.02)):
        part = table[table["series"] == series]
        assert list(part["level"]) == [1, 2, 5, 10]
        assert [e.mean for e in part["other"]] == pytest.approx([-slope * a for a in (1, 2, 5, 10)])
        assert [e.mean for e in part["same"]] == pytest.approx([0.0] * 4)
        assert [e.mean for e in part["narrowing"]] == pytest.approx([-slope * a for a in (1, 2, 5, 10)])
        assert set(part["verdict"]) == {statistics.WIDENED}

    # the very Comparison objects of statistics.compare, with its Holm adjustment over all eight settings
    compared = {c.setting: c for c in statistics.compare(results, "auc", True)}
    for _, row in table.iterrows():
        assert row["other"] == compared[row["setting"]].other
        assert row["p_adjusted"] == compared[row["setting"]].p_adjusted

    curves = tables.level_curves(results, "auc", ALPHA)
    kidney = curves[(curves["series"] == "ct_kidney: gaussian_noise") & (curves["train_domain"] == "Siemens")]
    other = kidney[kidney["test_domain"] == "Other"].set_index("level")["mean"]
    same = kidney[kidney["test_domain"] == "Siemens"].set_index("level")["mean"]
    assert list(other.index) == [0, 1, 2, 5, 10]  # the baseline drawn at level 0
    assert other.to_numpy() == pytest.approx([0.915 - 0.01 - 0.01 * a for a in (0, 1, 2, 5, 10)])
    assert same.to_numpy() == pytest.approx([0.915] * 5)


def test_the_report_has_a_per_level_table_and_figures_2_and_3_leave_the_levels_to_figure_4(tmp_path):
    cohorts = {"ct_kidney": COHORTS["ct_kidney"]}
    results = noise_sweep_results(cohorts)
    write_run(tmp_path / "run", results)
    report = write_report(tmp_path / "run").read_text()
    levels = markdown_table(report, "alpha")
    assert list(levels["alpha"]) == ["1", "2", "5", "10"]
    assert levels["change in other-domain auc (95% CI)"].iloc[2].startswith("-0.050 (")
    assert levels["change in same-domain auc (95% CI)"].iloc[2] == "+0.000 (+0.000 to +0.000)"
    assert set(levels["verdict"]) == {"widened the gap"}
    assert tables.unlevelled_points(results) == {0}


# -- undefined values and cohorts --------------------------------------------------------------------------


def test_undefined_values_are_counted_with_their_reason_and_left_out_of_the_means(tmp_path):
    cohorts = {"xray_chest": COHORTS["xray_chest"]}

    def value(cohort, point, seed, train, test):
        return (
            math.nan if (seed == 3 and test == "5" and train == "3") else shift_value(cohort, point, seed, train, test)
        )

    results = results_table([{"mitigations": "none"}], value, cohorts)
    reason = "one class in the test set"
    cells = [
        {
            "sweep_id": 0,
            "seed": 3,
            "train_domain": "3",
            "rows": 2,
            "undefined": [{"test_domain": "5", "metric": "auc", "reason": reason}],
        }
    ]
    write_run(tmp_path / "run", results, cells=cells)
    report = write_report(tmp_path / "run").read_text()
    assert "- undefined values: 1 (see below)" in report
    assert "1 (cell, test domain, metric) value was undefined" in report
    reasons = markdown_table(report, "reason")
    assert reasons.to_dict("records") == [{"metric": "auc", "reason": reason, "values": "1"}]

    row = tables.study_table(results, "auc").set_index("train_domain").loc["3"]
    assert row["n_same"] == 4 and row["n_other"] == 3
    assert row["other_mean"] == pytest.approx(np.mean([same_value(s) - 0.02 + JITTER[s] for s in range(3)]))
    table2 = markdown_table(report, "training domain")
    assert table2.set_index("training domain").loc["3", "seeds"] == "4 (3 other)"


def test_comparisons_and_matrices_keep_cohorts_apart():
    cohorts = {c: COHORTS[c] for c in ("ct_lidc", "mri_prostate")}
    results = results_table([{"mitigations": "none"}, {"mitigations": "dann"}], shift_value, cohorts)
    lines = gap_comparison(results, MetricInfo("auc"))
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines[:2]] == [
        "Baseline ct_lidc: none",
        "Baseline mri_prostate: none",
    ]
    assert lines[2].startswith("ct_lidc: dann vs ct_lidc: none: no clear change")
    assert lines[3].startswith("mri_prostate: dann vs mri_prostate: none: no clear change")
    tables_ = matrix(results, "auc")
    assert list(tables_) == ["ct_lidc: none", "ct_lidc: dann", "mri_prostate: none", "mri_prostate: dann"]
    assert list(tables_["ct_lidc: none"].columns) == ["GE", "Other"]
    assert list(tables_["mri_prostate: dann"].index) == ["Siemens", "Other"]


def test_a_sweep_of_levels_without_a_baseline_still_gets_every_figure(tmp_path):
    points = [{"mitigations": "target_mixing", "mitigations.0.params.fraction": f} for f in (0.1, 0.5)]
    results = results_table(points, shift_value, {"ct_lidc": COHORTS["ct_lidc"]})
    write_run(tmp_path / "run", results)
    report = write_report(tmp_path / "run").read_text()
    for name in ("table2_bars.png", "delta_by_modality.png", "level_fraction.png"):
        assert (tmp_path / "run" / "figures" / name).is_file()
    assert "no comparison: no sweep point without mitigations has the same cohort" in report


def test_the_console_gives_the_mean_delta_per_modality_for_the_baseline_not_for_every_level():
    results = noise_sweep_results({c: COHORTS[c] for c in ("ct_lidc", "mri_prostate")}, levels=(1, 5))
    console = console_lines(results, {"metrics": {"primary": "auc"}})
    means = [line for line in console if line.startswith("Mean Δ by modality")]
    assert means == [f"Mean Δ by modality (none ({ALPHA}=0)): CT -0.030 (2 rows); MRI -0.200 (2 rows)"]


def test_a_damaged_recipe_is_named_and_an_unknown_reference_is_said(tmp_path):
    results = results_table([{"mitigations": "none"}], shift_value, {"ct_lidc": COHORTS["ct_lidc"]})
    write_run(tmp_path / "run", results, reference="someone_table9")
    report = write_report(tmp_path / "run").read_text()
    assert "- reference: recipe.yaml names 'someone_table9', which this harmonia does not know; not shown" in report
    assert "paper Δ" not in report
    (tmp_path / "run" / "recipe.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="recipe.yaml: damaged recipe"):
        write_report(tmp_path / "run")
