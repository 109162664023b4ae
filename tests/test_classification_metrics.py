"""auc and accuracy: AUC against a pairwise (Mann-Whitney) oracle with ties, undefined values as NaN with a note,
patient-level scoring, the patient bootstrap, and thresholds chosen on validation (Youden) or fixed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harmonia import runner
from harmonia.api import Predictions, Task
from harmonia.registry import Registry
from harmonia_plugins.evaluators import accuracy as accuracy_module
from harmonia_plugins.evaluators import auc as auc_module
from harmonia_plugins.evaluators.accuracy import Accuracy, AccuracyParams
from harmonia_plugins.evaluators.auc import Auc, AucParams

BINARY = Task("classification", ("no tumour", "tumour"))
THREE = Task("classification", ("a", "b", "c"))


def binary(scores, labels, patients=None) -> Predictions:
    """Predictions of a two-class task whose class-1 probabilities are ``scores``; one patient per item by default."""
    p1 = torch.tensor(scores, dtype=torch.float32)
    probabilities = torch.stack([1 - p1, p1], 1)
    patients = np.array(patients if patients is not None else [f"p{i}" for i in range(len(scores))], dtype=object)
    return Predictions(BINARY, torch.tensor(labels), probabilities.argmax(1), patients, probabilities)


def multiclass(probabilities: torch.Tensor, labels) -> Predictions:
    patients = np.array([f"p{i}" for i in range(len(labels))], dtype=object)
    return Predictions(THREE, torch.as_tensor(labels), probabilities.argmax(1), patients, probabilities)


def metrics_of(evaluator, predictions: Predictions) -> dict:
    return {m.name: m for m in evaluator.evaluate(predictions)}


def pairwise_auc(positive_scores, negative_scores) -> float:
    """The Mann-Whitney oracle: the share of (positive, negative) pairs ranked right, a tie counting one half."""
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in positive_scores for q in negative_scores)
    return wins / (len(positive_scores) * len(negative_scores))


# -- auc -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_the_pairwise_oracle_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    scores = np.round(np.clip(0.5 + 0.25 * (labels - 0.5) + 0.25 * rng.standard_normal(40), 0, 1), 1)
    preds = binary(scores.tolist(), labels.tolist())
    s = preds.probabilities[:, 1].numpy()  # the float32 scores the evaluator sees
    assert len(np.unique(s)) < len(s)  # ties, or the test means little
    [metric] = Auc(AucParams(), BINARY).evaluate(preds)
    assert metric.name == "auc" and metric.n == 40 and metric.note == ""
    assert metric.value == pytest.approx(pairwise_auc(s[labels == 1], s[labels == 0]))


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_auc_is_the_macro_mean_of_one_vs_rest_oracles(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(30) % 3
    logits = torch.randint(0, 3, (30, 3), generator=g).float() + torch.nn.functional.one_hot(labels, 3)
    probabilities = torch.softmax(logits, 1)  # few distinct logit rows: many tied probabilities
    [metric] = Auc(AucParams(), THREE).evaluate(multiclass(probabilities, labels))
    p, y = probabilities.numpy(), labels.numpy()
    oracle = np.mean([pairwise_auc(p[y == c, c], p[y != c, c]) for c in range(3)])
    assert metric.value == pytest.approx(oracle) and metric.n == 30


def test_one_class_in_the_test_set_is_nan_with_a_note():
    metrics = metrics_of(Auc(AucParams(bootstrap=50), BINARY), binary([0.2, 0.7, 0.4], [0, 0, 0]))
    assert list(metrics) == ["auc", "auc_ci_low", "auc_ci_high"]
    assert all(math.isnan(m.value) for m in metrics.values())
    assert metrics["auc"].note == "only one class (no tumour) in the test set: AUC undefined"
    assert metrics["auc_ci_low"].note == metrics["auc"].note and metrics["auc"].n == 3


def test_multiclass_with_an_absent_class_is_nan_naming_it():
    probabilities = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 1)
    [metric] = Auc(AucParams(), THREE).evaluate(multiclass(probabilities, [0, 2, 0, 2]))
    assert math.isnan(metric.value) and metric.note == "class(es) b absent from the test set: AUC undefined"


# p1 has two positive images, p4 a negative and a positive one (so it is a positive patient), p2 and p3 are negative
PATIENT_CASE = dict(
    scores=[0.9, 0.6, 0.1, 0.3, 0.4, 0.5, 0.35],
    labels=[1, 0, 0, 0, 1, 1, 0],
    patients=["p1", "p2", "p4", "p3", "p1", "p4", "p3"],
)


def test_patient_level_averages_each_patients_images():
    preds = binary(**PATIENT_CASE)
    # images: positives 0.9, 0.4, 0.5 against negatives 0.6, 0.1, 0.3, 0.35 -> 4 + 3 + 3 of 12 pairs
    [image] = Auc(AucParams(level="image"), BINARY).evaluate(preds)
    assert (image.value, image.n) == (pytest.approx(10 / 12), 7)
    # patients: p1 0.65 and p4 0.3 (positive) against p2 0.6 and p3 0.325 -> 2 of 4 pairs
    [patient] = Auc(AucParams(level="patient"), BINARY).evaluate(preds)
    assert (patient.value, patient.n) == (pytest.approx(2 / 4), 4)


def test_patient_level_with_several_classes_needs_one_label_per_patient():
    probabilities = torch.full((2, 3), 1 / 3)
    preds = Predictions(THREE, torch.tensor([0, 1]), torch.tensor([0, 0]), np.array(["p", "p"]), probabilities)
    with pytest.raises(ValueError, match="one label per patient"):
        Auc(AucParams(level="patient"), THREE).evaluate(preds)


def separable_cohort(patients: int, seed: int = 0) -> Predictions:
    """``patients`` patients of three images each, half positive, scores overlapping between the classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(patients) % 2, 3)
    scores = 1 / (1 + np.exp(-(labels - 0.5 + rng.standard_normal(labels.size))))
    return binary(scores.tolist(), labels.tolist(), np.repeat([f"p{i}" for i in range(patients)], 3).tolist())


