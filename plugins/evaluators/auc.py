"""auc: area under the ROC curve of each test set, as Guo et al. report it, with an optional patient bootstrap.

AUC scores how well the model ranks positives above negatives whatever the decision threshold, so it
separates a scanner shift that destroys the model's ranking from one that only moves its scores
monotonically (which changes accuracy at a fixed threshold but leaves AUC alone). scikit-learn computes
it (:func:`sklearn.metrics.roc_auc_score`, ties counting one half). Images of one patient are not
independent, so the confidence interval resamples patients, never single images.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field
from sklearn.metrics import roc_auc_score

from harmonia import hookimpl
from harmonia.api import Evaluator, Metric, Params, Predictions
from harmonia.classification import ScoredUnits, ScoringLevel, scored_units, scoring_level_field, undefined_because

#: bootstrap resamples left without every class may be at most this fraction of all, or the interval is NaN
MAX_SKIPPED_FRACTION = 0.1


class AucParams(Params):
    level: ScoringLevel = scoring_level_field()
    bootstrap: int = Field(
        0,
        ge=0,
        le=10_000,
        description="patient bootstrap resamples for a 95% percentile interval (auc_ci_low, auc_ci_high); "
        "0: no interval, 1000 or more for one (each resample is one scikit-learn AUC, a few ms)",
    )
    bootstrap_seed: int = Field(0, ge=0, description="seed of the bootstrap resamples")


class Auc(Evaluator):
    """ROC AUC of each test set (one-vs-rest macro mean for more than two classes); optional bootstrap 95% CI.

    Two classes: the score is the probability of class 1. More classes: the unweighted mean over
    classes of each class's one-vs-rest AUC (scikit-learn's ``multi_class="ovr", average="macro"``).
    AUC is undefined, so NaN with a note saying why, when the test set lacks a class: with one class
    present, and with more than two classes when any class is absent (a mean over the classes
    present would average different classes on different test sets). ``n`` is the number of images,
    or of patients with ``level: patient``.

    With ``bootstrap: B`` the metrics ``auc_ci_low`` and ``auc_ci_high`` follow ``auc``: the 2.5th and
    97.5th percentiles of the AUC over ``B`` resamples of the test set's patients with replacement (a
    patient's images go together). A resample without every class is skipped; if more than 10% are,
    the interval is NaN with a note giving the count.
    """

    name = "auc"
    Params = AucParams
    tasks = ("classification",)
    higher_is_better = True
    needs_probabilities = True

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        units = scored_units(predictions, self.task, self.params.level, self.name)
        n = len(units.labels)
        value, note = self.auc(units.labels, units.probabilities)
        metrics = [Metric("auc", value, n, note)]
        if self.params.bootstrap:
            (low, high), ci_note = self.interval(units) if note == "" else ((math.nan, math.nan), note)
            metrics += [Metric("auc_ci_low", low, n, ci_note), Metric("auc_ci_high", high, n, ci_note)]
        return metrics

    def auc(self, labels: np.ndarray, probabilities: np.ndarray) -> tuple[float, str]:
        """The AUC of ``labels`` [N] scored by ``probabilities`` [N, classes] and a note; NaN and why if undefined."""
        why = undefined_because(self.task, labels)
        if why:
            return math.nan, f"{why}: AUC undefined"
        if self.task.num_classes == 2:
            return float(roc_auc_score(labels, probabilities[:, 1])), ""
        labels_all = np.arange(self.task.num_classes)
        return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=labels_all)), ""

    def interval(self, units: ScoredUnits) -> tuple[tuple[float, float], str]:
        """The bootstrap 95% percentile interval over patients, and a note on the resamples skipped."""
        b = self.params.bootstrap
        rng = np.random.default_rng(self.params.bootstrap_seed)
        patients = len(units.groups)
        values = []
        for _ in range(b):
            index = np.concatenate([units.groups[p] for p in rng.integers(patients, size=patients)])
            value, note = self.auc(units.labels[index], units.probabilities[index])
            if not note:
                values.append(value)
        skipped = b - len(values)
        if skipped > MAX_SKIPPED_FRACTION * b:
            note = (
                f"{skipped} of {b} bootstrap resamples of {patients} patients lacked a class (more than "
                f"{MAX_SKIPPED_FRACTION:.0%}): confidence interval undefined"
            )
            return (math.nan, math.nan), note
        note = f"{skipped} of {b} bootstrap resamples lacked a class and were skipped" if skipped else ""
        low, high = np.percentile(values, [2.5, 97.5])
        return (float(low), float(high)), note


@hookimpl
def harmonia_evaluators():
    return [Auc]
