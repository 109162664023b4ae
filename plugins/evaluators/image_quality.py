"""image_quality: PSNR and SSIM of each domain's test images, as the model sees them, against the reference domain's.

On a paired cohort (``ct_recon``: every patient in every reconstruction, slices on one grid, in one
order) a standardizer's job is to make another reconstruction look like the reference one. This
evaluator measures how near it comes: each test image of domain k, after the cell's mitigations'
transforms (a standardizer's output; the original image when there is none), is compared with the
same patient's untransformed image of the same position in the reference domain.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field, field_validator

from harmonia import hookimpl
from harmonia.agreement import psnr, ssim
from harmonia.api import CellView, Evaluator, ImageSet, Metric, Params

METRICS = ("psnr", "ssim")


class ImageQualityParams(Params):
    reference: str | None = Field(
        None, description="the domain whose test images are the reference; none: the cell's training domain"
    )
    window: tuple[float, float] = Field(
        (-160.0, 240.0),
        description="intensity window (HU for CT; default abdominal, level 40 width 400) both images are clipped to; "
        "its width is the data range of PSNR and SSIM",
    )

    @field_validator("window")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"window must be (low, high) with low < high, got {value}")
        return value


class ImageQuality(Evaluator):
    """PSNR and SSIM of every other domain's test images, as the model sees them, against the reference domain's.

    For each test domain k other than the reference, each patient in both test splits is scored item by
    item: image i of k after ``CellView.transform`` against image i of the reference domain, both clipped
    to ``window`` (data range = its width). PSNR (dB, infinite for identical images) and SSIM
    (:func:`harmonia.agreement.ssim`: Wang et al.'s Gaussian window; a 3-D item is scored as one volume,
    a multi-channel item as the mean over channels) are averaged over the patient's items, then over
    patients. A patient with a different number of items in the two domains is skipped and counted in
    the note. Metrics ``psnr`` then ``ssim`` for each domain in study order, each with its
    ``test_domain`` and each patient's value in ``per_patient``; NaN with a note where no patient is in
    both domains (a cohort that is not paired). ``n`` is the number of patients scored.
    """

    name = "image_quality"
    Params = ImageQualityParams
    scope = "cell"
    higher_is_better = True

    def evaluate_cell(self, view: CellView) -> list[Metric]:
        reference = self.params.reference or view.train_domain
        if reference not in view.domains:
            raise ValueError(f"image_quality: reference domain {reference!r} is not one of {list(view.domains)}")
        ref = view.split(reference, "test")
        metrics: list[Metric] = []
        for domain in view.domains:
            if domain != reference:
                metrics += self.domain_metrics(view, domain, ref, reference)
        return metrics

    def domain_metrics(self, view: CellView, domain: str, ref: ImageSet, reference: str) -> list[Metric]:
        """``psnr`` and ``ssim`` of ``domain``'s test images as the model sees them against ``ref``'s."""
        test = view.split(domain, "test")
        shared = sorted(set(test.patients) & set(ref.patients))
        if not shared:
            note = f"no test patient of {domain} is in {reference}'s test split (not a paired cohort)"
            return [Metric(name, math.nan, 0, note, test_domain=domain) for name in METRICS]
        scores: dict[str, tuple[float, float]] = {}
        for patient in shared:
            mine, theirs = test.of_patients([patient]), ref.of_patients([patient])
            if len(mine) == len(theirs):
                with torch.no_grad():
                    seen = view.transform(mine.images)
                scores[patient] = self.patient_scores(seen, theirs.images)
        skipped = len(shared) - len(scores)
        note = f"{skipped} patient(s) with different item counts in {domain} and {reference} skipped" if skipped else ""
        return [_metric(name, {p: s[i] for p, s in scores.items()}, note, domain) for i, name in enumerate(METRICS)]

    def patient_scores(self, images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
        """Mean PSNR and mean SSIM over one patient's items ``[n, C, *spatial]``, both windowed."""
        low, high = self.params.window
        data_range = high - low
        images = images.detach().cpu().double().clamp(low, high).numpy()
        reference = reference.detach().cpu().double().clamp(low, high).numpy()
        psnrs = [psnr(image, ref, data_range) for image, ref in zip(images, reference)]
        ssims = [
            np.mean([ssim(channel, ref_channel, data_range) for channel, ref_channel in zip(image, ref)])
            for image, ref in zip(images, reference)
        ]
        return float(np.mean(psnrs)), float(np.mean(ssims))


def _metric(name: str, per_patient: dict[str, float], note: str, domain: str) -> Metric:
    """The mean over patients of ``per_patient`` (NaN with the note when it is empty)."""
    value = float(np.mean(list(per_patient.values()))) if per_patient else math.nan
    return Metric(name, value, len(per_patient), note, per_patient, test_domain=domain)


@hookimpl
def harmonia_evaluators():
    return [ImageQuality]
