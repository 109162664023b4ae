"""histogram_standardization: Nyúl–Udupa piecewise-linear landmark standardisation.

The classic MRI intensity standardisation (Nyúl & Udupa 1999; Nyúl, Udupa & Zhang 2000), as a
baseline against scanner shift. Landmarks are percentiles of an item's *foreground* (the
``percentiles`` parameter, by default 1, 10, 20, …, 90, 99). At ``fit`` each training item's
landmarks are mapped linearly onto [``s_min``, ``s_max``] (its first landmark to ``s_min``, its
last to ``s_max``) and the *standard* landmarks are the mean of these over the items. At
``transform_images`` every item the model sees (the training set once, then the validation and test
images) is mapped piecewise-linearly from its own landmarks onto the standard ones; the engine's
per-image z-score comes after, so ``s_min`` and ``s_max`` only fix the scale of the numbers in the
manifest, not what the model sees.

Decisions:

- *What is learned from*: the training domain's train split only (``fit`` receives nothing else);
  with ``fit_on: source_and_target`` also the other domains' train splits, which ``fit`` receives
  (unlabelled) whatever the mitigation declares: :class:`harmonia.stages.MitigationStack` passes
  ``target_train`` to every mitigation's ``fit``. ``uses_target_images`` stays False, since it
  would make the engine draw a target batch at every training step, which this method has no use for.
  Never a validation or test split.
- *An item is one image* as the cohort gives it: a slice for 2-D cohorts, a volume or crop for 3-D
  ones. ``transform_images`` receives no patient identifiers, so a 2-D cohort is standardised
  slice by slice, not volume by volume as Nyúl did; a slice with little foreground has noisier landmarks.
- *Foreground* (``foreground``): ``otsu`` (default; each item's own Otsu threshold), ``threshold``
  (a fixed native-unit value, e.g. -500 HU) or ``all``. Without a mask CT air at -1000 HU or MRI
  background fills the low percentiles and the landmarks describe the background, not the tissue.
  An item whose foreground is empty falls back to all its voxels (counted in the manifest).
- *Ends* (``ends``): below an item's first landmark and above its last, ``extrapolate`` (default)
  continues the end segments' lines, as Nyúl's mapping and intensity-normalization's NyulNormalize
  (``interp1d(..., fill_value="extrapolate")``) do, so that the background and the brightest voxels keep
  their differences; ``clamp`` sends them to ``s_min`` / ``s_max``. A segment of zero width (tied
  landmarks) is skipped for the end slope; an item whose landmarks are all equal (a constant
  foreground) is extended with the mean slope of the training items. Training items whose first and last
  landmarks are equal are left out of the standard landmarks.
- No randomness: the same images give the same landmarks.

Library: numpy (``np.sort``-based percentiles and ``np.interp``, see :mod:`harmonia.intensity`) with
scikit-image's ``threshold_otsu``, rather than a packaged implementation: intensity-normalization 4.0
needs Python ≥ 3.11 and, without a mask, takes ``data > 0`` as the foreground, which is wrong for CT in
HU; TorchIO's ``HistogramStandardization`` trains its landmarks from image files on disk and, without a
mask, from every voxel. Ours learns from the in-memory items with the masks above.

Per cell the manifest keeps ``histogram_standardization.<key>``: ``standard_p<p>`` (the standard
landmark of percentile p), ``fit_items``, ``fit_items_without_foreground`` and ``foreground_fraction``
(mean fraction of voxels in the training items' foreground).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from harmonia import hookimpl
from harmonia.api import ImageSet, Mitigation, Task
from harmonia.intensity import Ends, Foreground, IntensityFitParams, fit_images, item_landmarks, piecewise_linear

DEFAULT_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


class HistogramStandardizationParams(IntensityFitParams):
    percentiles: tuple[float, ...] = Field(
        DEFAULT_PERCENTILES,
        description="foreground percentiles used as landmarks, strictly increasing within [0, 100]; the first and "
        "last are the ends mapped onto s_min and s_max",
    )
    s_min: float = Field(0.0, description="standard scale's lower end (the first landmark's standard value)")
    s_max: float = Field(100.0, description="standard scale's upper end (the last landmark's standard value)")
    ends: Ends = Field(
        "extrapolate",
        description="values outside an item's first and last landmark: extrapolate (the end segments' lines, "
        "Nyúl's choice) or clamp (to s_min and s_max)",
    )

    @field_validator("percentiles")
    @classmethod
    def _increasing_percentiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) < 2:
            raise ValueError("needs at least two percentiles")
        if any(p < 0.0 or p > 100.0 for p in value):
            raise ValueError("percentiles must lie within [0, 100]")
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("percentiles must be strictly increasing")
        return value

    @model_validator(mode="after")
    def _scale_is_ordered(self) -> HistogramStandardizationParams:
        if self.s_max <= self.s_min:
            raise ValueError(f"s_max ({self.s_max:g}) must exceed s_min ({self.s_min:g})")
        return self


class HistogramStandardization(Mitigation):
    """Nyúl–Udupa piecewise-linear histogram standardisation of every image, landmarks learned on the train split.

    Acts at ``fit`` (learns the standard landmarks) and ``transform_images`` (maps each item onto them); see the
    module docstring for the foreground mask, the ends and what it learns from.
    """

    name = "histogram_standardization"
    Params = HistogramStandardizationParams

    def __init__(self, params: HistogramStandardizationParams, task: Task):
        super().__init__(params, task)
        self.foreground = Foreground(params.foreground, params.threshold)
        #: the standard landmarks (float64 ``[K]``), learned by :meth:`fit`
        self.standard: np.ndarray | None = None
        self._fallback_slope = 1.0
        self._record: dict[str, int | float | str] = {}

    def fit(self, train: ImageSet, target_train: ImageSet | None, device: torch.device) -> None:
        """Learn the standard landmarks from the train split (and the target train splits with fit_on)."""
        p = self.params
        images = fit_images(self.name, p, train, target_train)
        landmarks = item_landmarks(images, p.percentiles, self.foreground)
        span = landmarks.values[:, -1] - landmarks.values[:, 0]
        usable = span > 0
        if not usable.any():
            raise ValueError(
                f"{self.name}: no training item has a foreground of more than one value, so there is nothing to learn "
                f"landmarks from (foreground: {p.foreground})"
            )
        lowest = landmarks.values[usable, :1]
        mapped = p.s_min + (landmarks.values[usable] - lowest) / span[usable, None] * (p.s_max - p.s_min)
        self.standard = mapped.mean(0)
        self._fallback_slope = float((p.s_max - p.s_min) / np.mean(span[usable]))
        self._record = {f"standard_p{q:g}": float(v) for q, v in zip(p.percentiles, self.standard)}
        self._record.update(landmarks.fit_figures())

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        """Each item mapped piecewise-linearly from its own foreground landmarks onto the standard ones."""
        if self.standard is None:
            raise RuntimeError(f"{self.name}: transform_images before fit")
        if len(images) == 0:
            return images
        landmarks = item_landmarks(images, self.params.percentiles, self.foreground)
        return piecewise_linear(images, landmarks.values, self.standard, self.params.ends, self._fallback_slope)

    def cell_record(self) -> dict[str, int | float | str]:
        return dict(self._record)


@hookimpl
def harmonia_mitigations():
    return [HistogramStandardization]
