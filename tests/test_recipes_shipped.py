"""Every recipe shipped in recipes/ validates and names only plugins a bare install of harmonia has.

Parametrised by file name, so a recipe added to recipes/ is covered without touching this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harmonia.recipe import load_recipe
from harmonia.registry import ALLOW_ENV, DISABLE_AUTOLOAD_ENV, DISABLE_ENV, Registry

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted([*RECIPES_DIR.glob("*.yaml"), *RECIPES_DIR.glob("*.yml")])


@pytest.fixture
def bare_install(monkeypatch) -> Registry:
    """harmonia's own plugins only: no third-party entry points, none disabled, no toy plugins."""
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    return Registry.from_entry_points()


def plugins_named(point) -> list[tuple[str, str]]:
    """(kind, name) of every plugin one sweep point of a recipe uses."""
    recipe = point.recipe
    return [
        ("cohort", recipe.cohort.plugin),
        ("model", recipe.model.plugin),
        *(("mitigation", m.plugin) for m in recipe.mitigations),
        *(("evaluator", e.plugin) for e in recipe.evaluate),
    ]


def test_recipes_folder_is_not_empty():
    assert RECIPES, f"no recipe found in {RECIPES_DIR}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates(path, bare_install):
    experiment = load_recipe(path, registry=bare_install)
    assert experiment.points
    assert experiment.source == str(path)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_names_only_first_party_plugins(path, bare_install):
    experiment = load_recipe(path, registry=bare_install)
    for point in experiment.points:
        for kind, name in plugins_named(point):
            assert bare_install.is_plugin(kind, name), f"{path.name} sweep point {point.id}: no {kind} plugin {name!r}"
            assert bare_install.get(kind, name).source.origin == "first-party", f"{path.name}: {kind} {name!r}"
