"""The ct_oropharyngeal cohort: its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from cohort_checks import index_and_items, private_copy
from test_ct_hnscc import (
    break_frame_of_reference,
    cut_ct_below_contours,
    drop_vendor_tag,
    planning_ct,
    rewrite,
    truncate_ct_slice,
)

from harmonia.api import TwinSettings
from harmonia.errors import DataError
from harmonia.io import MedicalImage, read_image, read_rtstruct
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.ct_oropharyngeal import (
    PRIMARY_GTV,
    OropharyngealCohort,
    cube_around,
    hpv_label,
)

PATIENTS = 3
SHEET = "OPC-Radiomics-Clinical-Data.xlsx"
SMALL = {"roi_size": 24, "spacing_mm": 2.0}


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("opc")
    OropharyngealCohort.write_twin(root, TwinSettings(patients=PATIENTS))
    return root


def cohort(root: Path, **params) -> OropharyngealCohort:
    return OropharyngealCohort(OropharyngealCohort.Params(**{**SMALL, **params}), root)


def load_all(root: Path, **params):
    c = cohort(root, **params)
    return (c, *index_and_items(c))


@pytest.fixture(scope="module")
def loaded(twin):
    """The twin read with the test geometry: the cohort, its index and its items."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARMONIA_SALT", "test-salt")
        return load_all(twin)


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "opc")


def sheet(root: Path) -> pd.DataFrame:
    return pd.read_excel(root / SHEET, dtype=str, keep_default_na=False)


def patient_folders(root: Path) -> list[Path]:
    return sorted((root / "OPC-Radiomics").iterdir())


def ct_files(patient: Path) -> list[Path]:
    return sorted(p for p in patient.rglob("*.dcm") if p.name != "1-1.dcm")


def labelled(root: Path) -> list[Path]:
    """The patient folders whose HPV status the sheet gives."""
    labels = sheet(root).set_index("Trial PatientID")["HPV P16 status (IHC)"]
    return [p for p in patient_folders(root) if hpv_label(labels[p.name]) is not None]


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_both_vendors_both_labels_cubes_in_hu(loaded, twin):
    c, index, items = loaded
    assert index["domain"].value_counts().to_dict() == {"GE": PATIENTS, "Toshiba": PATIENTS}
    assert set(index["stratum"]) == {"HPV negative", "HPV positive"}
    assert c.exclusion_counts() == {"HPV/p16 status unknown": 1, "listed in the clinical sheet, no images": 1}
    assert items.images.shape == (2 * PATIENTS, 1, 24, 24, 24) and items.images.dtype == torch.float32
    assert items.targets.dtype == torch.int64 and list(items.patients) == list(index["patient"])
    x = items.images
    assert torch.isfinite(x).all() and -1100 < float(x.min()) < -900 and 500 < float(x.max()) < 1000


def test_labels_come_from_the_sheets_hpv_column(loaded, twin):
    _, index, items = loaded
    table = sheet(twin)
    expected = {
        pseudonymize(pid, "ct_oropharyngeal"): hpv_label(v)
        for pid, v in zip(table["Trial PatientID"], table["HPV P16 status (IHC)"])
    }
    assert {p: int(t) for p, t in zip(items.patients, items.targets)} == {p: expected[p] for p in items.patients}
    assert dict(zip(index["patient"], index["stratum"])) == {
        p: ("HPV negative", "HPV positive")[expected[p]] for p in index["patient"]
    }


def primary_and_node(patient: Path) -> tuple[np.ndarray, np.ndarray, object]:
    """The primary and nodal GTV masks of a patient, told apart by the twin's names, and its CT."""
    rtstruct = next(patient.rglob("1-1.dcm"))
    image = read_image(ct_files(patient))
    masks = read_rtstruct(rtstruct, image, re.compile("^GTV", re.IGNORECASE))
    node = next(k for k in masks if re.search(r"n$|_N|LN", k))
    primary = next(k for k in masks if k != node)
    return masks[primary], masks[node], image


