"""Classification scoring units shared by the classification evaluators: per image or per patient, and why a
class-balanced metric is undefined on a test set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field

from harmonia.api import Predictions, Task

#: what a classification metric scores: every image, or every patient once
ScoringLevel = Literal["image", "patient"]


def scoring_level_field():
    """The ``level`` parameter of a classification evaluator (one definition for all of them)."""
    return Field(
        "image",
        description="score every image, or every patient once: the mean of its images' probabilities, labelled "
        "positive (two classes) if any of its images is",
    )


@dataclass
class ScoredUnits:
    """What is scored: one label and one probability row per unit (an image, or a patient), and each
    patient's units as positions in those arrays, patients in sorted order."""

    labels: np.ndarray
    probabilities: np.ndarray
    groups: list[np.ndarray]


def scored_units(predictions: Predictions, task: Task, level: str, who: str) -> ScoredUnits:
    """The units of ``predictions`` at ``level``; a ValueError saying what is wrong with malformed input.

    At patient level a patient's probabilities are the mean of its images'; its label is the largest of
    its images' labels with two classes (positive if any image is), and with more classes its images
    must share one label.
    """
    k = task.num_classes
    if predictions.probabilities is None:
        raise ValueError(f"{who}: needs class probabilities, and these predictions have none")
    probabilities = predictions.probabilities.detach().cpu().double().numpy()
    labels = predictions.targets.detach().cpu().long().numpy()
    patients = np.asarray(predictions.patients)
    if k < 2:
        raise ValueError(f"{who}: needs at least two classes, the task has {k}")
    if probabilities.shape != (len(labels), k) or labels.ndim != 1:
        raise ValueError(
            f"{who}: needs targets [N] and probabilities [N, {k}], got targets {tuple(labels.shape)} and "
            f"probabilities {tuple(probabilities.shape)}"
        )
    if len(patients) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"{who}: {len(labels)} items but {len(patients)} patient ids (need one per item, at least one)"
        )
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"{who}: labels must lie in 0..{k - 1} ({k} classes), found {labels.min()}..{labels.max()}")
    names, inverse, counts = np.unique(patients, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if level == "image":
        order = np.argsort(inverse, kind="stable")
        return ScoredUnits(labels, probabilities, np.split(order, np.cumsum(counts)[:-1]))
    mean = np.zeros((len(names), k))
    np.add.at(mean, inverse, probabilities)
    mean /= counts[:, None]
    patient_labels = np.full(len(names), -1, dtype=np.int64)
    np.maximum.at(patient_labels, inverse, labels)
    if k > 2:
        lowest = np.full(len(names), k, dtype=np.int64)
        np.minimum.at(lowest, inverse, labels)
        mixed = int((lowest != patient_labels).sum())
        if mixed:
            raise ValueError(
                f"{who}: level patient with {k} classes needs one label per patient, and {mixed} patient(s) "
                f"have images of several classes; use level image"
            )
    return ScoredUnits(patient_labels, mean, [np.array([p]) for p in range(len(names))])


def undefined_because(task: Task, labels: np.ndarray) -> str:
    """Why a class-balanced metric is undefined on ``labels`` (a class is absent), or "" when it is defined."""
    present = np.isin(np.arange(task.num_classes), labels)
    if present.all():
        return ""
    if present.sum() == 1:
        return f"only one class ({task.class_names[int(np.flatnonzero(present)[0])]}) in the test set"
    absent = ", ".join(task.class_names[c] for c in np.flatnonzero(~present))
    return f"class(es) {absent} absent from the test set"
