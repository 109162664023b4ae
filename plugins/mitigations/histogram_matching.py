"""histogram_matching: every image's foreground histogram matched to the training split's pooled one.

At ``fit`` the *reference* is the quantile function of the training items' foreground voxels pooled
into one sample (``levels`` evenly spaced quantile levels from 0 to 100 %, in native units). At
``transform_images`` every item the model sees (the training set once, then the validation and test
images) is mapped from its own foreground quantiles at the same levels onto the reference ones,
piecewise-linearly (``np.interp``), so each item's foreground quantiles become the reference's and the
order of its voxel values is kept (the map is non-decreasing).

Decisions:

- *The reference*: the pooled foreground of the train split, not one reference image.
  scikit-image's ``match_histograms(image, reference)`` matches to a single image and uses every voxel
  (no mask); matching to the pooled sample's quantiles through ``np.interp`` is the same quantile mapping,
  on a grid of ``levels`` quantiles instead of every distinct value, which keeps it one vectorised pass per
  item and independent of the reference's size.
- *What is learned from*: the training domain's train split only; with ``fit_on: source_and_target``
  also the other domains' train splits, which ``fit`` receives (unlabelled) whatever the mitigation
  declares (:class:`harmonia.stages.MitigationStack` passes ``target_train`` to every ``fit``);
  ``uses_target_images`` stays False, since it would make the engine draw a target batch at every
  step. Never a validation or test split.
- *An item is one image* as the cohort gives it (a slice for 2-D cohorts): ``transform_images`` receives no
  patient identifiers.
- *Foreground* (``foreground``): ``otsu`` (default), ``threshold`` (a native-unit value) or ``all``, as for
  histogram_standardization; an item whose foreground is empty falls back to all its voxels.
- *Ends* (``ends``): the levels run from 0 to 100 %, so every foreground voxel lies between an item's first
  and last quantile; the background lies outside. ``clamp`` (default) sends it to the reference's minimum
  (maximum), as a quantile map defined on the reference's range does; ``extrapolate`` continues the end
  segments' lines (the lowest and highest quantile gaps, which are noisy).
- No randomness: the same images give the same reference and the same matched images.

Library: numpy and scikit-image's ``threshold_otsu`` (see :mod:`harmonia.intensity`), for the masks and the
pooled reference above, which ``match_histograms`` does not take.

Per cell the manifest keeps ``histogram_matching.<key>``: ``reference_p<p>`` for p in 1, 25, 50, 75, 99, read off the
reference grid by linear interpolation
(the reference's foreground percentiles, native units), ``fit_items``, ``fit_items_without_foreground``
and ``foreground_fraction``.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import ImageSet, Mitigation, Task
from harmonia.intensity import (
    Ends,
    Foreground,
    IntensityFitParams,
    fit_images,
    item_landmarks,
    piecewise_linear,
    pooled_percentiles,
)

#: the reference percentiles the manifest keeps
RECORDED_PERCENTILES = (1.0, 25.0, 50.0, 75.0, 99.0)


class HistogramMatchingParams(IntensityFitParams):
    levels: int = Field(
        256,
        ge=3,
        le=4096,
        description="quantile levels matched, evenly spaced from 0 to 100 % (more: a closer match, slower)",
    )
    ends: Ends = Field(
        "clamp",
        description="values outside an item's foreground range (the background): clamp (to the reference's minimum "
        "or maximum) or extrapolate (the end segments' lines)",
    )


class HistogramMatching(Mitigation):
    """Histogram matching of every image's foreground to the train split's pooled foreground quantiles.

    Acts at ``fit`` (the reference) and ``transform_images`` (the matching); see the module docstring.
    """

    name = "histogram_matching"
    Params = HistogramMatchingParams

    def __init__(self, params: HistogramMatchingParams, task: Task):
        super().__init__(params, task)
        self.foreground = Foreground(params.foreground, params.threshold)
        self.percentiles = np.linspace(0.0, 100.0, params.levels)
        #: the reference quantiles (float64 ``[levels]``, native units), learned by :meth:`fit`
        self.reference: np.ndarray | None = None
        self._fallback_slope = 1.0
        self._record: dict[str, int | float | str] = {}

    def fit(self, train: ImageSet, target_train: ImageSet | None, device: torch.device) -> None:
        """Learn the reference quantiles from the train split (and the target train splits with fit_on)."""
        p = self.params
        images = fit_images(self.name, p, train, target_train)
        self.reference = pooled_percentiles(images, self.percentiles, self.foreground)
        landmarks = item_landmarks(images, (0.0, 100.0), self.foreground)
        span = landmarks.values[:, 1] - landmarks.values[:, 0]
        reference_span = self.reference[-1] - self.reference[0]
        if span.max() > 0 and reference_span > 0:
            self._fallback_slope = float(reference_span / np.mean(span[span > 0]))
        recorded = np.interp(RECORDED_PERCENTILES, self.percentiles, self.reference)
        self._record = {f"reference_p{q:g}": float(v) for q, v in zip(RECORDED_PERCENTILES, recorded)}
        self._record.update(landmarks.fit_figures())

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        """Each item mapped from its own foreground quantiles onto the reference's."""
        if self.reference is None:
            raise RuntimeError(f"{self.name}: transform_images before fit")
        if len(images) == 0:
            return images
        quantiles = item_landmarks(images, self.percentiles, self.foreground)
        return piecewise_linear(images, quantiles.values, self.reference, self.params.ends, self._fallback_slope)

    def cell_record(self) -> dict[str, int | float | str]:
        return dict(self._record)


@hookimpl
def harmonia_mitigations():
    return [HistogramMatching]