def test_cube_is_centred_on_the_primary_gtv_not_the_node(twin, loaded):
    _, index, items = loaded
    _, _, union = load_all(twin, roi_pattern="^GTV")
    for patient in patient_folders(twin):
        pseudonym = pseudonymize(patient.name, "ct_oropharyngeal")
        if pseudonym not in set(index["patient"]):
            continue
        cube = items.images[list(items.patients).index(pseudonym), 0]
        centre = float(cube[11:13, 11:13, 11:13].mean())
        assert 45 < centre < 110, "the primary tumour (70 HU) sits at the centre"
        assert not torch.equal(cube, union.images[list(union.patients).index(pseudonym), 0])


def test_hpv_positive_primaries_are_smaller_in_the_twin(twin):
    table = sheet(twin).set_index("Trial PatientID")
    volumes = {0: [], 1: []}
    for patient in patient_folders(twin):
        label = hpv_label(table.loc[patient.name, "HPV P16 status (IHC)"])
        if label is not None:
            primary, _, image = primary_and_node(patient)
            volumes[label].append(primary.sum() * np.prod(image.spacing))
    assert max(volumes[1]) < min(volumes[0])


def test_native_voxels_when_no_spacing_is_given(twin, loaded):
    _, index, _ = loaded
    _, _, native = load_all(twin, spacing_mm=None, roi_size=16)
    assert native.images.shape == (len(index), 1, 16, 16, 16)
    patient = next(p for p in patient_folders(twin) if pseudonymize(p.name, "ct_oropharyngeal") == native.patients[0])
    values = set(np.unique(read_image(ct_files(patient)).array).tolist())
    assert set(np.unique(native.images[0].numpy()).tolist()) <= values, "a crop, not a resampling"


def test_cube_resampling_is_exact_on_a_linear_ramp():
    z, y, x = np.mgrid[:40, :60, :70].astype(np.float32)
    image = MedicalImage(array=3 * z + 2 * y + x, spacing=(2.5, 0.8, 0.7), path=Path("ramp"))
    centre = np.array([20.3, 30.6, 35.2])
    cube = cube_around(image, centre, 9, 1.0).astype(float)
    expected = 3 * centre[0] + 2 * centre[1] + centre[2]
    assert cube[4, 4, 4] == pytest.approx(expected, abs=1e-3)
    # one output voxel is 1 mm: 1/2.5 slice, 1/0.8 row, 1/0.7 column
    assert cube[5, 4, 4] - cube[4, 4, 4] == pytest.approx(3 / 2.5, abs=1e-3)
    assert cube[4, 5, 4] - cube[4, 4, 4] == pytest.approx(2 / 0.8, abs=1e-3)
    assert cube[4, 4, 5] - cube[4, 4, 4] == pytest.approx(1 / 0.7, abs=1e-3)


@pytest.mark.parametrize(
    "cell, label",
    [
        ("Positive", 1),
        ("  positive", 1),
        ("Positive -Strong", 1),
        ("Positive -focal", 1),
        ("Yes", 1),
        ("+", 1),
        ("1.0", 1),
        ("Negative", 0),
        ("  Negative", 0),
        ("No", 0),
        ("-", 0),
        ("0", 0),
        ("Unknown", None),
        ("", None),
        (float("nan"), None),
        ("Not tested", None),
        ("N/A", None),
    ],
)
def test_hpv_cells_are_read_in_every_known_spelling(cell, label):
    assert hpv_label(cell) == label


# --------------------------------------------------------------------------------------------
# Sheet and layout variants
# --------------------------------------------------------------------------------------------


def as_csv_with_other_spellings(root: Path) -> None:
    table = sheet(root).rename(columns={"Trial PatientID": "Patient ID", "HPV P16 status (IHC)": "HPV/p16 status"})
    table["Patient ID"] = table["Patient ID"].str.replace("OPC-0+", "opc-", regex=True)
    (root / SHEET).unlink()
    table.to_csv(root / "OPC-Radiomics" / "clinical_data.csv", index=False)


