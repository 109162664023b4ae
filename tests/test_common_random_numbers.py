"""Sweep points and recipes are compared on the same draws: splits keyed by the cohort, not the recipe's
name; the same initial weights and batch order for the same seed and training domain."""

from __future__ import annotations

import copy

import torch

from harmonia.protocol import Cell, common_seed, split_seed, train_seed
from harmonia.recipe import load_recipe


def points(registry, toy_recipe, **changes):
    recipe = copy.deepcopy(toy_recipe)
    recipe.update(changes)
    return load_recipe(recipe, registry=registry).points


def test_two_recipe_names_share_splits(registry, toy_recipe):
    (a,) = points(registry, toy_recipe, name="first")
    (b,) = points(registry, toy_recipe, name="renamed")
    assert [split_seed(a, i) for i in range(3)] == [split_seed(b, i) for i in range(3)]
    assert split_seed(a, 0) != split_seed(a, 1)


def test_cohort_parameters_change_the_splits(registry, toy_recipe):
    (a,) = points(registry, toy_recipe)
    toy_recipe["cohort"]["params"] = {"domains": ["B", "A"]}
    (b,) = points(registry, toy_recipe)
    assert split_seed(a, 0) != split_seed(b, 0)


def test_plain_and_mitigated_points_share_initialisation_and_batch_order_but_not_other_draws(registry, toy_recipe):
    plain, dann = points(registry, toy_recipe, sweep={"mitigations": [[], [{"plugin": "spy_mitigation"}]]})
    for purpose in ("init", "batches"):
        assert common_seed(Cell(plain, 0, "A"), purpose) == common_seed(Cell(dann, 0, "A"), purpose)
        assert common_seed(Cell(plain, 0, "A"), purpose) != common_seed(Cell(plain, 1, "A"), purpose)
        assert common_seed(Cell(plain, 0, "A"), purpose) != common_seed(Cell(plain, 0, "B"), purpose)
    assert train_seed(Cell(plain, 0, "A")) != train_seed(Cell(dann, 0, "A"))


def test_a_different_model_gets_different_initial_weights(registry, toy_recipe):
    (narrow,) = points(registry, toy_recipe)
    (wide,) = points(registry, toy_recipe, model={"plugin": "toynet", "params": {"width": 6}})
    assert common_seed(Cell(narrow, 0, "A"), "init") != common_seed(Cell(wide, 0, "A"), "init")


def test_the_plain_and_dann_cells_start_from_the_same_weights(registry, toy_recipe, monkeypatch, tmp_path):
    """Through the real protocol: the model's weights when training starts are equal for both points."""
    from harmonia import engine, runner

    first_weights = []
    fit = engine.Trainer.fit

    def spying_fit(self, train, val, target_train, on_epoch=None):
        first_weights.append(torch.cat([p.detach().flatten().clone() for p in self.model.parameters()]))
        return fit(self, train, val, target_train, on_epoch)

    monkeypatch.setattr(engine.Trainer, "fit", spying_fit)
    recipe = copy.deepcopy(toy_recipe)
    recipe["train"] = {**recipe["train"], "seeds": 1, "epochs": 1}
    recipe["sweep"] = {"mitigations": [[], [{"plugin": "dann"}]]}
    runner.run(recipe, out=tmp_path / "run", registry=registry)
    plain_a, plain_b, dann_a, dann_b = first_weights  # seeds outermost, then sweep points, then domains
    assert torch.equal(plain_a, dann_a) and torch.equal(plain_b, dann_b)
    assert not torch.equal(plain_a, plain_b)


def test_the_batch_order_ignores_random_numbers_drawn_by_mitigations():
    import numpy as np
    from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

    from harmonia.api import ImageSet, Mitigation, NoParams, Task
    from harmonia.engine import Trainer
    from harmonia.settings import TrainSpec

    task = Task("segmentation", ("background", "square"))

    class BatchSpy(Mitigation):
        name = "batch_spy"
        batch_space = "native"  # sees the item numbers before the z-score

        def __init__(self, draws: int):
            super().__init__(NoParams(), task)
            self.draws, self.batches = draws, []

        def build(self, model):
            torch.rand(self.draws)  # a mitigation drawing from torch's global RNG (a discriminator's weights)
            return None

        def augment_batch(self, images, targets):
            self.batches.append(images[:, 0, 0, 0].clone())
            return images, targets

    n = 12
    images = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 8, 8).contiguous()
    data = ImageSet(
        images,
        torch.zeros(n, 8, 8, dtype=torch.long),
        np.array(["p"] * n, dtype=object),
        np.array(["A"] * n, dtype=object),
    )
    orders = []
    for draws in (1, 1000):
        spy = BatchSpy(draws)
        settings = TrainSpec(epochs=2, batch_size=4, lr=0.01, device="cpu", selection="last")
        model = ToyNet(ToyNetParams(width=2), task)
        Trainer(model, [spy], PixelAccuracy(NoParams(), task), settings, torch.device("cpu"), batch_seed=7).fit(
            data, data, None
        )
        orders.append(torch.cat(spy.batches))
    assert torch.equal(orders[0], orders[1])
    assert sorted(orders[0][: n - n % 4].tolist()) != orders[0][: n - n % 4].tolist()  # shuffled, not in order
