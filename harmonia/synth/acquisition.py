"""``acquire``: pass a clean phantom through a scanner signature to get one vendor's image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from harmonia.synth.fields import axis_spacing, smooth_field, textured_noise
from harmonia.synth.signature import ScannerSignature


def acquire(
    tissues: np.ndarray,
    intensities: Sequence[float] | np.ndarray,
    signature: ScannerSignature,
    seed: int,
    spacing: float | Sequence[float] = 1.0,
) -> np.ndarray:
    """The image (float32, shape of ``tissues``) that ``signature`` acquires of a phantom.

    ``tissues`` is an integer label map (2-D or 3-D); ``intensities[i]`` is the clean value of
    tissue ``i`` in native units (HU, a.u.). ``spacing`` is the voxel size per axis, in any one
    unit: the PSF and noise texture are given in pixels along the finest axis and the bias
    field's smoothness in fractions of the physical field of view. ``seed`` fixes the per-image
    randomness (bias field and noise), each from its own stream, so switching one component
    off leaves the others' draws unchanged.

    Pipeline: contrast mapping -> PSF blur -> bias field -> intensity transfer -> noise.
    """
    tissues = np.asarray(tissues)
    values = np.asarray(intensities, dtype=float)
    if tissues.ndim not in (2, 3) or not np.issubdtype(tissues.dtype, np.integer):
        raise ValueError(f"tissues must be a 2-D or 3-D integer label map, got {tissues.ndim}-D {tissues.dtype}")
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError("intensities must be a 1-D sequence of finite numbers, one per tissue label")
    if tissues.size and (tissues.min() < 0 or tissues.max() >= len(values)):
        raise ValueError(
            f"tissue labels run from {tissues.min()} to {tissues.max()}, but intensities has {len(values)} "
            f"entries; it needs one per label 0..{tissues.max()}"
        )
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    step = axis_spacing(spacing, tissues.ndim)
    bias_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))

    lo = float(values.min())
    span = float(np.ptp(values)) or max(abs(lo), 1.0)
    sig = signature
    if sig.contrast.enabled:
        gains, offsets = sig.contrast.tissue_mapping(len(values))
        values = values * gains + offsets * span
    image = values.astype(np.float32)[tissues]
    if sig.psf.enabled and sig.psf.sigma > 0:
        image = ndimage.gaussian_filter(image, sig.psf.sigma * step.min() / step, mode="nearest")
    if sig.bias.enabled and sig.bias.amplitude > 0:
        image *= 1 + sig.bias.amplitude * smooth_field(image.shape, sig.bias.smoothness, bias_rng, step)
    if sig.transfer.enabled:
        u = (image - lo) / span
        image = lo + span * (sig.transfer.gain * np.sign(u) * np.abs(u) ** sig.transfer.gamma + sig.transfer.offset)
    if sig.noise.enabled and sig.noise.level > 0:
        image = _add_noise(image, sig.noise.level * span, sig.noise.correlation, sig.noise.rician, noise_rng, step)
    return image.astype(np.float32, copy=False)


def _add_noise(
    image: np.ndarray, sd: float, correlation: float, rician: bool, rng: np.random.Generator, step: np.ndarray
) -> np.ndarray:
    """``image`` plus Gaussian noise of standard deviation ``sd``, or its Rician magnitude."""
    real = image + sd * textured_noise(image.shape, correlation, rng, step)
    if not rician:
        return real
    return np.hypot(real, sd * textured_noise(image.shape, correlation, rng, step))
