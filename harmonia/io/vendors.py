"""Canonical scanner-vendor names from the free text of DICOM ``Manufacturer`` (0008,0070) and similar fields."""

from __future__ import annotations

import re

#: canonical name -> the leading words that identify it (after lower-casing and turning punctuation
#: into spaces, so "G.E. Medical Systems" reads "g e medical systems")
_LEADING_WORDS: dict[str, tuple[str, ...]] = {
    "GE": ("ge", "g e", "general electric"),
    "Siemens": ("siemens",),
    "Philips": ("philips",),
    "Toshiba": ("toshiba",),
    "Canon": ("canon",),
    "Hitachi": ("hitachi",),
    "Fujifilm": ("fujifilm", "fuji"),
    "Agfa": ("agfa",),
    "Carestream": ("carestream",),
    "Samsung": ("samsung",),
    "United Imaging": ("united imaging", "uih"),
    "Neusoft": ("neusoft",),
}


def canonical_vendor(text: object) -> str:
    """The canonical vendor named by ``text`` ("GE MEDICAL SYSTEMS" -> ``GE``), else ``text`` trimmed; "" if empty.

    Only a known vendor's name at the start of the text counts ("TOSHIBA_MEC" -> ``Toshiba``);
    anything else is returned as written, never guessed. Toshiba and Canon stay apart: the
    company was renamed in 2018, but scanners are labelled with the name they shipped under.
    """
    if text is None:
        return ""
    raw = " ".join(str(text).split())
    words = re.sub(r"[^a-z0-9]+", " ", raw.lower()).strip()
    for vendor, prefixes in _LEADING_WORDS.items():
        if any(words == p or words.startswith(p + " ") for p in prefixes):
            return vendor
    return raw
