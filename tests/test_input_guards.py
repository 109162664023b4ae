"""Guards on bad input outside the recipe loader: the command line, the settings models, the layering."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError
from test_recipe import alias_bomb

from harmonia.api import Params, TwinSettings
from harmonia.cli import main
from harmonia.settings import TrainSpec


class FloatParams(Params):
    scale: float = 1.0
    sizes: list[int] = [1]
    enabled: bool | None = None


@pytest.mark.parametrize(
    "values",
    [{"scale": float("inf")}, {"scale": float("nan")}, {"scale": True}, {"sizes": [2, False]}, {"enabled": 1}],
)
def test_every_params_subclass_refuses_non_finite_floats_and_bool_number_mixups(values):
    with pytest.raises(ValidationError):
        FloatParams(**values)


def test_params_accept_what_they_should():
    params = FloatParams(scale="1e-4", sizes=[2, 3], enabled=False)
    assert (params.scale, params.sizes, params.enabled) == (0.0001, [2, 3], False)
    with pytest.raises(ValidationError):
        params.scale = True  # checked on assignment too


@pytest.mark.parametrize(
    "model,values",
    [
        (TrainSpec, {"epochs": True}),
        (TrainSpec, {"lr": float("inf")}),
        (TwinSettings, {"difficulty": float("nan")}),
        (TwinSettings, {"seed": False}),
    ],
)
def test_core_settings_are_strict_too(model, values):
    with pytest.raises(ValidationError):
        model(**values)


def test_train_spec_keeps_models_only_when_asked():
    assert TrainSpec().save_models is False and TrainSpec(save_models=True).save_models is True


def test_the_engine_does_not_import_the_recipe_loader():
    code = "import sys, harmonia.engine; print('harmonia.recipe' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_train_spec_is_still_importable_from_the_recipe_module():
    from harmonia.recipe import TrainSpec as FromRecipe

    assert FromRecipe is TrainSpec


@pytest.mark.parametrize(
    "option,expected",
    [
        (["--patients", "-1"], "synth --patients: Input should be greater than or equal to 2"),
        (["--strength", "inf"], "synth --strength: Input should be a finite number"),
        (["--difficulty", "1.5"], "synth --difficulty: Input should be less than or equal to 1"),
    ],
)
def test_synth_names_the_option_and_the_rule_on_one_line(registry, tmp_path, capsys, option, expected):
    assert main(["synth", "toy", "--out", str(tmp_path / "twin"), *option]) == 2
    err = capsys.readouterr().err
    assert err == f"harmonia: error: {expected}\n"
    assert "pydantic" not in err and "http" not in err
    assert not (tmp_path / "twin").exists()


def test_validate_refuses_an_alias_bomb(registry, toy_recipe, tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb() + yaml.safe_dump(toy_recipe) + "sweep: {description: [*l8]}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"harmonia: error: {path}: the recipe holds more than 100,000 values") and err.count("\n") == 1
    )


def test_a_batch_of_one_item_is_refused_because_it_would_train_nothing(registry, toy_recipe):
    from harmonia.errors import RecipeError
    from harmonia.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"train\.batch_size: Input should be greater than or equal to 2"):
        load_recipe(toy_recipe, ["train.batch_size=1"], registry=registry)