def interval(preds: Predictions, seed: int = 0, level: str = "image", bootstrap: int = 100) -> dict:
    evaluator = Auc(AucParams(bootstrap=bootstrap, bootstrap_seed=seed, level=level), BINARY)
    return {name: (m.value, m.note) for name, m in metrics_of(evaluator, preds).items()}


@pytest.mark.parametrize("level", ["image", "patient"])
def test_bootstrap_interval_holds_the_estimate_and_repeats_with_its_seed(level):
    preds = separable_cohort(30)
    got = interval(preds, level=level)
    assert list(got) == ["auc", "auc_ci_low", "auc_ci_high"]
    assert got["auc_ci_low"][0] < got["auc"][0] < got["auc_ci_high"][0]
    assert interval(preds, level=level) == got
    assert interval(preds, seed=1, level=level) != got


def test_bootstrap_interval_narrows_as_patients_grow():
    width = {}
    for patients in (20, 320):
        got = interval(separable_cohort(patients), bootstrap=200)
        width[patients] = got["auc_ci_high"][0] - got["auc_ci_low"][0]
    assert width[320] < width[20] / 2  # about 1/sqrt(16) as wide


def test_bootstrap_resamples_patients_not_images():
    """Patient "big" holds 30 of the 35 positive images, all scored 0.9; the other positives (0.2) lie below every
    negative (0.5). About a third of patient resamples leave "big" out and score AUC 0, so the lower bound is 0;
    resampling 45 images would leave out all 30 of big's images practically never (the bound would be near 0.75)."""
    scores = [0.9] * 30 + [0.2] * 5 + [0.5] * 10
    labels = [1] * 35 + [0] * 10
    patients = ["big"] * 30 + [f"pos{i}" for i in range(5)] + [f"neg{i}" for i in range(10)]
    got = interval(binary(scores, labels, patients), bootstrap=200)
    assert got["auc"][0] == pytest.approx(30 / 35)
    assert got["auc_ci_low"][0] == 0.0


def test_bootstrap_with_too_many_one_class_resamples_is_nan_with_the_count():
    got = interval(binary([0.8, 0.3, 0.9], [1, 0, 1], ["a", "b", "a"]), bootstrap=200)
    assert got["auc"] == (1.0, "")  # the estimate itself is defined
    value, note = got["auc_ci_low"]
    assert math.isnan(value) and "of 200 bootstrap resamples of 2 patients lacked a class" in note


# -- accuracy --------------------------------------------------------------------------------------------------------

# at 0.5: TP 0.9, 0.6; FN 0.4; FP 0.7, 0.5 (a score equal to the threshold is positive); TN 0.2, 0.1
TABLE = dict(scores=[0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5], labels=[1, 1, 1, 0, 0, 0, 0])
# the best validation threshold is 0.8: every positive at or above it, every negative below
VALIDATION_AT_08 = dict(scores=[0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95], labels=[0, 0, 0, 0, 1, 1, 1])


