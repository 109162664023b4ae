"""A downloaded collection's patient folders (TCIA/NBIA layouts) and the DICOM series they hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harmonia.errors import DataError, UnreadableFile
from harmonia.io import SeriesInfo, find_series


def patient_folders(root: Path, collection: str, patient_of: Callable[[str], str | None]) -> dict[str, Path]:
    """Patient key -> folder, for every folder under ``root/<collection>``, ``root/manifest-*/<collection>``
    (as the NBIA Data Retriever writes) or ``root`` itself whose name ``patient_of`` maps to a key.

    DataError naming both folders when two hold the same patient.
    """
    found: dict[str, Path] = {}
    for parent in (root / collection, *sorted(root.glob(f"manifest-*/{collection}")), root):
        if not parent.is_dir():
            continue
        for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
            key = patient_of(folder.name)
            if key is None:
                continue
            if key in found:
                raise DataError(f"{folder}: the same patient is also in {found[key]}; keep one copy")
            found[key] = folder
    return found


def readable_series(folder: Path, report: Callable[[UnreadableFile], None]) -> list[SeriesInfo] | None:
    """Every DICOM series under ``folder``; None once ``report`` (which may raise) had each file whose header
    cannot be read."""
    unreadable: list[UnreadableFile] = []
    series = find_series(folder, on_unreadable=unreadable.append)
    for error in unreadable:
        report(error)
    return None if unreadable else series
