"""accuracy: accuracy, sensitivity, specificity and balanced accuracy at a decision threshold chosen on the
training domain's validation split.

Under scanner shift a model's scores often move while their ranking survives; a threshold fixed on the
training domain then turns that move into lost sensitivity or specificity on the other domains, which
is what a deployed classifier suffers and what AUC does not show. The threshold is learnt once per cell
from the training domain's validation predictions (:meth:`~harmonia.api.Evaluator.calibrate`), never
from a test set.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field
from sklearn.metrics import roc_curve

from harmonia import hookimpl
from harmonia.api import Evaluator, Metric, Params, Predictions, Task
from harmonia.classification import ScoringLevel, scored_units, scoring_level_field, undefined_because

#: two values of Youden's J closer than this are a tie (J is a difference of ratios of counts, computed in floats)
J_TOLERANCE = 1e-12


class AccuracyParams(Params):
    threshold: Literal["youden", "fixed"] = Field(
        "youden",
        description="decision threshold on the class-1 probability (two classes): the one maximising Youden's J "
        "(sensitivity + specificity - 1) on the training domain's validation split, or fixed_threshold",
    )
    fixed_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="the threshold of threshold: fixed, and of youden when the validation split has one class only",
    )
    level: ScoringLevel = scoring_level_field()


class Accuracy(Evaluator):
    """Accuracy, sensitivity, specificity and balanced accuracy at a validation-chosen threshold (primary: accuracy).

    Two classes: a unit is positive (class 1) when its class-1 probability is at least the threshold.
    With ``threshold: youden`` the threshold is the validation score that maximises sensitivity +
    specificity - 1 (scikit-learn's ``roc_curve`` on the training domain's validation split, at the
    same ``level``); of tied thresholds the highest, i.e. the most specific, is taken. A validation split
    with one class only has no such threshold: ``fixed_threshold`` is used and every metric's note says so.
    The threshold in use is :attr:`threshold`.

    Metrics, in order: ``accuracy`` (n = units), ``sensitivity`` (n = positive units), ``specificity``
    (n = negative units), ``balanced_accuracy`` (their mean; n = units). With one class in the test set,
    sensitivity or specificity and so balanced accuracy are NaN with a note; accuracy is still defined.

    More than two classes: the predicted class is the most probable one (the threshold is not used), and
    only ``accuracy`` and ``balanced_accuracy`` (the mean recall over classes) are given; balanced
    accuracy is NaN with a note when a class is absent from the test set.
    """

    name = "accuracy"
    Params = AccuracyParams
    tasks = ("classification",)
    higher_is_better = True
    needs_probabilities = True

    def __init__(self, params: AccuracyParams, task: Task):
        super().__init__(params, task)
        #: the decision threshold on the class-1 probability; None until calibrated under threshold: youden
        self.threshold: float | None = params.fixed_threshold if params.threshold == "fixed" else None
        #: why the threshold is not what the parameters ask for (youden fell back), attached to every metric
        self.calibration_note = ""

    def calibrate(self, validation: Predictions) -> None:
        """Choose the Youden threshold on the training domain's validation predictions (``threshold: youden``)."""
        if self.params.threshold != "youden" or self.task.num_classes != 2:
            return
        units = scored_units(validation, self.task, self.params.level, self.name)
        if len(np.unique(units.labels)) < 2:
            present = self.task.class_names[int(units.labels[0])]
            self.threshold = self.params.fixed_threshold
            self.calibration_note = (
                f"only one class ({present}) in the validation split: Youden threshold undefined, "
                f"fixed_threshold {self.threshold:g} used"
            )
            return
        fpr, tpr, thresholds = roc_curve(units.labels, units.probabilities[:, 1], drop_intermediate=False)
        j = (tpr - fpr)[1:]  # thresholds[0] is +inf: no unit positive, never a useful threshold
        best = int(np.flatnonzero(j >= j.max() - J_TOLERANCE)[0])  # thresholds decrease: the first is the highest
        self.threshold = float(thresholds[1:][best])
        self.calibration_note = ""

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        binary = self.task.num_classes == 2
        if binary and self.threshold is None:
            raise RuntimeError(
                "accuracy with threshold: youden was asked to evaluate before calibrate(validation) chose its "
                "threshold (as the first evaluator it cannot select epochs unless the threshold is fixed)"
            )
        units = scored_units(predictions, self.task, self.params.level, self.name)
        labels, n = units.labels, len(units.labels)
        if binary:
            predicted = (units.probabilities[:, 1] >= self.threshold).astype(np.int64)
        else:
            predicted = units.probabilities.argmax(1)  # a tie goes to the lower class index
        correct = predicted == labels
        counts = [int((labels == c).sum()) for c in range(self.task.num_classes)]
        recalls = [float(correct[labels == c].mean()) if count else math.nan for c, count in enumerate(counts)]
        why = undefined_because(self.task, labels)

        def metric(name: str, value: float, count: int, defined: bool = True) -> Metric:
            notes = [self.calibration_note, "" if defined else f"{why}: {name.replace('_', ' ')} undefined"]
            return Metric(name, value if defined else math.nan, count, "; ".join(filter(None, notes)))

        metrics = [metric("accuracy", float(correct.mean()), n)]
        if binary:
            metrics.append(metric("sensitivity", recalls[1], counts[1], defined=counts[1] > 0))
            metrics.append(metric("specificity", recalls[0], counts[0], defined=counts[0] > 0))
        metrics.append(metric("balanced_accuracy", float(np.mean(recalls)), n, defined=not why))
        return metrics


@hookimpl
def harmonia_evaluators():
    return [Accuracy]
