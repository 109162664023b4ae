"""The ct_hnscc cohort: its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from cohort_checks import index_and_items, private_copy
from pydantic import ValidationError

from harmonia.api import TwinSettings
from harmonia.errors import DataError, UnreadableFile
from harmonia.io import read_image, read_rtstruct, rtstruct_roi_names
from harmonia.privacy import pseudonymize
from harmonia.synth.head_neck import Identity
from harmonia_plugins.cohorts.ct_hnscc import HnsccCohort
from harmonia_plugins.cohorts.ct_hnscc_twin import SCANNERS, write_patient

PATIENTS = 3
SMALL = {"image_size": 48, "spacing_mm": 4.0}


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hnscc")
    HnsccCohort.write_twin(root, TwinSettings(patients=PATIENTS))
    return root


@pytest.fixture(scope="module")
def loaded(twin):
    """The twin read with the test geometry: the cohort, its index and its items."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARMONIA_SALT", "test-salt")
        return load_all(twin)


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "hnscc")


def cohort(root: Path, **params) -> HnsccCohort:
    return HnsccCohort(HnsccCohort.Params(**{**SMALL, **params}), root)


def load_all(root: Path, **params):
    c = cohort(root, **params)
    return (c, *index_and_items(c))


def headers(root: Path, modality: str) -> dict[Path, pydicom.Dataset]:
    """Header of every DICOM file of ``modality`` under ``root``."""
    found = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(root.rglob("*.dcm"))}
    return {p: h for p, h in found.items() if h.Modality == modality}


def planning_ct(rtstruct: Path) -> list[Path]:
    """The CT files the RTSTRUCT references, found by series UID (independently of the loader)."""
    ds = pydicom.dcmread(rtstruct)
    uid = (
        ds.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .SeriesInstanceUID
    )
    patient = rtstruct.parents[2]
    return [p for p, h in headers(patient, "CT").items() if h.SeriesInstanceUID == uid]


def rtstructs(root: Path) -> list[Path]:
    return sorted(root.rglob("1-1.dcm"))


def rewrite(paths: list[Path], change) -> None:
    """Apply ``change`` to the dataset of each file and save it in place."""
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_both_domains_balanced_slices_in_hu(loaded):
    c, index, items = loaded
    assert list(index.columns) == ["patient", "domain", "stratum"]
    assert index["domain"].value_counts().to_dict() == {"GE": PATIENTS, "Other": PATIENTS}
    assert index["stratum"].isna().all()
    # the patient with a CT but no RTSTRUCT is left out and counted
    assert c.exclusion_counts() == {"no RTSTRUCT": 1}
    assert items.images.dtype == torch.float32 and items.targets.dtype == torch.int64
    assert items.images.shape[1:] == (1, 48, 48) and items.targets.shape == (len(items),)
    assert set(items.patients) == set(index["patient"]) and set(items.domains) == {"GE", "Other"}
    for patient in index["patient"]:
        mine = items.targets[torch.as_tensor(items.patients == patient)]
        assert int(mine.sum()) > 0 and int((mine == 0).sum()) == int(mine.sum()), (
            "one tumour-free slice per tumour slice"
        )
    x = items.images
    assert torch.isfinite(x).all()
    assert -1100 < float(x.min()) < -900 and 500 < float(x.max()) < 1000, "HU: air outside, bone inside"


def test_tumour_slices_are_those_with_a_gtv_voxel_not_ctv(twin, loaded):
    _, _, items = loaded
    for rtstruct in rtstructs(twin):
        image = read_image(planning_ct(rtstruct))
        names = rtstruct_roi_names(rtstruct)
        gtv = read_rtstruct(rtstruct, image, lambda n: n.upper().startswith("GTV"))
        ctv = read_rtstruct(rtstruct, image, "CTV_70")["CTV_70"]
        expected = int(np.logical_or.reduce(list(gtv.values())).any(axis=(1, 2)).sum())
        assert int(ctv.any(axis=(1, 2)).sum()) > expected, "the CTV reaches more slices than the GTVs"
        patient = pseudonymize(rtstruct.parents[2].name, "ct_hnscc")
        assert int(items.targets[torch.as_tensor(items.patients == patient)].sum()) == expected, names


