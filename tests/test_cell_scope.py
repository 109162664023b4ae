"""Cell-scope evaluators (a vendor probe), per-patient values in ``patients.csv``, and transforms that leave the
training images alone (a standardizer applied to test images only)."""

from __future__ import annotations

import pandas as pd
import pytest
import toy_plugins

from harmonia import runner
from harmonia.api import Evaluator
from harmonia.errors import RecipeError, RunInterrupted
from harmonia.protocol import load_cohort, split_seed
from harmonia.recipe import load_recipe
from harmonia.registry import check_plugin_class
from harmonia.results import read_results
from harmonia.splits import split_patients


def test_a_cell_scope_evaluator_sees_every_domains_splits_and_writes_rows_of_its_own(registry, toy_recipe, tmp_path):
    toy_plugins.CellSpy.views.clear()
    toy_recipe["evaluate"] = ["pixel_accuracy", "cell_spy"]
    toy_recipe["train"].update(seeds=1, epochs=1)
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    assert [v["train_domain"] for v in toy_plugins.CellSpy.views] == ["A", "B"]  # once per cell
    for view in toy_plugins.CellSpy.views:
        assert view["patients"] == {d: set(splits[d].test) for d in ("A", "B")}
        n_test = len(data.items.of_patients(splits[view["train_domain"]].test, view["train_domain"]))
        assert view["features"] == (n_test, 4)  # the toy net's 4 feature channels, pooled over space
        assert view["shifted"] == 0.0  # no mitigation: the transform is the identity
    spy = run.results[run.results["metric"].isin(["test_mean", "domain_spread"])]
    assert sorted(spy.loc[spy["metric"] == "test_mean", "test_domain"]) == ["A", "A", "B", "B"]
    assert list(spy.loc[spy["metric"] == "domain_spread", "test_domain"]) == ["all", "all"]
    # a cell-scope value has no same- or other-domain reading: the summary leaves it out
    summary = pd.read_csv(run.path / "summary.csv")
    assert {"domain_spread", "test_mean"}.isdisjoint(summary["metric"]) and "pixel_accuracy" in set(summary["metric"])
    assert run.manifest["metrics"]["primary"] == "pixel_accuracy"
    assert run.manifest["metrics"]["cell_scope"] == ["test_mean", "domain_spread"]

    # the report gives them a table of their own, the primary metric's other-domain value beside the all rows
    report = (run.path / "report.md").read_text()
    assert "Same- vs other-domain test_mean" not in report and "Same- vs other-domain domain_spread" not in report
    section = report.split("## Whole-cell metrics")[1]
    header, _, *table = [line for line in section.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == [
        "setting",
        "train domain",
        "test domain",
        "test_mean",
        "domain_spread",
        "other-domain pixel_accuracy",
        "Δ pixel_accuracy",
    ]
    all_rows = [[c.strip() for c in row.strip("|").split("|")] for row in table if "| all " in row]
    assert len(all_rows) == 2 and all(row[5] and row[6].startswith(("+", "-")) for row in all_rows)


def test_a_cell_scope_evaluator_cannot_come_first(registry, toy_recipe):
    toy_recipe["evaluate"] = ["cell_spy", "pixel_accuracy"]
    with pytest.raises(RecipeError, match=r"evaluate\[0\]\.plugin: 'cell_spy' scores whole cells"):
        load_recipe(toy_recipe, registry=registry)


def test_an_evaluator_must_implement_the_method_of_its_scope():
    class Hollow(Evaluator):
        name = "hollow"
        scope = "cell"

        def evaluate(self, predictions):  # the wrong one for its scope
            return []

    with pytest.raises(TypeError, match="has scope 'cell' but does not implement evaluate_cell"):
        check_plugin_class("evaluator", Hollow)


def test_per_patient_values_go_to_patients_csv_and_average_to_the_result(registry, toy_recipe, tmp_path):
    toy_recipe["evaluate"] = ["patient_accuracy"]
    toy_recipe["train"].update(epochs=1)
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    patients = pd.read_csv(run.path / "patients.csv", dtype={"patient": str, "train_domain": str})
    means = patients.groupby(["sweep_id", "seed", "train_domain", "test_domain"])["value"].mean()
    results = read_results(run.path / "results.csv").set_index(["sweep_id", "seed", "train_domain", "test_domain"])
    for key, mean in means.items():
        assert results.loc[key, "value"] == pytest.approx(mean)
    assert len(means) == len(results) == 8  # 2 seeds x 2 training domains x 2 test domains
    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 1), data.domains)
    seed1 = patients[(patients["seed"] == 1) & (patients["train_domain"] == "A")]
    for domain in ("A", "B"):
        assert set(seed1.loc[seed1["test_domain"] == domain, "patient"]) == set(splits[domain].test)


def test_resume_keeps_the_per_patient_values_of_finished_cells_only(registry, toy_recipe, tmp_path):
    toy_recipe["evaluate"] = ["patient_accuracy"]
    toy_recipe["train"].update(epochs=1)
    whole = runner.run(toy_recipe, out=tmp_path / "whole", registry=registry)
    toy_plugins.FailingMitigation.calls, toy_plugins.FailingMitigation.fail_at = 0, 3
    toy_recipe["mitigations"] = [{"plugin": "failing"}]
    with pytest.raises(RunInterrupted):
        runner.run(toy_recipe, out=tmp_path / "cut", registry=registry)
    assert len(pd.read_csv(tmp_path / "cut" / "patients.csv")) < len(pd.read_csv(whole.path / "patients.csv"))
    toy_plugins.FailingMitigation.fail_at = 10**9
    finished = runner.resume(tmp_path / "cut", registry=registry)
    cut = pd.read_csv(finished.path / "patients.csv")
    assert len(cut) == len(pd.read_csv(whole.path / "patients.csv"))
    assert not cut.duplicated(["sweep_id", "seed", "train_domain", "test_domain", "patient"]).any()


def test_a_test_only_transform_leaves_training_images_alone(registry, toy_recipe, tmp_path):
    toy_plugins.ShiftTestImages.transformed.clear()
    toy_recipe["mitigations"] = [{"plugin": "shift_test_images"}]
    toy_recipe["train"].update(seeds=1, epochs=1)
    toy_recipe["train"]["selection"] = "last"
    runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    test_sizes = {d: len(data.items.of_patients(splits[d].test, d)) for d in ("A", "B")}
    # per cell: each test domain's images once; never the training set
    assert toy_plugins.ShiftTestImages.transformed == [test_sizes["A"], test_sizes["B"]] * 2


def test_train_threads_sets_torchs_threads_for_the_run_and_restores_them(registry, toy_recipe, tmp_path, monkeypatch):
    import torch

    from harmonia import protocol

    seen, original = [], protocol.run_cell

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(protocol, "run_cell", spy)
    before = torch.get_num_threads()
    toy_recipe["train"].update(seeds=1, epochs=1, threads=1)
    runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    assert seen == [1, 1] and torch.get_num_threads() == before
