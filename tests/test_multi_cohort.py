"""Recipes over several cohorts (``cohorts:``), no-op mitigations as baselines, evaluator calibration on the
validation split, and what the manifest keeps of each cell."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import toy_plugins
import yaml

from harmonia import runner, statistics
from harmonia.api import Task
from harmonia.errors import RecipeError
from harmonia.recipe import PluginSpec, incompatibility, load_recipe


def two_cohorts(toy_recipe: dict) -> dict:
    """The toy recipe over two entries of the toy cohort: a plain one and one with a stronger vendor effect."""
    recipe = {k: v for k, v in toy_recipe.items() if k != "cohort"}
    recipe["cohort"] = {"synthetic": {"patients": 6, "seed": 1}}  # defaults for every entry
    recipe["cohorts"] = [
        {"cohort": {"plugin": "toy", "label": "toy_mild", "synthetic": {"strength": 0.3}}},
        {"cohort": {"plugin": "toy", "label": "toy_strong"}, "model": {"params": {"width": 2}}},
    ]
    return recipe


def test_each_cohort_entry_is_its_own_group_of_points_with_the_defaults_merged_in(registry, toy_recipe):
    recipe = two_cohorts(toy_recipe)
    recipe["sweep"] = {"train.lr": [0.01, 0.02]}
    points = load_recipe(recipe, registry=registry).points
    assert [p.id for p in points] == [0, 1, 2, 3]
    assert [p.recipe.cohort.name for p in points] == ["toy_mild", "toy_mild", "toy_strong", "toy_strong"]
    assert [p.values["train.lr"] for p in points] == [0.01, 0.02, 0.01, 0.02]
    mild, strong = points[0].recipe, points[2].recipe
    assert (mild.cohort.synthetic.patients, mild.cohort.synthetic.strength) == (6, 0.3)
    assert (strong.cohort.synthetic.patients, strong.cohort.synthetic.strength) == (6, 1.0)
    assert (mild.model.params["width"], strong.model.params["width"]) == (4, 2)  # an entry's model params win


def test_a_set_on_the_top_level_cohort_reaches_every_entry(registry, toy_recipe):
    points = load_recipe(two_cohorts(toy_recipe), ["cohort.synthetic.patients=9"], registry=registry).points
    assert {p.recipe.cohort.synthetic.patients for p in points} == {9}


def test_an_entry_with_another_model_plugin_does_not_inherit_the_top_level_params(registry, toy_recipe):
    recipe = two_cohorts(toy_recipe)
    recipe["cohorts"][1]["model"] = {"plugin": "toy_classifier"}  # would reject toynet's width
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe, registry=registry)
    # the merge kept no 'width'; what fails is only that the classifier cannot segment, named with the entry
    assert "cannot do segmentation" in str(error.value) and "(cohorts[1])" in str(error.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["cohorts"][1]["cohort"].update(label="toy_mild"), "'toy_mild' appears twice"),
        (lambda r: r["cohorts"][0].update(train={"lr": 1}), "cohorts[0].train: unknown key"),
        (lambda r: r.update(cohorts=[]), "cohorts: must be a non-empty list"),
        (lambda r: r["cohorts"].append("toy"), "cohorts[2]: must be a mapping with a cohort"),
        (lambda r: r.update(max_sweep_points=3, sweep={"train.lr": [0.1, 0.2]}), "the grid has 4 points"),
    ],
)
def test_a_malformed_cohorts_list_is_a_one_line_error(registry, toy_recipe, change, message):
    recipe = two_cohorts(toy_recipe)
    change(recipe)
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe, registry=registry)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_multi_cohort_run_keeps_cohorts_apart_and_pairs_within_each(registry, toy_recipe, tmp_path):
    recipe = two_cohorts(toy_recipe)
    recipe["train"].update(seeds=2, epochs=1)
    recipe["sweep"] = {"mitigations": [[], [{"plugin": "scale_batches", "params": {"factor": 0.5}}]]}
    run = runner.run(recipe, out=tmp_path / "run", registry=registry)
    results = run.results
    assert set(results["cohort"]) == {"toy_mild", "toy_strong"}
    assert set(run.manifest["data_provenance"]) == {"toy_mild", "toy_strong"}
    points = results.drop_duplicates("sweep_id").set_index("sweep_id")[["cohort", "mitigations"]]
    pairs = statistics.baselines(results)
    assert pairs == {1: 0, 3: 2}
    assert all(points.loc[s, "cohort"] == points.loc[b, "cohort"] for s, b in pairs.items())
    # the stored recipe keeps the cohorts: list as written
    assert [e["cohort"]["label"] for e in yaml.safe_load((run.path / "recipe.yaml").read_text())["cohorts"]] == [
        "toy_mild",
        "toy_strong",
    ]


def test_a_mitigation_whose_params_make_it_a_no_op_leaves_a_baseline_point(registry, toy_recipe, tmp_path):
    toy_recipe["mitigations"] = [{"plugin": "scale_batches", "params": {"factor": 0.0}}]
    toy_recipe["sweep"] = {"mitigations.0.params.factor": [0.0, 1.0]}
    toy_recipe["train"].update(seeds=1, epochs=1)
    experiment = load_recipe(toy_recipe, registry=registry)
    assert [p.recipe.mitigation_label() for p in experiment.points] == ["none", "scale_batches"]
    assert experiment.resolved["mitigations"][0]["plugin"] == "scale_batches"  # the recipe as written stays whole
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    assert statistics.baselines(run.results) == {1: 0}
    cells = {c["sweep_id"]: c for c in run.manifest["cells"]}
    assert "scale_batches.factor" not in cells[0] and cells[1]["scale_batches.factor"] == 1.0


def test_evaluators_calibrate_on_the_training_domains_validation_split_only(registry, toy_recipe, tmp_path):
    from harmonia.protocol import load_cohort, split_seed
    from harmonia.splits import split_patients

    toy_plugins.CalibratingSpy.calibrated_on.clear()
    toy_recipe["evaluate"] = ["calibrating_spy"]
    toy_recipe["train"].update(seeds=1, epochs=1)
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    # as the first evaluator it calibrates before each epoch's validation score, then once with the kept weights
    assert toy_plugins.CalibratingSpy.calibrated_on == [set(splits["A"].val)] * 2 + [set(splits["B"].val)] * 2

    # the undefined metric is NaN in results.csv and its reason is in the manifest, per cell and test domain
    undefined = run.results[run.results["metric"] == "never_defined"]
    assert len(undefined) == 4 and undefined["value"].isna().all()
    reasons = [u for cell in run.manifest["cells"] for u in cell["undefined"]]
    assert len(reasons) == 4 and {u["reason"] for u in reasons} == {"no positive pixels to score"}


def test_a_model_of_the_wrong_dimensionality_is_named_before_anything_runs(registry):
    volume_task = Task("segmentation", ("background", "square"), spatial_dims=3)
    problem = incompatibility(volume_task, "toy3d", PluginSpec(plugin="unet2d"), [], registry)
    assert problem == "model.plugin: 'unet2d' takes 2-D images; cohort toy3d gives 3-D items"
    assert incompatibility(volume_task, "toy3d", PluginSpec(plugin="toynet"), [], registry) is None


def test_resume_finishes_a_multi_cohort_run_with_the_same_results(registry, toy_recipe, tmp_path):
    recipe = two_cohorts(toy_recipe)
    recipe["train"].update(seeds=2, epochs=1)
    full = runner.run(recipe, out=tmp_path / "full", registry=registry).results
    cut = runner.run(recipe, out=tmp_path / "cut", registry=registry)
    manifest = json.loads((cut.path / "manifest.json").read_text())
    manifest["cells"] = manifest["cells"][:3]  # as if stopped after three of the eight cells
    (cut.path / "manifest.json").write_text(json.dumps(manifest))
    finished = runner.resume(tmp_path / "cut", registry=registry)
    assert finished.manifest["status"] == "completed" and len(finished.manifest["cells"]) == 8
    pd.testing.assert_frame_equal(finished.results.reset_index(drop=True), full.reset_index(drop=True))
