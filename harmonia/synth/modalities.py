"""Per-modality defaults and :func:`signature_for`, which draws a vendor's signature from them.

Each modality has a neutral acquisition (the same for every vendor) and a spread: how far a
vendor deviates from neutral at strength 1. A vendor's deviations are fixed by hashing
``(modality, vendor, seed)``; ``strength`` and the per-component scales only stretch them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harmonia.seeding import derive_seed
from harmonia.synth.signature import COMPONENTS, Bias, Contrast, Noise, Psf, ScannerSignature, Transfer


class VendorSpread(BaseModel):
    """How far vendors deviate from the neutral acquisition at strength 1.

    Each vendor draws one deviation ``d`` per parameter with ``|d|`` uniform in [0.5, 1] and a
    random sign; the parameter moves by ``d`` x its spread. ``log_`` spreads act on the
    logarithm of a positive parameter (0.4: multiplied or divided by up to 1.49); offsets are additive.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    contrast_log_gain: float = Field(ge=0, description="Contrast.log_gain_sd at strength 1")
    contrast_offset: float = Field(ge=0, description="Contrast.offset_sd at strength 1")
    psf_log_sigma: float = Field(ge=0)
    noise_log_level: float = Field(ge=0)
    noise_log_correlation: float = Field(ge=0)
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


#: MRI differs most (sequence contrast, coil bias, vendor post-processing), X-ray moderately
#: (detector, processing LUT, heel effect); CT is calibrated in HU, so only small HU offsets,
#: kernel sharpness and noise differ.
MODALITY_DEFAULTS: dict[str, ModalityDefaults] = {
    "MRI": ModalityDefaults(
        neutral=ScannerSignature(psf=Psf(sigma=0.6), noise=Noise(level=0.02, correlation=0.4, rician=True)),
        spread=VendorSpread(
            contrast_log_gain=0.35,
            contrast_offset=0.0,
            psf_log_sigma=0.4,
            noise_log_level=0.5,
            noise_log_correlation=0.4,
            bias_amplitude=0.3,
            bias_log_smoothness=0.3,
            transfer_log_gamma=0.3,
            transfer_log_gain=0.25,
            transfer_offset=0.05,
        ),
    ),
    "X-ray": ModalityDefaults(
        neutral=ScannerSignature(psf=Psf(sigma=0.7), noise=Noise(level=0.015, correlation=0.5)),
        spread=VendorSpread(
            contrast_log_gain=0.15,
            contrast_offset=0.02,
            psf_log_sigma=0.3,
            noise_log_level=0.4,
            noise_log_correlation=0.3,
            bias_amplitude=0.1,
            bias_log_smoothness=0.3,
            transfer_log_gamma=0.15,
            transfer_log_gain=0.15,
            transfer_offset=0.03,
        ),
    ),
    "CT": ModalityDefaults(
        neutral=ScannerSignature(psf=Psf(sigma=0.7), noise=Noise(level=0.008, correlation=0.8)),
        spread=VendorSpread(
            contrast_log_gain=0.0,
            contrast_offset=0.004,
            psf_log_sigma=0.25,
            noise_log_level=0.3,
            noise_log_correlation=0.3,
            bias_amplitude=0.0,
            bias_log_smoothness=0.0,
            transfer_log_gamma=0.0,
            transfer_log_gain=0.0,
            transfer_offset=0.004,
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
    s, base = MODALITY_DEFAULTS[modality].spread, MODALITY_DEFAULTS[modality].neutral
    log_gain_sd, offset_sd = scale["contrast"] * s.contrast_log_gain, scale["contrast"] * s.contrast_offset

    return ScannerSignature(
        contrast=Contrast(key=key if log_gain_sd or offset_sd else 0, log_gain_sd=log_gain_sd, offset_sd=offset_sd),
        psf=Psf(sigma=base.psf.sigma * math.exp(scale["psf"] * s.psf_log_sigma * d[0])),
        noise=Noise(
            level=base.noise.level * math.exp(scale["noise"] * s.noise_log_level * d[1]),
            correlation=base.noise.correlation * math.exp(scale["noise"] * s.noise_log_correlation * d[2]),
            rician=base.noise.rician,
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
