"""MLflow tracking: each finished cell of a run folder mirrored as one nested MLflow run, exactly once, with the
folder's own figures; the store kept inside the run folder; mlflow imported only when tracking is on.

Opening a fresh SQLite store runs MLflow's schema migrations (several seconds), so each test opens one only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harmonia import runner
from harmonia.cli import main
from harmonia.errors import InputError
from harmonia.recipe import Experiment, load_recipe
from harmonia.results import read_results
from harmonia.settings import TrackingSpec
from harmonia.tracking import CUT_NOTE, MAX_KEY, MAX_PARAM_VALUE, Tracker, _name, cell_params, open_tracker


def tiny_run(registry, recipe: dict, out: Path) -> tuple[Path, Experiment]:
    """Run ``recipe`` (one torch thread) without tracking; the run folder and its experiment as ``--resume`` loads it."""
    recipe["train"]["threads"] = 1
    path = runner.run(recipe, out=out, registry=registry).path.resolve()
    return path, load_recipe(path / "recipe.yaml", registry=registry)


def runs_of(tracker: Tracker, role: str) -> list:
    """The tracker's active runs of one role: "run_folder" (the parent) or "cell"."""
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`harmonia.role` = '{role}'")


def children_by_cell(tracker: Tracker) -> dict[tuple[int, int, str], object]:
    """The tracker's cell runs by (sweep_id, seed, train_domain); a duplicate would fail the length check."""
    children = runs_of(tracker, "cell")
    by_cell = {}
    for run in children:
        sweep_id, seed, domain = run.data.tags["harmonia.cell"].split("/")
        by_cell[(int(sweep_id), int(seed), domain)] = run
    assert len(by_cell) == len(children)
    return by_cell


def epoch_values(tracker: Tracker, run, metric: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run.info.run_id, metric))


def manifest_cells(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "manifest.json").read_text())["cells"]


def test_each_cell_is_one_nested_run_with_the_run_folders_figures(registry, toy_recipe, tmp_path):
    toy_recipe["evaluate"] = ["calibrating_spy"]  # pixel accuracy and a metric that is always NaN
    run_dir, experiment = tiny_run(registry, toy_recipe, tmp_path / "run")
    tracker = open_tracker(TrackingSpec(), run_dir, experiment)
    logged = tracker.sync()

    cells = {(c["sweep_id"], c["seed"], c["train_domain"]): c for c in manifest_cells(run_dir)}
    assert len(cells) == 4 and sorted(logged) == sorted(cells)
    [parent] = runs_of(tracker, "run_folder")
    assert parent.info.run_id == tracker.parent_id and parent.data.tags["harmonia.run_folder"] == str(run_dir)
    children = children_by_cell(tracker)
    assert set(children) == set(cells)
    assert {run.data.tags["mlflow.parentRunId"] for run in children.values()} == {tracker.parent_id}

    results = read_results(run_dir / "results.csv")
    history = pd.read_csv(run_dir / "history.csv", dtype={"train_domain": str})
    for key, run in children.items():
        rows = results[(results.sweep_id == key[0]) & (results.seed == key[1]) & (results.train_domain == key[2])]
        defined = rows[rows["value"].notna()]
        expected = {f"test.{r.metric}.{r.test_domain}": r.value for r in defined.itertuples()}
        logged_tests = {k: v for k, v in run.data.metrics.items() if k.startswith("test.")}
        assert len(defined) == 2 < len(rows) and logged_tests == expected  # every value equal; NaN ones left out
        epochs = history[(history.sweep_id == key[0]) & (history.seed == key[1]) & (history.train_domain == key[2])]
        assert epoch_values(tracker, run, "train_loss") == list(zip(epochs["epoch"], epochs["train_loss"]))
        assert epoch_values(tracker, run, "val_score") == list(zip(epochs["epoch"], epochs["val_score"]))
        assert run.data.metrics["selected_epoch"] == epochs.loc[epochs["selected"], "epoch"].item()
        if "seconds" in cells[key]:
            assert run.data.metrics["seconds"] == cells[key]["seconds"]
        params = run.data.params
        assert float(params["train.lr"]) == toy_recipe["train"]["lr"] == 0.01
        assert (params["sweep_id"], params["seed"], params["train_domain"]) == tuple(str(k) for k in key)
        assert params["cohort.synthetic.patients"] == "6" and params["evaluate.0.plugin"] == "calibrating_spy"
        assert not any(p.split(".")[0] in ("execution", "tracking", "sweep") for p in params)
        tags = run.data.tags
        assert (tags["harmonia.cohort"], tags["harmonia.data"], tags["harmonia.mitigations"]) == (
            "toy",
            "synthetic",
            "none",
        )
        assert tags["harmonia.version"] == json.loads((run_dir / "manifest.json").read_text())["harmonia_version"]


