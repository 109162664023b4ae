"""``harmonia standardize``: a trained CT standardizer applied to DICOM series, written as derived series.

The checkpoint is loaded with ``weights_only=True`` after its SHA-256 is checked against its sidecar
(:mod:`harmonia.standardizer.checkpoint`); every CT series under the input goes through the generator slice by
slice, in HU, and is written by :mod:`harmonia.derived_series` with a DerivationDescription that names harmonia,
its version and the checkpoint's hash, so a derived image can always be traced to the weights that made it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import harmonia
from harmonia.derived_series import StandardizeResult, standardize_series_folder
from harmonia.standardizer import checkpoint_sha256, load_standardizer


def standardize_dicom(
    checkpoint: Path,
    input: Path,
    out: Path,
    *,
    overwrite: bool = False,
    device: str = "cpu",
    on_series: Callable[[str], None] | None = None,
) -> StandardizeResult:
    """Standardise every CT series under ``input`` into ``out`` with the standardizer saved at ``checkpoint``."""
    standardizer = load_standardizer(checkpoint, device=device)
    sha256 = checkpoint_sha256(checkpoint)

    def transform(volume: np.ndarray) -> np.ndarray:
        slices = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[:, None]
        return standardizer.apply_hu(slices)[:, 0].numpy()

    return standardize_series_folder(
        input,
        out,
        transform,
        derivation=f"harmonia {harmonia.__version__} CT standardizer, checkpoint sha256 {sha256}",
        overwrite=overwrite,
        on_series=on_series,
    )