def test_domain_is_the_vendor_of_the_ct_the_rtstruct_references(twin, loaded):
    _, index, _ = loaded
    domain = dict(zip(index["patient"], index["domain"]))
    vendors = set()
    for rtstruct in rtstructs(twin):
        manufacturer = pydicom.dcmread(planning_ct(rtstruct)[0], stop_before_pixels=True).Manufacturer
        vendors.add(manufacturer)
        expected = "GE" if manufacturer == "GE MEDICAL SYSTEMS" else "Other"
        assert domain[pseudonym_of(rtstruct)] == expected
    assert vendors == {"GE MEDICAL SYSTEMS", "Philips", "SIEMENS"}
    # some patients also have a CT of the other domain's vendor in a second study
    studies = {p.parent.parent for p in headers(twin, "CT")}
    assert len(studies) > len(rtstructs(twin)) + 1


def pseudonym_of(path_in_patient: Path) -> str:
    folder = next(p for p in path_in_patient.parents if re.match(r"HNSCC-\d+-\d+$", p.name))
    return pseudonymize(folder.name, "ct_hnscc")


@pytest.mark.parametrize("ratio", [0.0, 2.0, 1000.0])
def test_negatives_per_positive_sets_the_tumour_free_slices(twin, ratio):
    _, index, items = load_all(twin, negatives_per_positive=ratio)
    patient = index["patient"].iloc[0]
    mine = items.targets[torch.as_tensor(items.patients == patient)]
    positives, negatives = int(mine.sum()), int((mine == 0).sum())
    if ratio == 1000.0:
        rtstruct = next(r for r in rtstructs(twin) if pseudonym_of(r) == patient)
        assert positives + negatives == len(planning_ct(rtstruct)), "capped at every slice of the CT"
    else:
        assert negatives == round(ratio * positives)


def test_roi_pattern_and_geometry_follow_the_parameters(twin, loaded):
    _, _, gtv = loaded
    _, _, ctv = load_all(twin, roi_pattern="^ctv", image_size=64, spacing_mm=3.0)
    assert ctv.images.shape[-2:] == (64, 64)
    assert int(ctv.targets.sum()) > int(gtv.targets.sum())
    with pytest.raises(ValidationError, match="regular expression"):
        HnsccCohort.Params(roi_pattern="GTV(")


def test_difficulty_shrinks_the_tumour_and_lowers_its_contrast(tmp_path):
    who = Identity("HNSCC-01-0001", "DOE^JOHN", "19500101")
    measured = {}
    for difficulty in (0.0, 1.0):
        settings = TwinSettings(patients=2, difficulty=difficulty)
        write_patient(tmp_path / str(difficulty), who, SCANNERS["GE"][0], settings, 0, True, None)
        rtstruct = rtstructs(tmp_path / str(difficulty))[0]
        image = read_image(planning_ct(rtstruct))
        gtv = np.logical_or.reduce(list(read_rtstruct(rtstruct, image, re.compile("^GTV", re.IGNORECASE)).values()))
        measured[difficulty] = (int(gtv.sum()), float(np.median(image.array[gtv])) - 40.0)
    (easy_size, easy_contrast), (hard_size, hard_contrast) = measured[0.0], measured[1.0]
    assert easy_size > 3 * hard_size
    assert easy_contrast > 25 and hard_contrast < 20


# --------------------------------------------------------------------------------------------
# Layout variants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat", "manifest"])
def test_patient_folders_directly_under_root_or_in_an_nbia_manifest_folder(copy, twin, layout):
    expected = cohort(twin).index()
    target = copy if layout == "flat" else copy / "manifest-1600000000" / "HNSCC"
    target.mkdir(parents=True, exist_ok=True)
    for patient in list((copy / "HNSCC").iterdir()):
        patient.rename(target / patient.name)
    if layout == "flat":
        (copy / "HNSCC").rmdir()
    HnsccCohort.check_root(copy)
    assert cohort(copy).index().equals(expected)


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------


def test_planted_names_ids_and_birth_dates_never_leave_the_loader(copy):
    planted = set()
    for header in headers(copy, "CT").values():
        planted |= {str(header.PatientName), header.PatientID, header.PatientBirthDate}
    assert len(planted) > 2 * PATIENTS
    first_ct = min(headers(copy, "CT"))
    first_ct.write_bytes(first_ct.read_bytes()[:2000])
    c, index, items = load_all(copy, on_unreadable="skip")
    assert c.unreadable, "the damaged file is recorded"
    shown = " ".join(
        [
            index.to_csv(),
            *items.patients,
            *items.domains,
            *c.excluded,
            *c.excluded.values(),
            *(f"{r.patient} {r.file} {r.reason}" for r in c.unreadable),
        ]
    )
    for secret in planted:
        assert secret not in shown
    assert all(p.startswith("p") and len(p) == 17 for p in index["patient"])


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def first_rtstruct(root: Path) -> Path:
    return rtstructs(root)[0]


