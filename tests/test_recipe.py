"""Recipe loading: safe YAML, one-line errors with the file and key path, overrides and sweeps."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from harmonia.errors import RecipeError
from harmonia.recipe import TrainSpec, _first_error, brief, key_path, load_recipe, load_yaml


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
    assert (
        "mitigations[1].plugin: unknown mitigation plugin 'spy_mitigatoin'; did you mean 'spy_mitigation'?" in message
    )


def test_wrong_type_in_plugin_params_names_the_key_path(registry, toy_recipe, tmp_path):
    toy_recipe["model"]["params"]["width"] = "wide"
    assert "model.params.width: Input should be a valid integer" in error_of(tmp_path, toy_recipe, registry=registry)


def test_wrong_value_in_core_settings(registry, toy_recipe, tmp_path):
    toy_recipe["train"]["epochs"] = 0
    assert "train.epochs: Input should be greater than or equal to 1" in error_of(
        tmp_path, toy_recipe, registry=registry
    )


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
    assert "--set: mitigations.3: no list item 3" in error_of(
        tmp_path, toy_recipe, ["mitigations.3.plugin=x"], registry
    )
    assert "train.epochs: Input should be a valid integer" in error_of(
        tmp_path, toy_recipe, ["train.epochs=many"], registry
    )


def test_sweep_expands_a_grid_in_order(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {"model.params.width": [2, 4], "train.lr": [0.1, 0.01]}
    points = load_recipe(write(tmp_path, toy_recipe), registry=registry).points
    assert [(p.recipe.model.params["width"], p.recipe.train.lr) for p in points] == [
        (2, 0.1),
        (2, 0.01),
        (4, 0.1),
        (4, 0.01),
    ]
    assert points[3].values == {"model.params.width": 4, "train.lr": 0.01}


def test_an_invalid_sweep_value_names_the_point(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {"model.params.width": [2, -1]}
    message = error_of(tmp_path, toy_recipe, registry=registry)
    assert (
        "model.params.width: Input should be greater than or equal to 1 (sweep point 1: model.params.width=-1)"
        in message
    )


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


# ------------------------------------------------------------------------------------------------
# Bad input that used to hang, run silently or be misread (issue 7)
# ------------------------------------------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    """YAML whose last anchor, ``l8``, expands to 9**9 (387 million) strings while parsing to a few lists."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_anything_expands_it(registry, toy_recipe, tmp_path):
    recipe = alias_bomb() + yaml.safe_dump(toy_recipe) + "sweep: {description: [*l8]}\n"
    message = error_of(tmp_path, recipe, registry=registry)
    assert "the recipe holds more than 100,000 values" in message


def test_a_self_containing_value_is_refused(registry, toy_recipe, tmp_path):
    recipe = yaml.safe_dump(toy_recipe) + "description: &loop [*loop]\n"
    assert "more than 100,000 values" in error_of(tmp_path, recipe, registry=registry)


def test_brief_reads_only_what_it_prints():
    bomb = yaml.safe_load(alias_bomb())["l8"]
    loop: list = []
    loop.append(loop)
    for value in (bomb, loop, "x" * 10**7, 2**100_000):
        text = brief(value)
        assert len(text) <= 80
    assert brief(bomb).endswith("…") and brief({"a": [1, True, None]}) == '{"a":[1,true,null]}'


