"""Per-modality defaults and :func:`signature_for`, which draws a vendor's signature from them.

Each modality has a neutral acquisition (the same for every vendor) and a spread: how far a
vendor deviates from neutral at strength 1. A vendor's deviations are fixed by hashing
``(modality, vendor, seed)``; ``strength`` and the per-component scales only stretch them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harmonia.seeding import derive_seed
from harmonia.synth.signature import COMPONENTS, Bias, Contrast, Noise, Psf, ScannerSignature, Transfer

if TYPE_CHECKING:
    from harmonia.api import TwinSettings


class VendorSpread(BaseModel):
    """How far vendors deviate from the neutral acquisition at strength 1.

    Each vendor draws one deviation ``d`` per parameter with ``|d|`` uniform in [0.5, 1] and a
    random sign; the parameter moves by ``d`` x its spread. ``log_`` spreads act on the
    logarithm of a positive parameter (0.4: multiplied or divided by up to 1.49); offsets are additive.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    contrast_log_slope: float = Field(ge=0, description="Contrast.log_slope_sd at strength 1")
    psf_log_sigma: float = Field(ge=0)
    psf_kspace_cut: float = Field(0.0, ge=0, lt=1, description="Psf.kspace is 1 - |d| x this (neutral: all kept)")
    noise_log_level: float = Field(ge=0)
    noise_log_correlation: float = Field(ge=0)
    noise_variation: float = Field(0.0, ge=0, lt=1, description="Noise.variation is |d| x this (neutral: uniform)")
    bias_amplitude: float = Field(ge=0, lt=1, description="bias amplitude is |d| x this (neutral: no field)")
    bias_log_smoothness: float = Field(ge=0)
    transfer_log_gamma: float = Field(ge=0)
    transfer_log_gain: float = Field(ge=0)
    transfer_offset: float = Field(ge=0)


