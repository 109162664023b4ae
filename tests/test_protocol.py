"""The cross-scanner protocol end to end on the toy cohort: run folder, resume, data hygiene."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import toy_plugins
import yaml

from harmonia import runner
from harmonia.errors import DataError
from harmonia.privacy import pseudonymize
from harmonia.results import HEAD_COLUMNS, TAIL_COLUMNS


def test_run_folder_is_complete(registry, toy_recipe, tmp_path):
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    files = {p.name for p in run.path.iterdir()}
    assert {"recipe.yaml", "manifest.json", "results.csv", "summary.csv", "report.md", "figures"} <= files

    results = run.results
    assert list(results.columns) == HEAD_COLUMNS + TAIL_COLUMNS
    # 2 seeds x 2 training domains x 2 test domains, one metric
    assert len(results) == 8
    assert set(results["data"]) == {"synthetic"}
    assert set(zip(results["train_domain"], results["test_domain"])) == {("A", "A"), ("A", "B"), ("B", "A"), ("B", "B")}

    manifest = run.manifest
    assert manifest["status"] == "completed"
    assert manifest["data_provenance"]["toy"]["data"] == "synthetic"
    assert manifest["plugins"]["model:toynet"]["distribution"] == "local"
    resolved = yaml.safe_load((run.path / "recipe.yaml").read_text())
    assert resolved["train"]["epochs"] == 2 and resolved["train"]["selection"] == "best_val"
    assert "SYNTHETIC" in (run.path / "report.md").read_text().splitlines()[0]

    summary = run.summary
    assert set(summary["train_domain"]) == {"A", "B"}
    row = summary[summary["train_domain"] == "A"].iloc[0]
    per_seed_same = results[(results.train_domain == "A") & (results.test_domain == "A")]["value"]
    assert row["same_mean"] == pytest.approx(per_seed_same.mean())
    assert row["delta"] == pytest.approx(row["other_mean"] - row["same_mean"])


def test_shift_is_measured_on_the_toy_cohort(registry, toy_recipe, tmp_path):
    toy_recipe["train"].update(epochs=8, seeds=1)
    toy_recipe["cohort"]["train_domains"] = ["A"]
    summary = runner.run(toy_recipe, out=tmp_path / "run", registry=registry).summary
    # domain B inverts intensities: a model trained on A does worse on B
    assert summary["delta"].item() < -0.05


def test_resume_after_interruption_gives_the_same_results(registry, toy_recipe, tmp_path):
    toy_recipe["mitigations"] = [{"plugin": "failing"}]
    full = runner.run(toy_recipe, out=tmp_path / "full", registry=registry).results

    toy_plugins.FailingMitigation.calls = 0
    toy_plugins.FailingMitigation.fail_at = 3  # crash while training the third of four cells
    with pytest.raises(KeyboardInterrupt):
        runner.run(toy_recipe, out=tmp_path / "partial", registry=registry)
    toy_plugins.FailingMitigation.fail_at = 10**9
    partial = tmp_path / "partial"
    assert json.loads((partial / "manifest.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(partial / "results.csv")) == 4  # two cells kept

    toy_plugins.FailingMitigation.calls = 0
    resumed = runner.resume(partial, registry=registry).results
    assert toy_plugins.FailingMitigation.calls == 2  # only the two missing cells were trained
    pd.testing.assert_frame_equal(resumed, full)
    assert json.loads((partial / "manifest.json").read_text())["status"] == "completed"


def test_target_data_comes_only_from_other_domains_train_splits(registry, toy_recipe, tmp_path):
    from harmonia.protocol import load_cohort, split_seed
    from harmonia.recipe import load_recipe
    from harmonia.splits import split_patients

    toy_plugins.SpyMitigation.target_patients.clear()
    toy_plugins.SpyMitigation.target_batches.clear()
    toy_recipe["mitigations"] = [{"plugin": "spy_mitigation"}]
    toy_recipe["train"]["seeds"] = 1
    runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    # cells run A then B: A's targets are exactly B's train split, and vice versa
    assert toy_plugins.SpyMitigation.target_patients == [set(splits["B"].train), set(splits["A"].train)]
    assert toy_plugins.SpyMitigation.target_batches and all(n > 0 for n in toy_plugins.SpyMitigation.target_batches)


def test_epoch_selection_never_sees_test_patients(registry, toy_recipe, tmp_path):
    from harmonia.protocol import load_cohort, split_seed
    from harmonia.recipe import load_recipe
    from harmonia.splits import split_patients

    toy_plugins.SpyEvaluator.seen.clear()
    toy_recipe["evaluate"] = ["spy_evaluator"]
    toy_recipe["train"].update(seeds=1, epochs=3)
    toy_recipe["cohort"]["train_domains"] = ["A"]
    runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    during_training, at_test = toy_plugins.SpyEvaluator.seen[:3], toy_plugins.SpyEvaluator.seen[3:]
    assert all(seen == set(splits["A"].val) for seen in during_training)
    assert at_test == [set(splits["A"].test), set(splits["B"].test)]


def test_sweep_points_share_splits_and_get_their_own_columns(registry, toy_recipe, tmp_path):
    toy_recipe["train"]["seeds"] = 1
    toy_recipe["sweep"] = {"model.params.width": [2, 4]}
    results = runner.run(toy_recipe, out=tmp_path / "run", registry=registry).results
    assert "model.params.width" in results.columns
    assert sorted(results.groupby("sweep_id")["model.params.width"].first()) == [2, 4]
    assert set(results["n"]) == {1}  # one test patient per domain with 6 patients


def test_cells_are_reproducible(registry, toy_recipe, tmp_path):
    toy_recipe["train"]["seeds"] = 1
    first = runner.run(toy_recipe, out=tmp_path / "a", registry=registry).results
    second = runner.run(toy_recipe, out=tmp_path / "b", registry=registry).results
    pd.testing.assert_frame_equal(first, second)


def test_sweeping_the_mitigation_list_labels_each_point_by_its_methods(registry, toy_recipe, tmp_path):
    toy_recipe["train"]["seeds"] = 1
    toy_recipe["sweep"] = {"mitigations": [[], [{"plugin": "spy_mitigation"}]]}
    results = runner.run(toy_recipe, out=tmp_path / "run", registry=registry).results
    assert list(results.columns) == HEAD_COLUMNS + TAIL_COLUMNS
    assert results.groupby("sweep_id")["mitigations"].first().tolist() == ["none", "spy_mitigation"]


def test_unreadable_files_stop_the_run_or_are_listed_pseudonymised(registry, toy_recipe, tmp_path):
    root = tmp_path / "toy-data"
    root.mkdir()
    toy_plugins.ToyCohort.write_twin(root, toy_plugins.TwinSettings(patients=6, seed=1))
    (root / "A001.broken").write_text("")
    toy_recipe["cohort"]["root"] = str(root)
    with pytest.raises(DataError, match=r"A001\.broken: truncated file"):
        runner.run(toy_recipe, out=tmp_path / "stopped", registry=registry)

    toy_recipe["cohort"]["params"] = {"on_unreadable": "skip"}
    (root / "B002.unloadable").write_text("")
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    listed = pd.read_csv(run.path / "unreadable.csv")
    assert listed[["cohort", "reason"]].values.tolist() == [["toy", "truncated file"], ["toy", "corrupt pixel data"]]
    assert listed["patient"][0] == pseudonymize("A001", "toy") and listed["file"][0].startswith(
        f"{listed['patient'][0]}/file-"
    )
    assert run.manifest["unreadable_files"] == {"toy": 2}
    from harmonia.protocol import load_cohort
    from harmonia.recipe import load_recipe

    data = load_cohort(load_recipe(toy_recipe, registry=registry).points[0].recipe.cohort, registry)
    assert not {"A001", "B002"} & set(data.index["patient"]), "a patient without items stays out of every split"
    assert not any("A001" in p.read_text() for p in run.path.glob("*.*") if p.is_file() and p.suffix != ".png")
    assert len(run.results) == 8


def test_a_paired_cohort_keeps_each_patient_on_one_side_and_each_cell_in_its_domains(registry, toy_recipe, tmp_path):
    from harmonia.protocol import load_cohort, split_seed
    from harmonia.recipe import load_recipe
    from harmonia.splits import split_patients

    toy_plugins.SpyMitigation.domains_seen.clear()
    toy_plugins.SpyEvaluator.seen.clear()
    toy_recipe["cohort"]["params"] = {"paired": True}
    toy_recipe["mitigations"] = [{"plugin": "spy_mitigation"}]
    toy_recipe["evaluate"] = ["spy_evaluator"]
    toy_recipe["train"].update(seeds=1, epochs=1)
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    assert set(data.index.query("domain == 'A'").patient) == set(data.index.query("domain == 'B'").patient)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    assert splits["A"] == splits["B"]
    # train and validation items from the cell's own domain only, target images from the other one
    assert toy_plugins.SpyMitigation.domains_seen == [({"A"}, {"B"}), ({"B"}, {"A"})]
    # tested on the same held-out patients in both domains, and those were never trained or selected on
    tested = [seen for seen in toy_plugins.SpyEvaluator.seen if seen == set(splits["A"].test)]
    assert len(tested) == 4 and not set(splits["A"].test) & (set(splits["A"].train) | set(splits["A"].val))
    assert len(run.results) == 4