def test_sync_logs_each_complete_cell_once_also_from_a_second_tracker(registry, toy_recipe, tmp_path):
    run_dir, experiment = tiny_run(registry, toy_recipe, tmp_path / "run")
    manifest_path = run_dir / "manifest.json"
    full = json.loads(manifest_path.read_text())
    last = full["cells"][-1]
    # a cell whose rows are written but which the manifest does not list yet is not complete
    manifest_path.write_text(json.dumps({**full, "cells": full["cells"][:-1]}))
    tracker = open_tracker(TrackingSpec(), run_dir, experiment)
    assert len(tracker.sync()) == 3
    manifest_path.write_text(json.dumps(full))
    assert tracker.sync() == [(last["sweep_id"], last["seed"], last["train_domain"])]
    assert tracker.sync() == []

    again = open_tracker(TrackingSpec(), run_dir, experiment)  # as on --resume
    assert again.parent_id == tracker.parent_id and again.sync() == []
    assert len(runs_of(again, "run_folder")) == 1 and len(children_by_cell(again)) == 4

    # a cell deleted in MLflow, and one an interrupted sync left unfinished, are logged anew, once each
    children = children_by_cell(again)
    deleted, unfinished = sorted(children)[:2]
    again.client.delete_run(children[deleted].info.run_id)
    again.client.update_run(children[unfinished].info.run_id, "RUNNING")
    assert sorted(again.sync()) == [deleted, unfinished]
    after = children_by_cell(again)
    assert set(after) == set(children) and {r.info.status for r in after.values()} == {"FINISHED"}
    assert after[unfinished].info.run_id != children[unfinished].info.run_id


def test_store_artifacts_and_report_stay_in_the_run_folder(registry, toy_recipe, tmp_path, monkeypatch, capfd):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    run_dir, experiment = tiny_run(registry, toy_recipe, tmp_path / "run")
    capfd.readouterr()

    tracker = open_tracker(TrackingSpec(), run_dir, experiment)
    tracker.sync()
    tracker.log_report(run_dir)

    assert list(cwd.iterdir()) == []
    console = "".join(capfd.readouterr())
    assert "alembic" not in console and "mlflow" not in console.lower()
    assert tracker.uri == f"sqlite:///{run_dir}/mlflow.db" and (run_dir / "mlflow.db").is_file()
    store = tracker.client.get_experiment(tracker.experiment_id)
    assert store.name == "toy_run" and store.artifact_location == (run_dir / "mlflow-artifacts").as_uri()

    parent = tracker.client.get_run(tracker.parent_id)
    assert parent.info.artifact_uri.startswith((run_dir / "mlflow-artifacts").as_uri())
    assert parent.info.status == "FINISHED"  # the manifest says completed
    names = {a.path for a in tracker.client.list_artifacts(tracker.parent_id)}
    assert {"report.md", "recipe.yaml", "figures"} <= names
    figures = {a.path for a in tracker.client.list_artifacts(tracker.parent_id, "figures")}
    assert figures == {f"figures/{p.name}" for p in (run_dir / "figures").iterdir()} != set()
    copies = list((run_dir / "mlflow-artifacts").rglob("report.md"))
    assert len(copies) == 1 and copies[0].read_text() == (run_dir / "report.md").read_text()
    assert all(tracker.client.list_artifacts(r.info.run_id) == [] for r in runs_of(tracker, "cell"))


def test_a_shared_store_keeps_each_run_folder_under_its_own_parent(registry, toy_recipe, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    toy_recipe["train"]["seeds"] = 1
    first, experiment = tiny_run(registry, toy_recipe, tmp_path / "first")
    second, _ = tiny_run(registry, toy_recipe, tmp_path / "second")
    spec = TrackingSpec(uri=f"sqlite:///{tmp_path / 'store' / 'shared.db'}", experiment="shared")
    (tmp_path / "store").mkdir()

    trackers = [open_tracker(spec, run_dir, experiment) for run_dir in (first, second)]
    for tracker in trackers:
        assert len(tracker.sync()) == 2
        tracker.log_report(tracker.run_dir)
    assert trackers[0].experiment_id == trackers[1].experiment_id and trackers[0].parent_id != trackers[1].parent_id
    assert len(runs_of(trackers[0], "run_folder")) == 2 and len(runs_of(trackers[0], "cell")) == 4
    for tracker in trackers:
        children = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.parent_id}'"
        )
        assert {r.data.tags["harmonia.run_folder"] for r in children} == {str(tracker.run_dir)}
    assert open_tracker(spec, second, experiment).parent_id == trackers[1].parent_id
    assert not (first / "mlflow.db").exists() and list(cwd.iterdir()) == []
    assert len(list((tmp_path / "store" / "mlflow-artifacts").rglob("report.md"))) == 2