def values(metrics: dict) -> dict:
    return {name: (m.value, m.n) for name, m in metrics.items()}


def test_fixed_threshold_table_by_hand():
    got = metrics_of(Accuracy(AccuracyParams(threshold="fixed"), BINARY), binary(**TABLE))
    assert list(got) == ["accuracy", "sensitivity", "specificity", "balanced_accuracy"]
    assert values(got) == {
        "accuracy": (pytest.approx(4 / 7), 7),
        "sensitivity": (pytest.approx(2 / 3), 3),
        "specificity": (pytest.approx(2 / 4), 4),
        "balanced_accuracy": (pytest.approx((2 / 3 + 2 / 4) / 2), 7),
    }
    assert all(m.note == "" for m in got.values())


def test_youden_threshold_from_validation_changes_the_test_metrics():
    evaluator = Accuracy(AccuracyParams(threshold="youden"), BINARY)
    evaluator.calibrate(binary(**VALIDATION_AT_08))
    assert evaluator.threshold == pytest.approx(0.8)
    # at 0.8: TP 0.9; FN 0.6, 0.4; every negative (0.7, 0.2, 0.1, 0.5) below
    assert values(metrics_of(evaluator, binary(**TABLE))) == {
        "accuracy": (pytest.approx(5 / 7), 7),
        "sensitivity": (pytest.approx(1 / 3), 3),
        "specificity": (1.0, 4),
        "balanced_accuracy": (pytest.approx(2 / 3), 7),
    }


def test_youden_ties_take_the_highest_threshold():
    evaluator = Accuracy(AccuracyParams(), BINARY)
    # J = 0.5 at 0.8 (one positive, no negative) and at 0.4 (both positives, one negative)
    evaluator.calibrate(binary([0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1]))
    assert evaluator.threshold == pytest.approx(0.8)


def test_youden_on_patient_level_validation():
    validation = binary([0.3, 0.6, 0.6, 0.2], [1, 1, 0, 0], ["a", "a", "b", "c"])
    image = Accuracy(AccuracyParams(level="image"), BINARY)
    image.calibrate(validation)
    # images: positives 0.3, 0.6, negatives 0.6, 0.2: J is 0 at 0.6, 0.5 at 0.3
    assert image.threshold == pytest.approx(0.3)
    patient = Accuracy(AccuracyParams(level="patient"), BINARY)
    patient.calibrate(validation)
    # patients: a 0.45 (positive), b 0.6 and c 0.2 (negative): J is -0.5 at 0.6, 0.5 at 0.45
    assert patient.threshold == pytest.approx(0.45)


def test_youden_before_calibrate_is_a_programming_error():
    with pytest.raises(RuntimeError, match=r"before calibrate\(validation\)"):
        Accuracy(AccuracyParams(threshold="youden"), BINARY).evaluate(binary(**TABLE))
    Accuracy(AccuracyParams(threshold="fixed"), BINARY).evaluate(binary(**TABLE))  # needs no calibration


def test_one_class_validation_falls_back_to_the_fixed_threshold_with_a_note():
    evaluator = Accuracy(AccuracyParams(threshold="youden"), BINARY)
    evaluator.calibrate(binary([0.9, 0.95], [1, 1]))
    assert evaluator.threshold == 0.5
    got = metrics_of(evaluator, binary(**TABLE))
    assert got["accuracy"].value == pytest.approx(4 / 7)  # the fixed 0.5 table
    expected = "only one class (tumour) in the validation split: Youden threshold undefined, fixed_threshold 0.5 used"
    assert all(m.note == expected for m in got.values())


def test_one_class_test_set_leaves_sensitivity_undefined_not_accuracy():
    got = metrics_of(Accuracy(AccuracyParams(threshold="fixed"), BINARY), binary([0.7, 0.2, 0.1], [0, 0, 0]))
    assert (got["accuracy"].value, got["accuracy"].note) == (pytest.approx(2 / 3), "")
    assert (got["specificity"].value, got["specificity"].n) == (pytest.approx(2 / 3), 3)
    assert math.isnan(got["sensitivity"].value) and got["sensitivity"].n == 0
    assert got["sensitivity"].note == "only one class (no tumour) in the test set: sensitivity undefined"
    assert math.isnan(got["balanced_accuracy"].value)
    assert got["balanced_accuracy"].note == "only one class (no tumour) in the test set: balanced accuracy undefined"


