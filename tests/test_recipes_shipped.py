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


STUDY_MODELS = {
    "mri_prostate": "mrnet2d",
    "mri_breast": "nodulex",
    "ct_kidney": "mrnet2d",
    "ct_lidc": "nodulex",
    "ct_hnscc": "mrnet2d",
    "ct_oropharyngeal": "nodulex",
    "xray_chest": "densenet121",
}


def test_the_table2_recipe_is_the_papers_protocol(bare_install):
    """Guo et al.: seven cohorts, each with the study's model for its images; 60 epochs, batch 50, lr 1e-4, 10 seeds, AUC."""
    experiment = load_recipe(RECIPES_DIR / "paper_table2.yaml", registry=bare_install)
    assert {p.recipe.cohort.plugin: p.recipe.model.plugin for p in experiment.points} == STUDY_MODELS
    for point in experiment.points:
        train = point.recipe.train
        assert (train.epochs, train.batch_size, train.lr, train.seeds) == (60, 50, 1e-4, 10)
        assert [e.plugin for e in point.recipe.evaluate] == ["auc"] and point.recipe.mitigations == []
    assert experiment.resolved["reference"] == "guo_table2"


@pytest.mark.parametrize(
    ("name", "key", "levels"),
    [
        ("noise.yaml", "mitigations.0.params.alpha", [0, 1, 2, 3, 4, 5, 7, 10, 15, 30, 50]),
        ("mixing.yaml", "mitigations.0.params.fraction", [0, 0.1, 0.2, 0.3, 0.4, 0.5]),
    ],
)
def test_the_appendix_recipes_sweep_the_papers_grid_with_level_0_as_baseline(bare_install, name, key, levels):
    experiment = load_recipe(RECIPES_DIR / name, registry=bare_install)
    cohorts = ["ct_kidney", "ct_lidc", "mri_prostate"]
    assert [p.recipe.cohort.plugin for p in experiment.points] == [c for c in cohorts for _ in levels]
    assert [p.values[key] for p in experiment.points] == levels * len(cohorts)
    assert all(p.recipe.train.seeds == 3 for p in experiment.points)
    baselines = [p.values[key] for p in experiment.points if p.recipe.mitigation_label() == "none"]
    assert baselines == [0] * len(cohorts)
    # the appendix runs use the study's calibrated twins (docs/synthetic.md), so they reuse its cached twins
    table2 = load_recipe(RECIPES_DIR / "paper_table2.yaml", registry=bare_install)
    study_twin = {p.recipe.cohort.plugin: p.recipe.cohort.synthetic for p in table2.points}
    assert all(p.recipe.cohort.synthetic == study_twin[p.recipe.cohort.plugin] for p in experiment.points)