def test_a_large_swept_value_is_cut_short_in_the_error(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {"model.params.width": [list(range(5000))]}
    message = error_of(tmp_path, toy_recipe, registry=registry)
    echoed = message.partition("(sweep point 0: model.params.width=")[2]
    assert echoed.startswith("[0,1,2,3,") and echoed.endswith("…)") and len(echoed) == 81


def test_a_sweep_larger_than_the_cap_is_refused_before_expanding(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {f"cohort.params.x{i}": list(range(10)) for i in range(6)}  # 10**6 points
    message = error_of(tmp_path, toy_recipe, registry=registry)
    assert message.endswith(
        "sweep: the grid has 1,000,000 points, more than max_sweep_points (1,000); "
        "to run it, set 'max_sweep_points: 1000000' in the recipe (or --set max_sweep_points=1000000)"
    )


def test_max_sweep_points_raises_the_cap_and_is_recorded(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {"model.params.width": [1, 2], "train.lr": [0.1, 0.01]}
    assert "more than max_sweep_points (3)" in error_of(tmp_path, toy_recipe, ["max_sweep_points=3"], registry)
    experiment = load_recipe(write(tmp_path, toy_recipe), ["max_sweep_points=4"], registry)
    assert len(experiment.points) == 4 and experiment.resolved["max_sweep_points"] == 4
    assert "max_sweep_points: Input should be a valid integer" in error_of(
        tmp_path, toy_recipe, ["max_sweep_points=true"], registry
    )


def test_a_set_on_a_key_the_sweep_sets_is_refused(registry, toy_recipe, tmp_path):
    toy_recipe["sweep"] = {"train.lr": [0.1, 0.01]}
    message = error_of(tmp_path, toy_recipe, ["train.lr=0.5"], registry)
    assert message.endswith("--set train.lr=0.5: the sweep also sets train.lr; change the sweep or drop the --set")
    assert "the sweep also sets train.lr" in error_of(tmp_path, toy_recipe, ["train={lr: 0.5}"], registry)
    assert (
        len(load_recipe(write(tmp_path, toy_recipe), ["train.epochs=1", "sweep={train.lr: [0.5]}"], registry).points)
        == 1
    )


def test_a_duplicate_key_names_the_file_line_and_key(registry, tmp_path):
    message = error_of(tmp_path, "name: x\ntrain:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", registry=registry)
    assert message.endswith('line 5: invalid YAML: duplicate key "lr" (first on line 3)')


def test_merge_keys_may_still_override_what_they_merge():
    assert load_yaml("a: &base {k: 1, j: 2}\nb: {<<: *base, k: 3}\n")["b"] == {"k": 3, "j": 2}


def test_a_duplicate_key_in_a_set_value_is_refused(registry, toy_recipe, tmp_path):
    with pytest.raises(RecipeError, match=r'^--set train=\{lr: 1, lr: 2\}: duplicate key "lr" \(first on line 1\)$'):
        load_recipe(write(tmp_path, toy_recipe), ["train={lr: 1, lr: 2}"], registry)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.lr=.inf", "train.lr: Input should be a finite number"),
        ("train.lr=.nan", "train.lr: Input should be a finite number"),
        ("cohort.synthetic.strength=.inf", "cohort.synthetic.strength: Input should be a finite number"),
        (
            "mitigations=[{plugin: dann, params: {weight: .nan}}]",
            "mitigations[0].params.weight: Input should be a finite number",
        ),
    ],
)
def test_non_finite_numbers_are_refused(registry, toy_recipe, tmp_path, override, expected):
    assert error_of(tmp_path, toy_recipe, [override], registry).endswith(expected)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.epochs=true", "train.epochs: Input should be a number, not true/false"),
        ("train.lr=false", "train.lr: Input should be a number, not true/false"),
        ("train.amp=1", "train.amp: Input should be true or false, not a number"),
        ("cohort.synthetic.patients=true", "cohort.synthetic.patients: Input should be a number, not true/false"),
        ("model.params.width=true", "model.params.width: Input should be a number, not true/false"),
        ("cohort.params.paired=0", "cohort.params.paired: Input should be true or false, not a number"),
    ],
)
def test_booleans_and_numbers_do_not_pass_for_each_other(registry, toy_recipe, tmp_path, override, expected):
    assert error_of(tmp_path, toy_recipe, [override], registry).endswith(expected)


def test_lr_written_1e_4_is_a_number(registry, toy_recipe, tmp_path):
    toy_recipe.pop("train")
    recipe = yaml.safe_dump(toy_recipe) + "train: {epochs: 2, lr: 1e-4}\n"
    assert load_recipe(write(tmp_path, recipe), registry=registry).points[0].recipe.train.lr == 0.0001


def test_value_errors_from_validators_read_plainly(registry, toy_recipe, tmp_path):
    message = error_of(tmp_path, toy_recipe, ["train.device=gpu"], registry)
    assert message.endswith("train.device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def test_first_error_is_one_line_without_pydantic_s_url():
    with pytest.raises(ValidationError) as info:
        TrainSpec(epochs=0, lr="fast", device="gpu\nnext line")
    message = _first_error(info.value, ("train",))
    assert message == "train.epochs: Input should be greater than or equal to 1 (and 2 more errors)"
    assert "http" in str(info.value) and "http" not in message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["mitigations=[{plugin: ct_standardizer}]"],
            "mitigations[0].plugin: 'ct_standardizer' is made for CT; cohort mnms is MRI",
        ),
        (
            ["cohort={plugin: ct_kidney}", "mitigations=[{plugin: ct_standardizer}]"],
            "cohort ct_kidney is not paired: use mode: unpaired",
        ),
    ],
)
def test_a_mitigation_unsuited_to_the_cohort_is_refused_before_running(overrides, message):
    with pytest.raises(RecipeError) as error:
        load_recipe("recipes/mnms_dann.yaml", ["sweep={}", *overrides])
    assert message in str(error.value)


def test_a_paired_cohort_takes_the_paired_standardizer():
    experiment = load_recipe("recipes/ct_standardizer.yaml")
    assert any(s.plugin == "ct_standardizer" for p in experiment.points for s in p.recipe.mitigations)
