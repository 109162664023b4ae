"""dice: hand-computed per-patient values, empty-mask policies, false positives, agreement with MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice

from harmonia.api import Predictions, Task
from harmonia.registry import Registry
from harmonia_plugins.evaluators.dice import Dice, DiceParams

ONE_CLASS = Task("segmentation", ("background", "A"))
TWO_CLASSES = Task("segmentation", ("background", "A", "B"))


def predictions(task: Task, predicted, targets, patients) -> Predictions:
    """Predictions of 1 x W label maps given as nested lists."""
    as_maps = lambda rows: torch.tensor(rows, dtype=torch.long)[:, None, :]  # noqa: E731
    return Predictions(task, as_maps(targets), as_maps(predicted), np.array(patients, dtype=object))


def evaluate(task: Task, preds: Predictions, empty: str = "one") -> dict[str, tuple[float, int]]:
    return {m.name: (m.value, m.n) for m in Dice(DiceParams(empty=empty), task).evaluate(preds)}


def test_patients_count_once_whatever_their_size():
    """p1 has two slices (8 target pixels), p2 one slice (1 pixel): the mean is over patients, not pixels or slices."""
    preds = predictions(
        ONE_CLASS,
        predicted=[[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0]],
        targets=[[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]],
        patients=["p1", "p1", "p2"],
    )
    metrics = Dice(DiceParams(), ONE_CLASS).evaluate(preds)
    assert [m.name for m in metrics] == ["dice", "dice_A"]
    p1, p2 = 2 * 6 / (6 + 8), 0.0
    for m in metrics:
        assert m.value == pytest.approx((p1 + p2) / 2) and m.n == 2
    pooled_pixels = 2 * 6 / (7 + 9)
    per_slice = (1.0 + 2 * 2 / (2 + 4) + 0.0) / 3
    assert not math.isclose(metrics[0].value, pooled_pixels) and not math.isclose(metrics[0].value, per_slice)


# p1: A 2/3, B absent from both; p2: A 2/3, B predicted but absent from the target (a false positive)
POLICY_CASE = dict(
    predicted=[[1, 0, 0, 0], [1, 1, 2, 2]],
    targets=[[1, 1, 0, 0], [1, 1, 1, 1]],
    patients=["p1", "p2"],
)


def test_empty_one_scores_absent_classes_as_perfect():
    got = evaluate(TWO_CLASSES, predictions(TWO_CLASSES, **POLICY_CASE), "one")
    assert got["dice_A"] == (pytest.approx(2 / 3), 2)
    assert got["dice_B"] == (pytest.approx(0.5), 2)  # p1: 1.0 (empty), p2: 0.0 (false positive)
    assert got["dice"] == (pytest.approx(((2 / 3 + 1) / 2 + (2 / 3 + 0) / 2) / 2), 2)
    assert list(got) == ["dice", "dice_A", "dice_B"]


def test_empty_skip_leaves_absent_classes_out_but_keeps_false_positives():
    got = evaluate(TWO_CLASSES, predictions(TWO_CLASSES, **POLICY_CASE), "skip")
    assert got["dice_A"] == (pytest.approx(2 / 3), 2)
    assert got["dice_B"] == (0.0, 1)  # only p2 counts, and its false positive scores 0
    assert got["dice"] == (pytest.approx((2 / 3 + (2 / 3 + 0) / 2) / 2), 2)


def test_class_absent_everywhere():
    preds = predictions(TWO_CLASSES, predicted=[[1, 0], [0, 0]], targets=[[1, 0], [0, 0]], patients=["p1", "p2"])
    skip = evaluate(TWO_CLASSES, preds, "skip")
    assert math.isnan(skip["dice_B"][0]) and skip["dice_B"][1] == 0
    assert skip["dice_A"] == (1.0, 1) and skip["dice"] == (1.0, 1)  # p2 has no value left
    assert evaluate(TWO_CLASSES, preds, "one") == {"dice": (1.0, 2), "dice_A": (1.0, 2), "dice_B": (1.0, 2)}


@pytest.mark.parametrize("empty", ["one", "skip"])
def test_false_positive_on_empty_target_scores_zero(empty):
    preds = predictions(ONE_CLASS, predicted=[[0, 1, 0]], targets=[[0, 0, 0]], patients=["p1"])
    assert evaluate(ONE_CLASS, preds, empty) == {"dice": (0.0, 1), "dice_A": (0.0, 1)}


def test_perfect_prediction_scores_one():
    labels = torch.randint(0, 3, (6, 8, 8), generator=torch.Generator().manual_seed(0))
    preds = Predictions(TWO_CLASSES, labels, labels.clone(), np.array(["a", "a", "b", "c", "c", "c"], dtype=object))
    assert all(m.value == 1.0 and m.n == 3 for m in Dice(DiceParams(), TWO_CLASSES).evaluate(preds))


def test_agrees_with_monai_on_each_patient_volume():
    """With ``empty: one`` each patient's Dice is MONAI's compute_dice on the patient's stacked slices."""
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 3, (7, 6, 6), generator=g)
    predicted = torch.where(
        torch.rand(7, 6, 6, generator=g) < 0.3, torch.randint(0, 3, (7, 6, 6), generator=g), targets
    )
    patients = np.array(["x", "y", "x", "z", "y", "x", "z"], dtype=object)
    ours = Dice(DiceParams(), TWO_CLASSES).per_patient(Predictions(TWO_CLASSES, targets, predicted, patients))
    for row, patient in zip(ours, sorted(set(patients))):
        items = torch.from_numpy(np.flatnonzero(patients == patient))
        volume = lambda t, items=items: t[items][None, None]  # noqa: E731  [1, 1, slices, H, W]
        monai = compute_dice(
            volume(predicted), volume(targets), include_background=False, ignore_empty=False, num_classes=3
        )
        assert np.allclose(row, monai[0].numpy())


def test_bad_input_is_a_clear_error():
    dice = Dice(DiceParams(), ONE_CLASS)
    with pytest.raises(ValueError, match="differ in shape"):
        targets, predicted = torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long)
        dice.evaluate(Predictions(ONE_CLASS, targets, predicted, np.array(["a", "b"])))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        dice.evaluate(predictions(ONE_CLASS, predicted=[[0, 2]], targets=[[0, 1]], patients=["a"]))


def test_registered_through_entry_point():
    entry = Registry.from_entry_points().get("evaluator", "dice")
    assert entry.cls is Dice and entry.cls.tasks == ("segmentation",)
