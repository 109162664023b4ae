"""Recipe loading: safe YAML, one-line errors with the file and key path, overrides and sweeps."""

from __future__ import annotations

import pytest
import yaml

from harmonia.errors import RecipeError
from harmonia.recipe import key_path, load_recipe


def write(tmp_path, data, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error_of(tmp_path, data, overrides=(), registry=None) -> str:
    path = write(tmp_path, data)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides, registry)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_valid_recipe_fills_plugin_defaults(registry, toy_recipe, tmp_path):
    experiment = load_recipe(write(tmp_path, toy_recipe), registry=registry)
    [point] = experiment.points
    assert point.recipe.cohort.params == {"domains": ["A", "B"], "paired": False, "on_unreadable": "stop"}
    assert experiment.resolved["train"]["lr"] == 0.01
    assert experiment.resolved["cohort"]["synthetic"]["strength"] == 1.0


def test_unknown_top_level_key(registry, toy_recipe, tmp_path):
    toy_recipe["trian"] = {}
    assert error_of(tmp_path, toy_recipe, registry=registry).endswith("trian: unknown key")


def test_unknown_plugin_suggests_the_closest(registry, toy_recipe, tmp_path):
    toy_recipe["mitigations"] = [{"plugin": "spy_mitigation"}, {"plugin": "spy_mitigatoin"}]
    message = error_of(tmp_path, toy_recipe, registry=registry)
    assert "mitigations[1].plugin: unknown mitigation plugin 'spy_mitigatoin'; did you mean 'spy_mitigation'?" in message


def test_wrong_type_in_plugin_params_names_the_key_path(registry, toy_recipe, tmp_path):
    toy_recipe["model"]["params"]["width"] = "wide"
    assert "model.params.width: Input should be a valid integer" in error_of(tmp_path, toy_recipe, registry=registry)


def test_wrong_value_in_core_settings(registry, toy_recipe, tmp_path):
    toy_recipe["train"]["epochs"] = 0
    assert "train.epochs: Input should be greater than or equal to 1" in error_of(tmp_path, toy_recipe, registry=registry)


def test_unknown_plugin_param(registry, toy_recipe, tmp_path):
    toy_recipe["model"]["params"]["depth"] = 3
    assert "model.params.depth: unknown key" in error_of(tmp_path, toy_recipe, registry=registry)


def test_missing_required_key(registry, toy_recipe, tmp_path):
    del toy_recipe["model"]
    assert error_of(tmp_path, toy_recipe, registry=registry).endswith("model: required key is missing")


def test_invalid_yaml_names_the_line(tmp_path):
    assert "line 2: invalid YAML" in error_of(tmp_path, "name: x\ncohort: a: b\n")


def test_yaml_tags_that_would_run_code_are_refused(tmp_path):
    assert "invalid YAML" in error_of(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n")


def test_missing_file():
    with pytest.raises(RecipeError, match="nope.yaml: no such recipe file"):
        load_recipe("nope.yaml")


def test_overrides_set_nested_values_and_list_items(registry, toy_recipe, tmp_path):
    toy_recipe["mitigations"] = [{"plugin": "spy_mitigation"}]
    experiment = load_recipe(
        write(tmp_path, toy_recipe),
        ["train.epochs=7", "model.params.width=3", "mitigations.0.plugin=failing", "cohort.synthetic.patients=4"],
        registry,
    )
    recipe = experiment.points[0].recipe
    assert (recipe.train.epochs, recipe.model.params["width"], recipe.mitigations[0].plugin) == (7, 3, "failing")
    assert recipe.cohort.synthetic.patients == 4


def test_override_errors_name_the_path(registry, toy_recipe, tmp_path):
    assert "--set: mitigations.3: no list item 3" in error_of(tmp_path, toy_recipe, ["mitigations.3.plugin=x"], registry)
    assert "train.epochs: Input should be a valid integer" in error_of(tmp_path, toy_recipe, ["train.epochs=many"], registry)


def test_sweep_expands_a_grid_in_order(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {"model.params.width": [2, 4], "train.lr": [0.1, 0.01]}
    points = load_recipe(write(tmp_path, toy_recipe), registry=registry).points
    assert [(p.recipe.model.params["width"], p.recipe.train.lr) for p in points] == [(2, 0.1), (2, 0.01), (4, 0.1), (4, 0.01)]
    assert points[3].values == {"model.params.width": 4, "train.lr": 0.01}


def test_an_invalid_sweep_value_names_the_point(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {"model.params.width": [2, -1]}
    message = error_of(tmp_path, toy_recipe, registry=registry)
    assert "model.params.width: Input should be greater than or equal to 1 (sweep point 1: model.params.width=-1)" in message


def test_incompatible_model_and_cohort(registry, toy_recipe, tmp_path):
    toy_recipe["evaluate"] = ["pixel_accuracy"]

    from toy_plugins import ToyNet

    ToyNet.tasks = ("classification",)
    try:
        assert "model.plugin: 'toynet' cannot do segmentation" in error_of(tmp_path, toy_recipe, registry=registry)
    finally:
        ToyNet.tasks = ("segmentation",)


@pytest.mark.parametrize("loc,expected", [(("a", 1, "b"), "a[1].b"), (("x",), "x"), ((), "")])
def test_key_path(loc, expected):
    assert key_path(loc) == expected