def with_title_rows(root: Path) -> None:
    table = sheet(root)
    rows = [
        ["OPC-Radiomics clinical data"] + [""] * (table.shape[1] - 1),
        list(table.columns),
        *table.to_numpy().tolist(),
    ]
    (root / SHEET).unlink()
    pd.DataFrame(rows).to_excel(root / "Clinical data list_OPC (606) v3.xlsx", index=False, header=False)


def in_nbia_manifest_folder(root: Path) -> None:
    (root / "manifest-1600000000").mkdir()
    (root / "OPC-Radiomics").rename(root / "manifest-1600000000" / "OPC-Radiomics")


@pytest.mark.parametrize("variant", [as_csv_with_other_spellings, with_title_rows, in_nbia_manifest_folder])
def test_sheet_and_layout_variants_give_the_same_index(copy, loaded, variant):
    variant(copy)
    OropharyngealCohort.check_root(copy)
    assert cohort(copy).index().equals(loaded[1])


def test_vendor_grouping_canon_and_other_vendors(copy, loaded):
    toshiba = [p for p in labelled(copy) if pydicom.dcmread(ct_files(p)[0]).Manufacturer == "TOSHIBA"]
    rewrite(ct_files(toshiba[0]), lambda ds: setattr(ds, "Manufacturer", "Canon Medical Systems"))
    rewrite(ct_files(toshiba[1]), lambda ds: setattr(ds, "Manufacturer", "SIEMENS"))
    c = cohort(copy)
    assert c.index()["domain"].value_counts().to_dict() == {"GE": PATIENTS, "Toshiba": PATIENTS - 1}
    assert (
        c.excluded[pseudonymize(toshiba[1].name, "ct_oropharyngeal")]
        == "scanner vendor 'Siemens' is neither GE nor Toshiba"
    )
    strict = cohort(copy, canon_as_toshiba=False)
    assert len(strict.index()) == 2 * PATIENTS - 2


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------


def test_planted_names_ids_and_birth_dates_never_leave_the_loader(twin, loaded):
    c, index, items = loaded
    planted = set(sheet(twin)["Trial PatientID"])
    for patient in patient_folders(twin):
        header = pydicom.dcmread(ct_files(patient)[0], stop_before_pixels=True)
        planted |= {str(header.PatientName), header.PatientID, header.PatientBirthDate}
    assert len(planted) > 2 * PATIENTS
    shown = " ".join([index.to_csv(), *items.patients, *items.domains, *c.excluded, *c.excluded.values()])
    for secret in planted:
        assert secret not in shown


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def first_labelled(root: Path) -> Path:
    return labelled(root)[0]


def drop_column(column: str):
    def damage(root: Path) -> str:
        sheet(root).drop(columns=column).to_excel(root / SHEET, index=False)
        return SHEET

    damage.__name__ = f"drop_{column.split()[0]}"
    return damage


def unreadable_status(root: Path) -> str:
    table = sheet(root)
    table.loc[0, "HPV P16 status (IHC)"] = "weakly"
    table.to_excel(root / SHEET, index=False)
    return f"{SHEET} line 2"


def patient_listed_twice(root: Path) -> str:
    table = sheet(root)
    pd.concat([table, table.iloc[[0]]]).to_excel(root / SHEET, index=False)
    return "listed a second time"


def patient_not_in_sheet(root: Path) -> str:
    patient = first_labelled(root)
    table = sheet(root)
    table[table["Trial PatientID"] != patient.name].to_excel(root / SHEET, index=False)
    return patient.name


def two_sheets(root: Path) -> str:
    shutil.copy(root / SHEET, root / "clinical_backup.csv")
    return "clinical_backup.csv"


