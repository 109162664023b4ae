"""Synthetic acquisition: turn clean phantoms into a vendor's images through a seeded scanner signature.

``signature_for(vendor, modality, seed)`` draws a vendor's :class:`ScannerSignature`;
``acquire(tissues, intensities, signature, seed)`` applies it to a tissue label map;
``twin_signature(vendor, modality, settings)`` is the signature a cohort twin's ``TwinSettings`` ask for.
See ``docs/synthetic.md``.
"""

from harmonia.synth.acquisition import acquire
from harmonia.synth.fields import smooth_field, textured_noise
from harmonia.synth.modalities import MODALITY_DEFAULTS, ModalityDefaults, VendorSpread, signature_for, twin_signature
from harmonia.synth.signature import COMPONENTS, Bias, Contrast, Noise, Psf, ScannerSignature, Transfer

__all__ = [
    "COMPONENTS",
    "MODALITY_DEFAULTS",
    "Bias",
    "Contrast",
    "ModalityDefaults",
    "Noise",
    "Psf",
    "ScannerSignature",
    "Transfer",
    "VendorSpread",
    "acquire",
    "signature_for",
    "smooth_field",
    "textured_noise",
    "twin_signature",
]