def test_a_mitigations_epoch_figures_are_metrics_with_one_value_per_epoch(registry, toy_recipe, tmp_path):
    toy_recipe["train"].update(seeds=1, epochs=2)
    toy_recipe["cohort"]["train_domains"] = ["A"]
    toy_recipe["sweep"] = {"mitigations": [[], [{"plugin": "dann"}]]}
    run_dir, experiment = tiny_run(registry, toy_recipe, tmp_path / "run")
    tracker = open_tracker(TrackingSpec(experiment="dann check"), run_dir, experiment)
    tracker.sync()

    history = pd.read_csv(run_dir / "history.csv")
    plain, dann = children_by_cell(tracker)[(0, 0, "A")], children_by_cell(tracker)[(1, 0, "A")]
    for column in ("dann.domain_accuracy", "dann.lambda"):
        expected = history[history.sweep_id == 1][["epoch", column]]
        assert epoch_values(tracker, dann, column) == list(expected.itertuples(index=False, name=None))
        assert len(expected) == 2 and column not in plain.data.metrics  # the plain model's NaN column is left out
    assert dann.data.params["mitigations.0.plugin"] == "dann" and "mitigations.0.plugin" not in plain.data.params
    assert json.loads(dann.data.params["sweep.mitigations"]) == [{"plugin": "dann"}]
    assert plain.data.params["sweep.mitigations"] == "[]" and plain.data.tags["harmonia.mitigations"] == "none"
    assert tracker.client.get_experiment(tracker.experiment_id).name == "dann check"


def test_long_values_are_cut_and_names_made_valid(registry, toy_recipe):
    toy_recipe["description"] = "x" * (MAX_PARAM_VALUE + 10)
    point = load_recipe(toy_recipe, registry=registry).points[0]
    params = cell_params(point, (0, 1, "GE/Signa"))
    assert len(params["description"]) == MAX_PARAM_VALUE and params["description"].endswith(CUT_NOTE)
    assert params["train_domain"] == "GE/Signa" and params["model.params.width"] == "4"
    assert _name("test.dice.GE/Signa:1.5T (ü)") == "test.dice.GE_Signa_1.5T ___"
    long = _name("a" * 300)
    assert len(long) == MAX_KEY and long != _name("a" * 301) and long == _name("a" * 300)


def test_mlflow_is_not_imported_without_tracking():
    code = (
        "import sys, harmonia, harmonia.runner, harmonia.protocol, harmonia.cli, harmonia.tracking\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_missing_mlflow_is_a_one_line_input_error(registry, toy_recipe, tmp_path, monkeypatch):
    experiment = load_recipe(toy_recipe, registry=registry)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(InputError) as caught:
        open_tracker(TrackingSpec(), tmp_path, experiment)
    assert str(caught.value) == "tracking: mlflow is not installed; pip install 'harmonia[mlflow]'"
    assert list(tmp_path.iterdir()) == []


def test_a_recipe_with_tracking_mlflow_logs_every_cell_and_the_report(registry, toy_recipe, tmp_path):
    toy_recipe["tracking"] = "mlflow"
    run_dir, experiment = tiny_run(registry, toy_recipe, tmp_path / "run")
    assert (run_dir / "mlflow.db").is_file()
    tracker = open_tracker(experiment.tracking, run_dir, experiment)
    assert tracker.sync() == []  # the run logged every cell itself
    assert set(children_by_cell(tracker)) == {
        (c["sweep_id"], c["seed"], c["train_domain"]) for c in manifest_cells(run_dir)
    }
    assert "report.md" in {a.path for a in tracker.client.list_artifacts(tracker.parent_id)}


def test_the_tracking_uri_flag_turns_tracking_on_for_a_recipe_without_it(registry, toy_recipe, tmp_path):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(yaml.safe_dump(toy_recipe))
    store = tmp_path / "shared" / "store.db"
    store.parent.mkdir()
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--tracking-uri", f"sqlite:///{store}"]) == 0
    assert store.is_file() and not (out / "mlflow.db").exists()
    experiment = load_recipe(out / "recipe.yaml", (), registry)
    tracker = open_tracker(TrackingSpec(uri=f"sqlite:///{store}"), out, experiment)
    assert set(children_by_cell(tracker)) == {
        (c["sweep_id"], c["seed"], c["train_domain"]) for c in manifest_cells(out)
    }
