"""Plugin parameters: one-line errors with "did you mean", typed from the recipe to the plugin, and
how `harmonia list --verbose` describes them."""

from __future__ import annotations

from typing import Literal

import pytest
import toy_plugins
from pydantic import Field

from harmonia.api import Params, Task
from harmonia.errors import RecipeError
from harmonia.plugin_params import InvalidParams, describe_params, validate_params
from harmonia.recipe import load_recipe


class Inner(Params):
    strength: float = Field(0.5, ge=0, le=1, description="how strong")


class Outer(Params):
    mode: Literal["stop", "skip"] | None = Field("stop", description="what to do")
    names: list[str] = Field(default_factory=lambda: ["a"], min_length=1)
    inner: Inner = Field(default_factory=Inner)
    needed: int = Field(gt=0, lt=10)


def test_an_unknown_nested_key_gets_the_closest_field_of_its_own_model():
    with pytest.raises(InvalidParams) as info:
        validate_params(Outer, {"needed": 1, "inner": {"strenght": 0.1}})
    assert (info.value.loc, info.value.rule) == (("inner", "strenght"), "unknown key; did you mean 'strength'?")


def test_several_errors_report_the_first_and_count_the_rest():
    with pytest.raises(
        InvalidParams, match=r"^names: List should have at least 1 item after validation, not 0 \(and 1 more error\)$"
    ):
        validate_params(Outer, {"names": []})


def test_describe_params_gives_type_default_bounds_choices_and_description():
    described = {p.name: p for p in describe_params(Outer)}
    assert (
        described["mode"].type,
        described["mode"].default,
        described["mode"].rules,
        described["mode"].description,
    ) == ("str | None", '"stop"', "one of stop, skip", "what to do")
    assert (described["names"].type, described["names"].default, described["names"].rules) == (
        "list[str]",
        '["a"]',
        "min length 1",
    )
    assert (described["inner"].type, described["inner"].default) == ("Inner", '{"strength": 0.5}')
    assert (described["needed"].default, described["needed"].rules) == ("required", "> 0, < 10")


def test_a_recipe_with_a_misspelt_plugin_parameter_gets_a_suggestion(registry, toy_recipe):
    toy_recipe["model"]["params"] = {"widht": 4}
    with pytest.raises(RecipeError, match=r"model\.params\.widht: unknown key; did you mean 'width'\?$"):
        load_recipe(toy_recipe, registry=registry)


def test_params_are_validated_once_and_reach_the_plugin_typed(registry, toy_recipe):
    experiment = load_recipe(toy_recipe, registry=registry)
    spec = experiment.points[0].recipe.model
    typed = spec.params_for_create
    assert isinstance(typed, toy_plugins.ToyNetParams) and typed.width == 4
    assert spec.params == {"width": 4} and experiment.resolved["model"]["params"] == {"width": 4}
    model = registry.create("model", spec.plugin, typed, Task("segmentation", ("background", "square")))
    assert model.params is typed