def of_first_labelled(damage, says: str | None = None):
    """A ct_hnscc patient damage done to the first labelled patient; the error must name ``says`` or the culprit."""

    def damage_copy(root: Path) -> str:
        culprit = damage(next(first_labelled(root).rglob("1-1.dcm")))
        return says or culprit

    damage_copy.__name__ = damage.__name__
    return damage_copy


@pytest.mark.parametrize(
    "damage",
    [
        drop_column("HPV P16 status (IHC)"),
        drop_column("Trial PatientID"),
        unreadable_status,
        patient_listed_twice,
        patient_not_in_sheet,
        two_sheets,
        of_first_labelled(break_frame_of_reference, "frame of reference"),
        of_first_labelled(cut_ct_below_contours, "outside"),
        of_first_labelled(truncate_ct_slice),
        of_first_labelled(drop_vendor_tag, "Manufacturer (0008,0070)"),
    ],
)
def test_malformed_input_is_a_one_line_data_error_saying_what_and_where(copy, damage):
    culprit = damage(copy)
    with pytest.raises(DataError) as caught:
        load_all(copy)
    message = str(caught.value)
    assert culprit in message and str(copy) in message
    assert "\n" not in message


def test_missing_hpv_column_names_the_expected_spellings_and_can_be_named(copy):
    table = sheet(copy).rename(columns={"HPV P16 status (IHC)": "Tumour virus"})
    table.to_excel(copy / SHEET, index=False)
    with pytest.raises(DataError, match=r"no HPV/p16 status column \(one of \['HPV P16 status \(IHC\)', 'HPV'"):
        cohort(copy).index()
    assert len(cohort(copy, hpv_column="Tumour virus").index()) == 2 * PATIENTS


def test_missing_rtstruct_or_gtv_excludes_and_counts_the_patient(copy):
    no_rtstruct, no_gtv = labelled(copy)[:2]
    shutil.rmtree(next(no_rtstruct.rglob("1-1.dcm")).parent)
    rtstruct = next(no_gtv.rglob("1-1.dcm"))
    rewrite([rtstruct], lambda ds: [setattr(r, "ROIName", f"Tumor_{r.ROINumber}") for r in ds.StructureSetROISequence])
    c, index, items = load_all(copy)
    assert c.excluded[pseudonymize(no_rtstruct.name, "ct_oropharyngeal")] == "no RTSTRUCT"
    assert c.excluded[pseudonymize(no_gtv.name, "ct_oropharyngeal")] == "no ROI matching the GTV pattern"
    assert len(items) == len(index) == 2 * PATIENTS - 2


def test_truncated_slice_is_recorded_and_skipped_when_asked(copy):
    rtstruct = next(first_labelled(copy).rglob("1-1.dcm"))
    culprit = planning_ct(rtstruct)[3]
    truncate_ct_slice(rtstruct)
    c, index, items = load_all(copy, on_unreadable="skip")
    assert [r.file for r in c.unreadable] == [c.file_reference(culprit, c.unreadable[0].patient)]
    assert len(items) == len(index) - 1 and c.unreadable[0].patient not in set(items.patients)


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    OropharyngealCohort.check_root(copy)
    (copy / SHEET).unlink()
    with pytest.raises(DataError, match=r"no clinical spreadsheet .*opc-radiomics"):
        OropharyngealCohort.check_root(copy)
    shutil.rmtree(copy / "OPC-Radiomics")
    with pytest.raises(DataError, match=r"no patient folders .*OPC-Radiomics/"):
        OropharyngealCohort.check_root(copy)


def test_default_primary_pattern_excludes_nodal_gtvs():
    primary = re.compile(PRIMARY_GTV, re.IGNORECASE)
    assert all(primary.search(n) for n in ["GTV", "GTVp", "GTV_P", "GTV-1", "GTV primary", "gtv nasopharynx"])
    assert not any(primary.search(n) for n in ["GTVn", "GTV_N", "GTV-N2", "GTV-LN1", "GTV node", "GTVnodal", "CTV"])