def test_patient_level_accuracy_classifies_each_patient_once():
    evaluator = Accuracy(AccuracyParams(threshold="fixed", level="patient"), BINARY)
    # p1 0.65 (positive: right), p2 0.6 (negative: wrong), p3 0.325 (negative: right), p4 0.3 (positive: wrong)
    assert values(metrics_of(evaluator, binary(**PATIENT_CASE))) == {
        "accuracy": (0.5, 4),
        "sensitivity": (0.5, 2),
        "specificity": (0.5, 2),
        "balanced_accuracy": (0.5, 4),
    }


def test_multiclass_gives_accuracy_and_balanced_accuracy_from_the_most_probable_class():
    probabilities = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    evaluator = Accuracy(AccuracyParams(), THREE)  # youden needs no calibration: there is no threshold
    got = values(metrics_of(evaluator, multiclass(probabilities, [0, 1, 1, 2, 2])))
    # recalls: a 1/1, b 1/2, c 2/2
    assert got == {"accuracy": (pytest.approx(4 / 5), 5), "balanced_accuracy": (pytest.approx(2.5 / 3), 5)}
    absent = metrics_of(evaluator, multiclass(probabilities[:2], [0, 1]))
    assert absent["balanced_accuracy"].note == "class(es) c absent from the test set: balanced accuracy undefined"


@pytest.mark.parametrize("evaluator", [Auc(AucParams(), BINARY), Accuracy(AccuracyParams(threshold="fixed"), BINARY)])
def test_predictions_without_probabilities_are_a_clear_error(evaluator):
    preds = binary(**TABLE)
    preds.probabilities = None
    with pytest.raises(ValueError, match="needs class probabilities"):
        evaluator.evaluate(preds)


# -- through the registry and the protocol ---------------------------------------------------------------------------


def test_both_register_as_classification_evaluators():
    registry = Registry()
    registry.register(auc_module)
    registry.register(accuracy_module)
    assert not registry.failures
    for name, cls in (("auc", Auc), ("accuracy", Accuracy)):
        entry = registry.get("evaluator", name)
        assert entry.cls is cls and cls.tasks == ("classification",) and cls.needs_probabilities


def test_a_tiny_run_records_every_metric_and_why_any_is_undefined(registry, tmp_path):
    registry.register(auc_module)
    registry.register(accuracy_module)
    recipe = {
        "name": "tiny_classification_metrics",
        "cohort": {"plugin": "xray_chest", "params": {"image_size": 32}, "synthetic": {"patients": 4, "seed": 2}},
        "model": {"plugin": "toy_classifier"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seeds": 1, "device": "cpu"},
        "evaluate": [{"plugin": "auc", "params": {"bootstrap": 20}}, "accuracy"],
    }
    run = runner.run(recipe, out=tmp_path / "run", registry=registry)
    results = run.results
    per_test_set = results.groupby(["train_domain", "test_domain"], sort=False)["metric"].apply(list)
    expected = ["auc", "auc_ci_low", "auc_ci_high", "accuracy", "sensitivity", "specificity", "balanced_accuracy"]
    assert all(metrics == expected for metrics in per_test_set)
    assert results["value"].dropna().between(0, 1).all()
    undefined = [u for cell in run.manifest["cells"] for u in cell.get("undefined", [])]
    # a 4-patient twin leaves test sets of one or two patients, so some metric is undefined and must say why
    assert undefined and len(undefined) == results["value"].isna().sum()
    assert all(u["reason"] != "undefined" for u in undefined)  # every NaN says why


def test_accuracy_at_the_youden_threshold_can_select_epochs(registry, tmp_path):
    """First in the recipe, accuracy selects the epoch on validation: each epoch is scored at the threshold
    calibrated on that epoch's validation predictions, so it needs no threshold from elsewhere."""
    recipe = {
        "name": "accuracy_selects",
        "cohort": {"plugin": "xray_chest", "params": {"image_size": 32}, "synthetic": {"patients": 6, "seed": 2}},
        "model": {"plugin": "toy_classifier"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seeds": 1, "device": "cpu", "selection": "best_val"},
        "evaluate": ["accuracy"],
    }
    run = runner.run(recipe, out=tmp_path / "run", registry=registry)
    assert run.manifest["metrics"]["primary"] == "accuracy"
    history = pd.read_csv(run.path / "history.csv")
    assert len(history) == 4 and history["val_score"].between(0, 1).all()
