"""The training engine: z-scoring, stage order, epoch selection, determinism, the loss it trains with,
divergence and per-epoch progress."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

from harmonia.api import ImageSet, Metric, Mitigation, NoParams, Task
from harmonia.engine import Trainer, zscore
from harmonia.errors import InputError, TrainingDiverged
from harmonia.settings import TrainSpec

TASK = Task("segmentation", ("background", "square"))


def toy_set(n=24, seed=0, invert=False) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(2, 8, (2,), generator=g)
        masks[i, r : r + 6, c : c + 6] = 1
    images = masks[:, None].float() * 100 + 20 + 5 * torch.randn(n, 1, 16, 16, generator=g)
    if invert:
        images = 200 - images
    patients = np.array([f"p{i // 3}" for i in range(n)], dtype=object)
    return ImageSet(images, masks, patients, np.array(["A"] * n, dtype=object))


def trainer(mitigations=(), epochs=3, selection="best_val", seed=0, model_cls=ToyNet):
    torch.manual_seed(seed)
    model = model_cls(ToyNetParams(width=4), TASK)
    settings = TrainSpec(epochs=epochs, batch_size=8, lr=0.01, device="cpu", selection=selection)
    return Trainer(model, list(mitigations), PixelAccuracy(NoParams(), TASK), settings, torch.device("cpu"))


def test_zscore_is_per_image():
    x = torch.stack([torch.arange(16.0).reshape(1, 4, 4), 100 + 10 * torch.arange(16.0).reshape(1, 4, 4)])
    z = zscore(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-4)
    assert torch.allclose(z[0], z[1], atol=1e-4)  # an affine intensity change is undone


def test_training_is_deterministic_for_a_seed():
    data = toy_set()
    weights = []
    for _ in range(2):
        t = trainer(seed=5)
        torch.manual_seed(11)
        t.fit(data, data, None)
        weights.append(torch.cat([p.detach().flatten() for p in t.model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_best_validation_epoch_is_kept():
    train, val = toy_set(seed=0), toy_set(seed=1, invert=True)  # validation that disagrees with training
    t = trainer(epochs=6)
    result = t.fit(train, val, None)
    scores = [r.val_score for r in result.history]
    assert result.selected_epoch == int(np.argmax(scores))
    kept = PixelAccuracy(NoParams(), TASK).evaluate(t.predictions(val))[0].value
    assert kept == pytest.approx(max(scores))


class ScriptedError(PixelAccuracy):
    """A lower-is-better validation metric that reads its values from a script, one per epoch."""

    name = "scripted_error"
    higher_is_better = False
    script: list = []

    def evaluate(self, predictions):
        return [Metric("error", ScriptedError.script.pop(0), 1)]


@pytest.mark.parametrize(
    "values, kept",
    [([0.4, 0.2, 0.3], 1), ([0.4, math.nan, 0.3], 2), ([math.nan, 0.5, math.inf], 1)],
)
def test_a_lower_is_better_selector_keeps_its_lowest_finite_epoch(values, kept):
    ScriptedError.script = list(values)
    t = trainer(epochs=3)
    t.selector = ScriptedError(NoParams(), TASK)
    result = t.fit(toy_set(), toy_set(seed=1), None)
    assert result.selected_epoch == kept
    history = [r.val_score for r in result.history]  # the metric as the evaluator gave it, not negated
    assert history[kept] == values[kept] and all(
        h == v or (math.isnan(h) and math.isnan(v)) for h, v in zip(history, values)
    )


class Recorder(Mitigation):
    """Records the units each augmentation stage receives and the images prediction sees."""

    name = "recorder"
    log: list = []

    def __init__(self, space):
        super().__init__(NoParams(), TASK)
        self.batch_space = space

    def augment_batch(self, images, targets):
        Recorder.log.append((self.batch_space, float(images.mean())))
        return images, targets

    def transform_images(self, images):
        Recorder.log.append(("transform", len(images)))
        return images


def test_native_augmentation_sees_native_units_and_normalized_sees_z_scores():
    Recorder.log = []
    data = toy_set()
    t = trainer([Recorder("native"), Recorder("normalized")], epochs=1)
    t.fit(data, data, None)
    native = [m for s, m in Recorder.log if s == "native"]
    normalized = [m for s, m in Recorder.log if s == "normalized"]
    assert native and all(m > 20 for m in native)  # raw intensities around 20..120
    assert normalized and all(abs(m) < 1e-4 for m in normalized)
    # transform_images ran on the training set once, then before each validation prediction
    assert [entry for entry in Recorder.log if entry[0] == "transform"][:2] == [("transform", 24), ("transform", 24)]


def test_a_mitigation_that_needs_target_images_without_other_domains_fails_clearly():
    class NeedsTarget(Mitigation):
        name = "needs_target"
        uses_target_images = True

    t = trainer([NeedsTarget(NoParams(), TASK)], epochs=1)
    with pytest.raises(InputError, match="needs_target needs target-domain training images"):
        t.fit(toy_set(), toy_set(), None)


# -- the loss training minimises ---------------------------------------------------------------


class SpyLoss(nn.Module):
    """Records the logits and targets it is called with; returns ``value`` (with a gradient) instead of a real loss."""

    def __init__(self, value: float = 7.0):
        super().__init__()
        self.value = value
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, logits, targets):
        self.calls.append((tuple(logits.shape), tuple(targets.shape)))
        return 0.0 * logits.sum() + self.value


class OwnLossNet(ToyNet):
    """A ToyNet that trains with its own (spy) loss."""

    def __init__(self, params, task):
        super().__init__(params, task)
        self.loss = SpyLoss(7.0)

    def task_loss(self):
        return self.loss


class ReplacesLoss(Mitigation):
    """Replaces the task loss with a spy; records the default it was offered."""

    name = "replaces_loss"

    def __init__(self, value: float = 3.0):
        super().__init__(NoParams(), TASK)
        self.loss = SpyLoss(value)
        self.offered = None

    def task_loss(self, default):
        self.offered = default
        return self.loss


def test_the_default_loss_is_the_task_kinds():
    from harmonia.losses import DiceCrossEntropy

    t = trainer()
    assert isinstance(t.loss_fn, DiceCrossEntropy)
    assert isinstance(ToyNet(ToyNetParams(), Task("classification", ("a", "b"))).task_loss(), nn.CrossEntropyLoss)


def test_a_model_that_supplies_its_loss_is_trained_with_it():
    t = trainer(epochs=2, model_cls=OwnLossNet)
    result = t.fit(toy_set(), toy_set(), None)
    assert len(t.model.loss.calls) == 2 * 3  # 24 items in batches of 8, two epochs
    assert set(t.model.loss.calls) == {((8, 2, 16, 16), (8, 16, 16))}
    assert [r.train_loss for r in result.history] == [7.0, 7.0]


def test_a_mitigation_that_replaces_the_loss_wins_over_the_models():
    replaces = ReplacesLoss(3.0)
    t = trainer([replaces], epochs=2, model_cls=OwnLossNet)
    result = t.fit(toy_set(), toy_set(), None)
    assert replaces.offered is t.model.loss  # offered the model's loss as the default
    assert len(replaces.loss.calls) == 6 and t.model.loss.calls == []
    assert [r.train_loss for r in result.history] == [3.0, 3.0]


def test_two_mitigations_replacing_the_loss_are_an_error_naming_both_before_any_training():
    class AlsoReplaces(ReplacesLoss):
        name = "also_replaces"

    class Declines(ReplacesLoss):
        name = "declines"

        def task_loss(self, default):
            return None

    first, second = ReplacesLoss(), AlsoReplaces()
    expected = "^mitigations replaces_loss and also_replaces each replace the task loss"
    with pytest.raises(InputError, match=expected) as error:
        trainer([first, Declines(), second])
    assert "\n" not in str(error.value)
    assert trainer([first, Declines()]).loss_fn is first.loss  # one that declines (None) does not count


# -- divergence and progress -------------------------------------------------------------------


class DivergesAt(nn.Module):
    """The real loss until call ``at`` (1-based), then ``value``."""

    def __init__(self, at: int, value: float):
        super().__init__()
        self.at, self.value, self.calls = at, value, 0
        self.loss = nn.CrossEntropyLoss()

    def forward(self, logits, targets):
        self.calls += 1
        loss = self.loss(logits, targets)
        return loss * self.value if self.calls >= self.at else loss


@pytest.mark.parametrize("value, shown", [(math.nan, "nan"), (math.inf, "inf")])
def test_a_loss_that_is_not_finite_stops_training_with_where_and_what_to_try(value, shown):
    replaces = ReplacesLoss()
    replaces.loss = DivergesAt(at=5, value=value)  # the 2nd step of the 2nd epoch (three steps an epoch)
    t = trainer([replaces], epochs=3)
    epochs_seen = []
    with pytest.raises(TrainingDiverged) as error:
        t.fit(toy_set(), toy_set(), None, on_epoch=epochs_seen.append)
    message = str(error.value)
    assert message == (
        f"training diverged: the loss was {shown} at step 2 of 3 in epoch 2 of 3; try a lower train.lr (now 0.01)"
    )
    assert [r.epoch for r in epochs_seen] == [0]  # stopped before the diverged epoch was validated or reported
    assert not any(p in message for p in toy_set().patients)


def test_on_epoch_receives_every_record_as_the_epoch_ends():
    class CountingAccuracy(PixelAccuracy):
        calls = 0

        def evaluate(self, predictions):
            CountingAccuracy.calls += 1
            return super().evaluate(predictions)

    t = trainer(epochs=3)
    t.selector = CountingAccuracy(NoParams(), TASK)
    seen = []

    def on_epoch(record):
        seen.append((record, CountingAccuracy.calls))

    result = t.fit(toy_set(), toy_set(seed=1), None, on_epoch=on_epoch)
    assert seen == [(record, record.epoch + 1) for record in result.history]  # each right after its validation
    assert result.selection_metric == "pixel_accuracy"


def test_the_engine_imports_no_recipe_machinery():
    """The engine sits below the recipe loader (YAML, sweeps, registry): importing it must not pull that in."""
    import subprocess
    import sys

    recipe_machinery = "{'harmonia.recipe', 'harmonia.registry', 'yaml'}"
    code = f"import sys, harmonia.engine; print(sorted({recipe_machinery} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
