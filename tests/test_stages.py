"""MitigationStack: the one caller of the mitigation stages, in the documented order, by their rules."""

from __future__ import annotations

import sys
from typing import ClassVar

import torch
import toy_plugins
from test_engine import toy_set
from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

from harmonia import hookimpl, runner
from harmonia import registry as registry_module
from harmonia.api import STAGES, Mitigation, NoParams, Params, Task
from harmonia.engine import Trainer
from harmonia.registry import Registry
from harmonia.settings import TrainSpec
from harmonia.stages import MitigationStack

TASK = Task("segmentation", ("background", "square"))


class LoggerParams(Params):
    label: str = "logger"


class Logger(Mitigation):
    """Implements every stage, changing nothing; logs (its label, the stage, the calling module) at each call."""

    name = "logger"
    Params = LoggerParams
    log: ClassVar[list[tuple[str, str, str]]] = []

    def __init__(self, params: LoggerParams, task: Task):
        super().__init__(params, task)
        self.target_batches: list[int | None] = []

    def _called(self, stage: str) -> None:
        Logger.log.append((self.params.label, stage, sys._getframe(2).f_globals["__name__"]))

    def adjust_training_set(self, train, target_train, rng):
        self._called("adjust_training_set")
        return train

    def task_loss(self, default):
        self._called("task_loss")
        return None

    def fit(self, train, target_train, device):
        self._called("fit")

    def transform_images(self, images):
        self._called("transform_images")
        return images

    def build(self, model):
        self._called("build")
        return None

    def augment_batch(self, images, targets):
        self._called("augment_batch")
        return images, targets

    def extra_loss(self, step):
        self._called("extra_loss")
        self.target_batches.append(None if step.target_images is None else len(step.target_images))
        return None


class TargetUser(Logger):
    name = "target_user"
    uses_target_images = True


@hookimpl
def harmonia_mitigations():
    return [Logger]


def test_a_protocol_cell_calls_every_stage_through_the_stack_in_order(toy_recipe, monkeypatch, tmp_path):
    registry = Registry.from_entry_points(extra=[toy_plugins, sys.modules[__name__]])
    monkeypatch.setattr(registry_module, "_default", registry)
    toy_recipe["mitigations"] = [{"plugin": "logger", "params": {"label": label}} for label in ("first", "second")]
    toy_recipe["train"].update(seeds=1, epochs=1)
    toy_recipe["cohort"]["train_domains"] = ["A"]
    Logger.log.clear()
    runner.run(toy_recipe, out=tmp_path / "run", registry=registry)

    assert {caller for _, _, caller in Logger.log} == {"harmonia.stages"}
    assert list(dict.fromkeys(stage for _, stage, _ in Logger.log)) == list(STAGES)
    for stage in STAGES:
        assert [label for label, s, _ in Logger.log if s == stage][:2] == ["first", "second"]
    # one training step: both augment, then both add their loss
    step = [(label, s) for label, s, _ in Logger.log if s in ("augment_batch", "extra_loss")][:4]
    assert step == [
        ("first", "augment_batch"),
        ("second", "augment_batch"),
        ("first", "extra_loss"),
        ("second", "extra_loss"),
    ]


def fit_one_cell(mitigations, target):
    settings = TrainSpec(epochs=1, batch_size=8, lr=0.01, device="cpu")
    model = ToyNet(ToyNetParams(width=4), TASK)
    trainer = Trainer(model, mitigations, PixelAccuracy(NoParams(), TASK), settings, torch.device("cpu"))
    trainer.fit(toy_set(), toy_set(seed=1), target)


def test_a_target_batch_is_drawn_only_when_a_mitigation_uses_target_images():
    target = toy_set(seed=2, invert=True)
    plain = Logger(LoggerParams(), TASK)
    fit_one_cell([plain], target)
    assert plain.target_batches and set(plain.target_batches) == {None}

    user = TargetUser(LoggerParams(), TASK)
    fit_one_cell([user], target)
    assert set(user.target_batches) == {8}  # a target batch as large as the source batch, every step


def test_native_augmenters_act_before_the_z_score_and_normalized_ones_after():
    calls = []

    class Adds(Mitigation):
        name = "adds"

        def __init__(self, space, amount):
            super().__init__(NoParams(), TASK)
            self.batch_space, self.amount = space, amount

        def augment_batch(self, images, targets):
            calls.append((self.batch_space, round(float(images.mean()), 3)))
            return images + self.amount, targets

    # recipe order puts the normalized one first: the stack still runs the native one first
    stack = MitigationStack([Adds("normalized", 5.0), Adds("native", 100.0)])
    images = torch.full((2, 1, 4, 4), 10.0) + torch.arange(16.0).reshape(1, 1, 4, 4)
    out, _ = stack.augment_batch(images, torch.zeros(2), normalize=lambda x: x - x.mean())
    assert calls == [("native", 17.5), ("normalized", 0.0)]
    assert float(out.mean()) == 5.0
