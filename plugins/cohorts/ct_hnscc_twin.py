"""Synthetic twin of the HNSCC collection: SYNTHETIC head-and-neck CT phantoms with RTSTRUCT tumour contours.

Written in the TCIA download layout (see :mod:`harmonia_plugins.cohorts.ct_hnscc`)::

    <out>/HNSCC/HNSCC-01-NNNN/<MM-DD-YYYY-NA-study-NNNNN>/<N.000000-series-NNNNN>/1-NNN.dcm

so the loader reads it exactly as the real data. Each patient is an axial CT stack of a phantom
neck in HU: skin fat, muscle, the cervical spine with its canal, the airway, carotids and jugular
veins (contrast-enhanced), the mandible in the upper slices, and an enhancing primary tumour by
the airway, in some patients with a nodal metastasis. An RTSTRUCT holds the GTV contours (names
vary as in real structure sets) and two ROIs that are not GTVs. Every vendor difference in
appearance comes from the CT scanner signatures of :mod:`harmonia.synth`; the vendors' slice
thickness and pixel size are acquisition choices made here.

The phantom and the TCIA-layout writing are :mod:`harmonia.synth.head_neck`'s. It does not
import the loader: folder, ROI and tag names are spelled out independently.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from harmonia.api import TwinSettings
from harmonia.seeding import derive_seed
from harmonia.synth.head_neck import (
    Identity,
    Lesion,
    Neck,
    Scanner,
    anatomy,
    clean_hu,
    draw_lesions,
    oar_rois,
    scan,
    write_ct,
    write_structures,
)

#: the domains' scanners as written in the Manufacturer tag; "Other" mixes two vendors as the real collection does
SCANNERS = {
    "GE": (Scanner("GE", "GE MEDICAL SYSTEMS", "LightSpeed RT16", 2.3, 3.75),),
    "Other": (
        Scanner("Philips", "Philips", "Brilliance Big Bore", 2.2, 5.0),
        Scanner("Siemens", "SIEMENS", "Sensation Open", 2.4, 5.0),
    ),
}
#: the GTV names of the structure sets, cycled over patients (primary, node)
GTV_NAMES = (("GTV", "GTV_N"), ("GTVp", "GTVn"), ("GTV-1", "GTV-2"), ("GTV_P", "GTV_LN"))
STUDY = "01-01-2000-NA-RT SIMULATION"
MATRIX, EXTENT_MM = 96, 105.0


def draw_neck(rng: np.random.Generator, scanner: Scanner, difficulty: float, with_node: bool) -> Neck:
    """A random neck with a primary tumour beside the airway; ``difficulty`` shrinks it (contrast is set apart)."""
    slices = round(EXTENT_MM / scanner.slice_mm)
    z_mid = slices * scanner.slice_mm * rng.uniform(0.45, 0.6)
    side = rng.choice([-1.0, 1.0])
    radius = rng.uniform(12, 17) * (1 - 0.5 * difficulty)
    primary = Lesion((side * rng.uniform(9, 14), rng.uniform(-22, -14), z_mid), radius, rng.uniform(0.1, 0.3))
    node = (
        Lesion(
            (side * rng.uniform(30, 36), rng.uniform(-12, -4), z_mid - rng.uniform(10, 20)),
            radius * rng.uniform(0.5, 0.7),
            0.15,
        )
        if with_node
        else None
    )
    return Neck(MATRIX, slices, (rng.uniform(55, 65), rng.uniform(48, 56)), rng.uniform(4, 9), primary, node)


def tumour_hu(difficulty: float) -> float:
    """Clean HU of the enhancing tumour: 80 HU when easy, down to 52 HU (12 above muscle) when hard."""
    return 40.0 + 40.0 * (1 - 0.7 * difficulty)


def write_patient(
    root: Path,
    who: Identity,
    scanner: Scanner,
    settings: TwinSettings,
    index: int,
    contoured: bool,
    other: Scanner | None,
) -> None:
    """One HNSCC patient: the planning CT (with its RTSTRUCT when ``contoured``) and, if ``other``, a second study."""
    rng = np.random.default_rng(derive_seed("ct_hnscc-twin-patient", settings.seed, who.patient_id))
    neck = draw_neck(rng, scanner, settings.difficulty, with_node=index % 2 == 1)
    tissues = anatomy(neck, scanner, rng)
    masks = draw_lesions(tissues, neck, scanner, rng)
    volume = scan(
        tissues,
        clean_hu(tumour_hu(settings.difficulty)),
        scanner,
        settings,
        derive_seed("ct_hnscc-twin-scan", settings.seed, who.patient_id),
    )
    patient = root / "HNSCC" / who.patient_id
    series = write_ct(patient, who, volume, scanner, STUDY, "CT HEAD NECK")
    if contoured:
        primary_name, node_name = GTV_NAMES[index % len(GTV_NAMES)]
        rois = {primary_name: masks["primary"], **({node_name: masks["node"]} if "node" in masks else {})}
        write_structures(
            patient, who, series, STUDY, {**rois, **oar_rois(tissues, np.logical_or.reduce(list(rois.values())))}
        )
    if other is not None:
        # a later diagnostic study on another vendor's scanner (every third slice), which no RTSTRUCT references
        later = replace(other, slice_mm=scanner.slice_mm * 3)
        seed = derive_seed("ct_hnscc-twin-follow-up", settings.seed, who.patient_id)
        follow_up = scan(tissues[::3], clean_hu(40.0), later, settings, seed)
        study_uid = f"2.25.{derive_seed('follow-up study', who.patient_id)}"
        write_ct(patient, who, follow_up, later, "06-30-2000-NA-CT NECK W CONTRAST", "NECK", study_uid=study_uid)


def write_twin(out: Path, settings: TwinSettings) -> None:
    """Write the twin into ``out``: ``settings.patients`` contoured patients per domain, plus one without RTSTRUCT.

    Deterministic in ``settings``. The first patient of each domain also has a follow-up CT from
    the other domain's vendor in a second study, so a loader must pair the RTSTRUCT with its CT.
    """
    rng = np.random.default_rng(derive_seed("ct_hnscc-twin", settings.seed))
    numbers = rng.permutation(np.arange(1, 2 * settings.patients + 2) * 7 + 3)
    ids = iter(f"HNSCC-01-{n:04d}" for n in numbers)
    for domain, scanners in SCANNERS.items():
        follow_up = SCANNERS["Other" if domain == "GE" else "GE"][0]
        for k in range(settings.patients):
            who = Identity.draw(next(ids), rng)
            write_patient(out, who, scanners[k % len(scanners)], settings, k, True, follow_up if k == 0 else None)
    # PET/CT-only patients exist in the real collection: a CT without any RTSTRUCT
    write_patient(out, Identity.draw(next(ids), rng), SCANNERS["GE"][0], settings, 0, False, None)
