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
    randomness (bias field, noise, noise-level map), each from its own stream, so switching one
    component off leaves the others' draws unchanged.

    Pipeline: contrast remap -> PSF (blur, k-space truncation) -> bias field -> intensity transfer -> noise.
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
    bias_rng, noise_rng, noise_map_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))

    lo = float(values.min())
    span = float(np.ptp(values)) or max(abs(lo), 1.0)
    sig = signature
    if sig.contrast.enabled and sig.contrast.log_slope_sd > 0:
        values = lo + span * sig.contrast.remap((values - lo) / span)
    image = values.astype(np.float32)[tissues]
    if sig.psf.enabled and sig.psf.sigma > 0:
        image = ndimage.gaussian_filter(image, sig.psf.sigma * step.min() / step, mode="nearest")
    if sig.psf.enabled and sig.psf.kspace < 1:
        image = truncate_kspace(image, sig.psf.kspace, np.flatnonzero(step == step.min()))
    if sig.bias.enabled and sig.bias.amplitude > 0:
        image *= 1 + sig.bias.amplitude * smooth_field(image.shape, sig.bias.smoothness, bias_rng, step)
    if sig.transfer.enabled:
        u = (image - lo) / span
        image = lo + span * (sig.transfer.gain * np.sign(u) * np.abs(u) ** sig.transfer.gamma + sig.transfer.offset)
    if sig.noise.enabled and sig.noise.level > 0:
        sd = sig.noise.level * span
        if sig.noise.variation > 0:
            sd = sd * (1 + sig.noise.variation * smooth_field(image.shape, 0.5, noise_map_rng, step))
        image = _add_noise(image, sd, sig.noise.correlation, sig.noise.rician, noise_rng, step)
    return image.astype(np.float32, copy=False)


def truncate_kspace(image: np.ndarray, keep: float, axes: Sequence[int]) -> np.ndarray:
    """``image`` reconstructed from only the central ``keep`` fraction of its k-space along ``axes``.

    An MR image is the inverse Fourier transform of a finite acquisition matrix; a smaller matrix
    with no apodising filter is a sharp cut-off in k-space, i.e. a sinc PSF: blur plus Gibbs
    ringing next to edges. The image is mirror-padded first so the FFT's periodic edges do not ring.
    """
    pad = [(n // 4, n // 4) if a in axes else (0, 0) for a, n in enumerate(image.shape)]
    padded = np.pad(image, pad, mode="symmetric")
    spectrum = np.fft.fftn(padded, axes=axes)
    for axis in axes:
        kept = np.abs(np.fft.fftfreq(padded.shape[axis])) <= keep / 2
        spectrum *= kept.reshape([-1 if a == axis else 1 for a in range(padded.ndim)])
    restored = np.fft.ifftn(spectrum, axes=axes).real
    return restored[tuple(slice(before, before + n) for (before, _), n in zip(pad, image.shape))].astype(np.float32)


def _add_noise(
    image: np.ndarray,
    sd: float | np.ndarray,
    correlation: float,
    rician: bool,
    rng: np.random.Generator,
    step: np.ndarray,
) -> np.ndarray:
    """``image`` plus Gaussian noise of standard deviation ``sd`` (a number or a map), or its Rician magnitude."""
    real = image + sd * textured_noise(image.shape, correlation, rng, step)
    if not rician:
        return real
    return np.hypot(real, sd * textured_noise(image.shape, correlation, rng, step))
