"""Scanner domains from vendors: one vendor against the rest, a series' vendor, one domain per patient."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

from harmonia.errors import DataError
from harmonia.io import SeriesInfo

OTHER = "Other"
T = TypeVar("T")


def vendor_or_other(vendor: str, reference: str) -> str:
    """``reference`` when the canonical ``vendor`` is it, else ``Other``: a study of one vendor against the rest."""
    return reference if vendor == reference else OTHER


def series_vendor(series: SeriesInfo) -> str:
    """The canonical vendor of a DICOM series; DataError naming its first file when the Manufacturer tag is empty."""
    if not series.manufacturer.strip():
        raise DataError(
            f"{series.files[0]}: no Manufacturer (0008,0070) in the {series.modality} series, so its scanner "
            f"domain is unknown"
        )
    return series.vendor


def one_domain_per_patient(items: Iterable[tuple[Hashable, str, T]]) -> dict[Hashable, tuple[str, list[T]]]:
    """(patient, domain, item) triples grouped by patient, first-met order, each keeping only the items of the
    domain most of its items have (the first met on a tie), so that no patient is in two domains."""
    by_patient: dict[Hashable, list[tuple[str, T]]] = {}
    for patient, domain, item in items:
        by_patient.setdefault(patient, []).append((domain, item))
    kept = {}
    for patient, pairs in by_patient.items():
        order = [domain for domain, _ in pairs]
        domain = max(order, key=lambda d: (order.count(d), -order.index(d)))
        kept[patient] = (domain, [item for d, item in pairs if d == domain])
    return kept
