"""volume_agreement: each patient's segmented volume against its reference volume, as seed 003's Tables 3–4.

Lee et al. (seed 003) measured the liver volume segmented on each reconstruction against the
reference volume, by absolute and relative difference (Table 3), Lin's concordance correlation
coefficient (Table 4) and Bland–Altman analysis (Figures 4–5). Here the reference volume comes from
the test set's ground-truth label map, summed over the patient's slices. On ``ct_recon`` every
reconstruction shares the mask drawn on the 80 keV images, so the reference is the same in every
domain; note that seed 003's reference was instead the segmentation tool's own output on the 80 keV
reconstruction, not a drawn mask.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from harmonia import hookimpl
from harmonia.agreement import bland_altman, concordance
from harmonia.api import Evaluator, Metric, Params, Predictions, Task


class VolumeAgreementParams(Params):
    voxel_volume_ml: float | None = Field(
        None,
        gt=0,
        description="volume of one voxel in mL (product of the item spacings in mm / 1000); none: volumes in voxels",
    )
    label: int | None = Field(
        None, ge=1, description="the foreground class whose volume is measured; none: every class above 0 together"
    )
    bland_altman: Literal["relative", "absolute"] = Field(
        "relative",
        description="differences the Bland–Altman metrics summarise: 100 (predicted − reference) / reference in % "
        "(seed 003's Figures 4–5), or predicted − reference in volume units",
    )


class VolumeAgreement(Evaluator):
    """Per-patient volume vs reference volume: mean absolute difference (primary), % difference, CCC, Bland–Altman.

    A patient's volume is its foreground voxels (class ``label``, or every class above 0) over all of
    its items, times ``voxel_volume_ml`` (volumes in voxels when it is not set; every metric's note
    names the unit). Metrics, in order: ``volume_abs_difference`` (mean over patients of
    |predicted − reference|, primary, lower is better), ``volume_abs_difference_pct`` (mean of
    100 |predicted − reference| / reference; patients with an empty reference left out),
    ``volume_ccc`` with ``volume_ccc_ci_low`` / ``volume_ccc_ci_high`` (Lin's CCC, 95% interval on
    Fisher's z scale, :func:`harmonia.agreement.concordance`), ``volume_ba_bias`` with
    ``volume_ba_loa_low`` / ``volume_ba_loa_high`` (mean difference and mean ± 1.96 sd, in % or in
    volume units per ``bland_altman``), and ``volume_predicted`` / ``volume_reference`` (means over
    patients). The two differences and the two volumes carry each patient's value in ``per_patient``,
    for paired tests and the Bland–Altman plot. ``n`` is the number of patients a metric uses.
    """

    name = "volume_agreement"
    Params = VolumeAgreementParams
    tasks = ("segmentation",)
    higher_is_better = False

    def __init__(self, params: VolumeAgreementParams, task: Task):
        super().__init__(params, task)
        if params.label is not None and params.label >= task.num_classes:
            raise ValueError(f"volume_agreement: label {params.label} is not a class of {task.class_names}")

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        patients, predicted, reference = self.volumes(predictions)
        unit = "mL" if self.params.voxel_volume_ml else "voxels (voxel_volume_ml not set)"
        absolute = np.abs(predicted - reference)
        with np.errstate(divide="ignore", invalid="ignore"):
            percent = np.where(reference > 0, 100 * absolute / reference, math.nan)
        empty = int((reference == 0).sum())
        pct_note = f"{empty} patient(s) with an empty reference left out" if empty else ""
        ccc = concordance(predicted, reference)
        ba = bland_altman(predicted, reference, percent_of_b=self.params.bland_altman == "relative")
        ba_unit = "% of the reference volume" if self.params.bland_altman == "relative" else unit
        volumes = f"volumes in {unit}"
        return [
            _metric("volume_abs_difference", patients, absolute, volumes),
            _metric("volume_abs_difference_pct", patients, percent, _join(pct_note, "% of the reference volume")),
            Metric("volume_ccc", ccc.ccc, ccc.n, ccc.note, higher_is_better=True),
            Metric("volume_ccc_ci_low", ccc.low, ccc.n, ccc.note, higher_is_better=True),
            Metric("volume_ccc_ci_high", ccc.high, ccc.n, ccc.note, higher_is_better=True),
            Metric("volume_ba_bias", ba.mean_difference, ba.n, _join(ba.note, ba_unit)),
            Metric("volume_ba_loa_low", ba.loa_low, ba.n, _join(ba.note, ba_unit)),
            Metric("volume_ba_loa_high", ba.loa_high, ba.n, _join(ba.note, ba_unit)),
            _metric("volume_predicted", patients, predicted, volumes),
            _metric("volume_reference", patients, reference, volumes),
        ]

    def volumes(self, predictions: Predictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patients (sorted) and each one's predicted and reference volume over all of its items."""
        predictions.check_label_maps("volume_agreement")
        predicted, targets, patients = predictions.predicted, predictions.targets, np.asarray(predictions.patients)
        names, inverse = np.unique(patients, return_inverse=True)
        scale = self.params.voxel_volume_ml or 1.0
        per_patient = [
            np.bincount(inverse.reshape(-1), weights=self.foreground_voxels(labels), minlength=len(names)) * scale
            for labels in (predicted, targets)
        ]
        return names, per_patient[0], per_patient[1]

    def foreground_voxels(self, labels: torch.Tensor) -> np.ndarray:
        """Foreground voxels of each item: class ``label``, or every class above 0."""
        label = self.params.label
        foreground = labels > 0 if label is None else labels == label
        return foreground.flatten(1).sum(1).double().numpy()


def _metric(name: str, patients: np.ndarray, values: np.ndarray, note: str) -> Metric:
    """The mean over patients of ``values`` (NaN ones left out), each patient's value kept in ``per_patient``."""
    kept = ~np.isnan(values)
    mean = float(values[kept].mean()) if kept.any() else math.nan
    return Metric(name, mean, int(kept.sum()), note, {p: float(v) for p, v in zip(patients[kept], values[kept])})


def _join(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


@hookimpl
def harmonia_evaluators():
    return [VolumeAgreement]