class ModalityDefaults(BaseModel):
    """A modality's neutral acquisition (strength 0, same for all vendors) and its vendor spread."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    neutral: ScannerSignature
    spread: VendorSpread


#: No modality reorders tissues (contrast is a monotone remap). MRI differs most: contrast stretched or
#: compressed, arbitrary intensity scale (transfer gain), coil-sensitivity bias, k-space matrix (blur and
#: ringing), noise level and its parallel-imaging variation across the image. X-ray moderately: detector
#: sharpness and noise, processing tone curve (transfer), exposure, heel effect. CT is calibrated in HU:
#: reconstruction kernel (sharpness, noise texture), dose (noise level), offsets of a few HU. The X-ray and CT
#: spreads are calibrated so the study twins' drops follow the scanner-shift study (docs/synthetic.md).
MODALITY_DEFAULTS: dict[str, ModalityDefaults] = {
    "MRI": ModalityDefaults(
        neutral=ScannerSignature(psf=Psf(sigma=0.6), noise=Noise(level=0.02, correlation=0.4, rician=True)),
        spread=VendorSpread(
            contrast_log_slope=0.8,
            psf_log_sigma=0.4,
            psf_kspace_cut=0.5,
            noise_log_level=0.5,
            noise_log_correlation=0.4,
            noise_variation=0.5,
            bias_amplitude=0.3,
            bias_log_smoothness=0.3,
            transfer_log_gamma=0.3,
            transfer_log_gain=0.25,
            transfer_offset=0.0,  # magnitude images: zero stays zero, the scale is arbitrary
        ),
    ),
    "X-ray": ModalityDefaults(
        neutral=ScannerSignature(psf=Psf(sigma=0.7), noise=Noise(level=0.015, correlation=0.5)),
        spread=VendorSpread(
            contrast_log_slope=0.3,
            psf_log_sigma=0.6,
            noise_log_level=0.8,
            noise_log_correlation=0.5,
            bias_amplitude=0.2,
            bias_log_smoothness=0.3,
            transfer_log_gamma=0.35,
            transfer_log_gain=0.3,
            transfer_offset=0.05,
        ),
    ),
    "CT": ModalityDefaults(
        neutral=ScannerSignature(psf=Psf(sigma=0.7), noise=Noise(level=0.008, correlation=0.8)),
        spread=VendorSpread(
            contrast_log_slope=0.02,
            psf_log_sigma=0.12,
            noise_log_level=0.15,
            noise_log_correlation=0.15,
            bias_amplitude=0.0,
            bias_log_smoothness=0.0,
            transfer_log_gamma=0.0,
            transfer_log_gain=0.0,
            transfer_offset=0.002,
        ),
    ),
}


def canonical_modality(modality: str) -> str:
    """``modality`` spelled as in :data:`MODALITY_DEFAULTS` (case-insensitive); ValueError if unknown."""
    for name in MODALITY_DEFAULTS:
        if modality.lower() == name.lower():
            return name
    raise ValueError(f"unknown modality {modality!r}; accepted: {', '.join(MODALITY_DEFAULTS)} (any case)")


def signature_for(
    vendor: str,
    modality: str,
    seed: int = 0,
    strength: float = 1.0,
    components: Mapping[str, float] | None = None,
) -> ScannerSignature:
    """The scanner signature of ``vendor`` on ``modality``, deterministic in all arguments.

    ``strength`` scales every component's deviation from the modality's neutral acquisition
    (0 gives the neutral signature, identical for all vendors); ``components`` scales single
    components on top, e.g. ``{"psf": 0.0}`` keeps the baseline blur, ``{"noise": 2.0}`` doubles
    the noise deviation.
    """
    modality = canonical_modality(modality)
    if not vendor:
        raise ValueError("vendor must be a non-empty name")
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    scales = dict(components or {})
    unknown = set(scales) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown signature component(s) {sorted(unknown)}; valid: {', '.join(COMPONENTS)}")
    if any(not s >= 0 for s in scales.values()):
        raise ValueError(f"component scales must be >= 0, got {scales}")
    scale = {name: strength * scales.get(name, 1.0) for name in COMPONENTS}

    # Draws are made in a fixed order and never depend on strength or scales, so those only stretch them.
    rng = np.random.default_rng(derive_seed("harmonia.synth", modality, vendor, seed))
    d = (rng.choice([-1.0, 1.0], size=8) * rng.uniform(0.5, 1.0, size=8)).tolist()
    key = int(rng.integers(1, 2**31))
    d += rng.uniform(0.5, 1.0, size=2).tolist()  # |d| of k-space cut and noise variation, drawn last
    s, base = MODALITY_DEFAULTS[modality].spread, MODALITY_DEFAULTS[modality].neutral
    log_slope_sd = scale["contrast"] * s.contrast_log_slope

    return ScannerSignature(
        contrast=Contrast(key=key if log_slope_sd else 0, log_slope_sd=log_slope_sd),
        psf=Psf(
            sigma=base.psf.sigma * math.exp(scale["psf"] * s.psf_log_sigma * d[0]),
            # at most 90 % of k-space cut, so the image keeps some detail at any strength
            kspace=1 - min(scale["psf"] * s.psf_kspace_cut * d[8], 0.9),
        ),
        noise=Noise(
            level=base.noise.level * math.exp(scale["noise"] * s.noise_log_level * d[1]),
            correlation=base.noise.correlation * math.exp(scale["noise"] * s.noise_log_correlation * d[2]),
            rician=base.noise.rician,
            variation=min(scale["noise"] * s.noise_variation * d[9], 0.9),
        ),
        bias=Bias(
            # capped below 1 so the field stays positive at any strength
            amplitude=min(scale["bias"] * s.bias_amplitude * abs(d[3]), 0.95),
            smoothness=base.bias.smoothness * math.exp(scale["bias"] * s.bias_log_smoothness * d[4]),
        ),
        transfer=Transfer(
            gamma=math.exp(scale["transfer"] * s.transfer_log_gamma * d[5]),
            gain=math.exp(scale["transfer"] * s.transfer_log_gain * d[6]),
            offset=scale["transfer"] * s.transfer_offset * d[7],
        ),
    )


def twin_signature(vendor: str, modality: str, settings: TwinSettings, seed: int | None = None) -> ScannerSignature:
    """The signature a cohort twin acquires ``vendor`` with: ``settings``' seed (or ``seed``), strength and components.

    A component left out of ``settings.components`` keeps the modality's neutral acquisition on
    every vendor (baseline blur and noise stay), so a study can switch vendor effects on one by one.
    """
    scales = {name: float(name in settings.components) for name in COMPONENTS}
    seed = settings.seed if seed is None else seed
    return signature_for(vendor, modality, seed=seed, strength=settings.strength, components=scales)