def test_a_patient_without_gtv_rois_is_excluded_and_counted(copy):
    rtstruct = first_rtstruct(copy)
    rewrite([rtstruct], lambda ds: [setattr(roi, "ROIName", "Tumour bed") for roi in ds.StructureSetROISequence])
    c, index, items = load_all(copy)
    assert pseudonym_of(rtstruct) not in set(index["patient"])
    assert c.exclusion_counts() == {"no RTSTRUCT": 1, "no ROI matching the GTV pattern": 1}
    assert len(index) == 2 * PATIENTS - 1 and set(items.patients) == set(index["patient"])


# Damage done to one patient, given its RTSTRUCT; each returns what the error must name.


def break_frame_of_reference(rtstruct: Path) -> str:
    def change(ds):
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = "1.2.3.4.5"
        ds.FrameOfReferenceUID = "1.2.3.4.5"

    rewrite([rtstruct], change)
    return rtstruct.name


def cut_ct_below_contours(rtstruct: Path) -> str:
    ct = sorted(planning_ct(rtstruct), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    for path in ct[len(ct) // 2 :]:
        path.unlink()
    return rtstruct.name


def truncate_ct_slice(rtstruct: Path) -> str:
    path = planning_ct(rtstruct)[3]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path.name


def truncate_ct_header(rtstruct: Path) -> str:
    path = planning_ct(rtstruct)[3]
    path.write_bytes(path.read_bytes()[:100])
    return path.name


def drop_vendor_tag(rtstruct: Path) -> str:
    ct = planning_ct(rtstruct)
    rewrite(ct, lambda ds: delattr(ds, "Manufacturer"))
    return ct[0].parent.name


def of_first_patient(damage):
    """``damage`` applied to the first contoured patient of a twin copy."""

    def damage_copy(root: Path) -> str:
        return damage(first_rtstruct(root))

    damage_copy.__name__ = damage.__name__
    return damage_copy


def no_patients(root: Path) -> str:
    shutil.rmtree(root / "HNSCC")
    return "no patient folders"


@pytest.mark.parametrize(
    "damage, says",
    [
        (of_first_patient(break_frame_of_reference), "frame of reference"),
        (of_first_patient(cut_ct_below_contours), "outside"),
        (of_first_patient(truncate_ct_slice), "truncated"),
        (of_first_patient(truncate_ct_header), "truncated"),
        (of_first_patient(drop_vendor_tag), "Manufacturer"),
        (no_patients, "cancerimagingarchive"),
    ],
)
def test_malformed_input_is_a_one_line_data_error_naming_the_file(copy, damage, says):
    culprit = damage(copy)
    with pytest.raises(DataError) as caught:
        load_all(copy)
    message = str(caught.value)
    assert culprit in message and says in message
    assert "\n" not in message


@pytest.mark.parametrize("damage", [truncate_ct_slice, truncate_ct_header])
def test_unreadable_files_are_recorded_and_skipped_when_asked(copy, damage):
    rtstruct = first_rtstruct(copy)
    culprit = planning_ct(rtstruct)[3]
    assert damage(rtstruct) == culprit.name
    c, _, items = load_all(copy, on_unreadable="skip")
    [record] = c.unreadable
    assert record.file == c.file_reference(culprit, record.patient)
    assert record.reason and culprit.name not in record.reason
    assert record.patient not in set(items.patients)
    # a header cut is met while indexing (the patient has no readable contoured CT), pixels cut while loading
    header_cut = damage is truncate_ct_header
    assert (c.excluded.get(record.patient) == "unreadable file in its CT or RTSTRUCT series") == header_cut
    assert len(set(items.patients)) == 2 * PATIENTS - 1


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    HnsccCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder.*cancerimagingarchive"):
        HnsccCohort.check_root(tmp_path / "nowhere")
    shutil.rmtree(copy / "HNSCC")
    with pytest.raises(DataError, match=r"no patient folders .*HNSCC/"):
        HnsccCohort.check_root(copy)


def test_unreadable_error_type_is_kept(copy):
    truncate_ct_slice(first_rtstruct(copy))
    with pytest.raises(UnreadableFile):
        load_all(copy)
