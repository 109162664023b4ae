"""MitigationStack: the one caller of the mitigation stages, in the documented order, by their rules."""

from __future__ import annotations

import sys
from typing import ClassVar

import numpy as np
import pytest
import torch
import toy_plugins
from test_engine import toy_set
from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

from harmonia import hookimpl, runner
from harmonia import registry as registry_module
from harmonia.api import STAGES, ImageSet, Mitigation, NoParams, Params, Task
from harmonia.engine import Trainer
from harmonia.protocol import load_cohort, split_seed
from harmonia.recipe import load_recipe
from harmonia.registry import Registry
from harmonia.settings import TrainSpec
from harmonia.splits import split_patients
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


class LabelSpy(Mitigation):
    """Records the target-domain set that adjust_training_set and fit receive, by (its name, the stage)."""

    name = "label_spy"
    received: ClassVar[dict[tuple[str, str], ImageSet]] = {}

    def adjust_training_set(self, train, target_train, rng):
        LabelSpy.received[(self.name, "adjust_training_set")] = target_train
        return train

    def fit(self, train, target_train, device):
        LabelSpy.received[(self.name, "fit")] = target_train


class LabelUser(LabelSpy):
    """A LabelSpy that declares it needs the target labels (as supervised target mixing does)."""

    name = "label_user"
    uses_target_labels = True


@hookimpl
def harmonia_mitigations():
    return [Logger, LabelSpy, LabelUser]


def run_with(toy_recipe, monkeypatch, tmp_path, mitigations):
    """Run one seed, one epoch, training on A, with ``mitigations`` (plugin names) and this module's plugins."""
    registry = Registry.from_entry_points(extra=[toy_plugins, sys.modules[__name__]])
    monkeypatch.setattr(registry_module, "_default", registry)
    toy_recipe["mitigations"] = mitigations
    toy_recipe["train"].update(seeds=1, epochs=1)
    toy_recipe["cohort"]["train_domains"] = ["A"]
    runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    return registry


def test_a_protocol_cell_calls_every_stage_through_the_stack_in_order(toy_recipe, monkeypatch, tmp_path):
    Logger.log.clear()
    labels = ("first", "second")
    run_with(toy_recipe, monkeypatch, tmp_path, [{"plugin": "logger", "params": {"label": label}} for label in labels])

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


def test_target_labels_reach_only_a_mitigation_that_declares_uses_target_labels(toy_recipe, monkeypatch, tmp_path):
    """In one cell, the same target set reaches label_spy without labels and label_user with them; both get
    exactly the other domain's train split."""
    LabelSpy.received.clear()
    registry = run_with(toy_recipe, monkeypatch, tmp_path, [{"plugin": "label_spy"}, {"plugin": "label_user"}])

    point = load_recipe(toy_recipe, registry=registry).points[0]
    data = load_cohort(point.recipe.cohort, registry)
    b_train = data.items.of_patients(split_patients(data.index, split_seed(point, 0), data.domains)["B"].train, "B")
    assert len(LabelSpy.received) == 4
    for stage in ("adjust_training_set", "fit"):
        hidden, shown = LabelSpy.received[("label_spy", stage)], LabelSpy.received[("label_user", stage)]
        assert hidden.targets is None and not hidden.labelled
        assert torch.equal(shown.targets, b_train.targets) and b_train.targets.any()
        for seen in (hidden, shown):
            assert torch.equal(seen.images, b_train.images)
            assert list(seen.patients) == list(b_train.patients) and set(seen.domains) == {"B"}


def test_a_training_set_without_labels_is_refused_naming_the_mitigation():
    class Swapper(Mitigation):
        """Trains on the target set it was given (without declaring uses_target_labels)."""

        name = "swapper"

        def adjust_training_set(self, train, target_train, rng):
            return target_train

    stack = MitigationStack([Swapper(NoParams(), TASK)])
    with pytest.raises(RuntimeError, match="mitigation swapper returned a training set without labels"):
        stack.adjust_training_set(toy_set(), toy_set(seed=1), np.random.default_rng(0))


def test_unlabelled_sets_keep_no_labels_and_do_not_mix_with_labelled_ones():
    labelled = toy_set()
    hidden = toy_set(seed=1).without_targets()
    assert hidden.take([0, 2]).targets is None and len(hidden.take([0, 2])) == 2
    assert ImageSet.concat([hidden, hidden]).targets is None
    with pytest.raises(ValueError, match="labelled and unlabelled.*uses_target_labels"):
        ImageSet.concat([labelled, hidden])


def test_epoch_metrics_are_keyed_by_mitigation_and_numbered_where_a_name_repeats():
    class Reports(Mitigation):
        name = "reports"

        def __init__(self, value):
            super().__init__(NoParams(), TASK)
            self.value = value

        def epoch_metrics(self):
            return {"x": self.value}

    class Quiet(Mitigation):
        name = "quiet"

    stack = MitigationStack([Reports(1.0), Quiet(NoParams(), TASK), Reports(2.0)])
    assert stack.epoch_metrics() == {"reports#1.x": 1.0, "reports#2.x": 2.0}
    assert MitigationStack([Reports(3.0)]).epoch_metrics() == {"reports.x": 3.0}
