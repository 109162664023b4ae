"""dice: per-patient Dice of segmentation label maps, per foreground class and averaged.

Each patient's items (slices) are pooled into one volume before Dice is computed, so a patient
counts once whatever its number of slices, and a slice without a structure is not scored alone.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import Evaluator, Metric, Params, Predictions


class DiceParams(Params):
    empty: Literal["one", "skip"] = Field(
        "one",
        description="a class absent from both prediction and target of a patient: score 1.0, or leave it out of the means",
    )


class Dice(Evaluator):
    """Per-patient Dice per foreground class and its mean over classes and patients (primary: dice).

    For each patient and foreground class, Dice = 2|P∩T| / (|P| + |T|) over all of the patient's
    items. A class predicted but absent from the target scores 0 (a false positive is an error);
    a class absent from both follows ``empty``. ``dice_<class>`` is the mean over patients;
    ``dice`` is the mean over patients of each patient's mean over classes. With ``empty: skip``
    values left out do not count, a patient with none left is left out, and a metric with no value
    at all is NaN. ``n`` is the number of patients a metric averages.
    """

    name = "dice"
    Params = DiceParams
    tasks = ("segmentation",)

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        scores = self.per_patient(predictions)  # [patients, foreground classes], NaN = skipped
        patients = np.unique(np.asarray(predictions.patients))
        per_patient = np.asarray([_mean(row) for row in scores])
        metrics = [_metric("dice", per_patient, patients)]
        for c, class_name in enumerate(self.task.class_names[1:]):
            metrics.append(_metric(f"dice_{class_name}", scores[:, c], patients))
        return metrics

    def per_patient(self, predictions: Predictions) -> np.ndarray:
        """Dice ``[patients, foreground classes]``, patients in sorted order; NaN where ``empty: skip`` left one out."""
        predictions.check_label_maps("dice")
        predicted, targets, patients = predictions.predicted, predictions.targets, np.asarray(predictions.patients)
        k = self.task.num_classes
        for label, what in ((predicted, "predicted"), (targets, "targets")):
            if label.min() < 0 or label.max() >= k:
                raise ValueError(
                    f"dice: {what} labels must lie in 0..{k - 1} ({k} classes), "
                    f"found {label.min().item()}..{label.max().item()}"
                )
        rows = []
        for patient in np.unique(patients):
            items = torch.from_numpy(np.flatnonzero(patients == patient))
            pair = (predicted[items].long() * k + targets[items].long()).flatten()
            confusion = torch.bincount(pair, minlength=k * k).reshape(k, k).double()  # [predicted, target]
            overlap, size = confusion.diagonal(), confusion.sum(1) + confusion.sum(0)
            both_empty = size == 0
            dice = 2 * overlap / size.clamp(min=1)
            dice[both_empty] = 1.0 if self.params.empty == "one" else math.nan
            rows.append(dice[1:].numpy())
        return np.stack(rows)


def _mean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def _metric(name: str, values: np.ndarray, patients: np.ndarray) -> Metric:
    """The mean over patients, each patient's own value kept for paired analyses (those left out are not)."""
    kept = {str(p): float(v) for p, v in zip(patients, values) if not np.isnan(v)}
    return Metric(name, _mean(values), len(kept), per_patient=kept)


@hookimpl
def harmonia_evaluators():
    return [Dice]
