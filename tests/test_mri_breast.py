"""The mri_breast cohort: its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from cohort_checks import assert_one_line_data_error, index_and_items, private_copy

from harmonia.api import TwinSettings
from harmonia.errors import DataError, UnreadableFile
from harmonia.io import find_series, read_image
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.mri_breast import MriBreastCohort
from harmonia_plugins.cohorts.mri_breast_twin import draw_breasts

PATIENTS = 2
CLINICAL, BOXES = "Clinical_and_Other_Features.xlsx", "Annotation_Boxes.xlsx"
T_STAGE = "Staging(Tumor Size)# [T]"
POST_WORDS = ("Ph1/", "1st pass")


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mri_breast")
    MriBreastCohort.write_twin(root, TwinSettings(patients=PATIENTS, seed=0))
    return root


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "mri_breast")


def cohort(root: Path, **params) -> MriBreastCohort:
    return MriBreastCohort(MriBreastCohort.Params(**params), root)


def load_all(root: Path, **params):
    return index_and_items(cohort(root, **params))


def clinical(root: Path) -> pd.DataFrame:
    """The twin's clinical sheet read the way its three header rows say: names on row 2, a legend on row 3."""
    return pd.read_excel(root / CLINICAL, header=1).iloc[1:].reset_index(drop=True)


def boxes(root: Path) -> pd.DataFrame:
    return pd.read_excel(root / BOXES).set_index("Patient ID")


def patient_folders(root: Path) -> dict[str, Path]:
    return {p.name: p for p in (root / "Duke-Breast-Cancer-MRI").iterdir()}


def series_of(folder: Path, post: bool):
    """The pre-contrast (or post-contrast) series of a twin patient, told apart by the twin's own descriptions."""
    return next(s for s in find_series(folder) if any(w in s.description for w in POST_WORDS) == post)


def expected_roi(root: Path, patient: str, post: bool = False) -> np.ndarray:
    """The 5 x 47 x 47 block at the sheet's box centre, slices counted by InstanceNumber, computed independently."""
    series = series_of(patient_folders(root)[patient], post)
    image = read_image(list(series.files))
    numbers = {str(h.SOPInstanceUID): int(h.InstanceNumber) for h in map(pydicom.dcmread, series.files)}
    by_instance = sorted(range(len(image.array)), key=lambda k: numbers[image.sop_instance_uids[k]])
    box = boxes(root).loc[patient]
    # a centre halfway between two voxels goes to the later one
    z, y, x = (
        int(np.floor(c + 0.5))
        for c in (
            (by_instance[box["Start Slice"] - 1] + by_instance[box["End Slice"] - 1]) / 2,
            (box["Start Row"] + box["End Row"]) / 2 - 1,
            (box["Start Column"] + box["End Column"]) / 2 - 1,
        )
    )
    # zero padding where the block leaves the image (tumours near the skin)
    padded = np.pad(image.array, ((2, 2), (23, 23), (23, 23)))
    return padded[z : z + 5, y : y + 47, x : x + 47]


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_both_vendors_and_the_sheets_labels(twin):
    index, items = load_all(twin)
    assert list(index.columns) == ["patient", "domain", "stratum"]
    assert index["domain"].value_counts().to_dict() == {"GE": PATIENTS, "Siemens": PATIENTS}
    sheet = clinical(twin).set_index("Patient ID")
    # the twin's extra patient has no T stage: listed in both sheets, with images, but not indexed
    assert len(sheet) == len(patient_folders(twin)) == 2 * PATIENTS + 1
    staged = sheet[sheet[T_STAGE].notna()]
    expected = {pseudonymize(p, "mri_breast"): int(t >= 3) for p, t in staged[T_STAGE].items()}
    assert set(index["patient"]) == set(expected)
    assert dict(zip(items.patients, items.targets.tolist())) == expected
    assert set(expected.values()) == {0, 1}
    assert dict(zip(index["patient"], index["stratum"])) == {p: ("T>2" if y else "T<=2") for p, y in expected.items()}
    assert items.images.shape == (2 * PATIENTS, 1, 5, 47, 47)
    assert items.images.dtype == torch.float32 and items.targets.dtype == torch.int64
    assert set(items.domains) == {"GE", "Siemens"}
    assert items.images.min() >= 0 and 100 < items.images.max() < 5000, "native MR units, not z-scored"


def test_items_are_the_pre_contrast_roi_at_the_box_centre_with_slices_counted_by_instance_number(twin):
    _, items = load_all(twin)
    descending = 0
    for patient in staged_patients(twin):
        item = items.of_patients([pseudonymize(patient, "mri_breast")]).images[0, 0].numpy()
        np.testing.assert_array_equal(item, expected_roi(twin, patient))
        assert not np.array_equal(item, expected_roi(twin, patient, post=True))
        series = series_of(patient_folders(twin)[patient], post=False)
        descending += pydicom.dcmread(series.files[0]).InstanceNumber != 1
    # the twin numbers Siemens instances against the slice position: the convention is really exercised
    assert descending == PATIENTS


def staged_patients(root: Path) -> list[str]:
    sheet = clinical(root)
    return list(sheet.loc[sheet[T_STAGE].notna(), "Patient ID"])


def test_a_one_row_header_and_spelling_variants_read_the_same(copy, twin):
    table = clinical(copy).rename(columns={T_STAGE: "  staging (tumor size)#[t] ", "Patient ID": "Patient ID "})
    table.to_excel(copy / CLINICAL, index=False)
    boxes(copy).reset_index().to_csv(copy / "Annotation_Boxes.csv", index=False)
    (copy / BOXES).unlink()
    assert cohort(copy).index().equals(cohort(twin).index())


def test_patient_folders_directly_under_the_root_and_sheets_in_the_collection_folder(copy, twin):
    collection = copy / "Duke-Breast-Cancer-MRI"
    for folder in list(collection.iterdir()):
        folder.rename(copy / folder.name)
    for sheet in (CLINICAL, BOXES):
        (copy / sheet).rename(collection / sheet)
    assert cohort(copy).index().equals(cohort(twin).index())


def test_series_selection_follows_the_parameters(copy):
    patient = staged_patients(copy)[0]
    pick_post = {"pre_contrast": [r"ph1/|1st pass"], "post_contrast": []}
    c = cohort(copy, **pick_post)
    item = c.load([pseudonymize(patient, "mri_breast")]).images[0, 0].numpy()
    np.testing.assert_array_equal(item, expected_roi(copy, patient, post=True))
    with pytest.raises(DataError, match=r"no pre-contrast series .*series here: '"):
        cohort(copy, pre_contrast=["no such series"]).index()
    with pytest.raises(DataError, match="2 series match"):
        cohort(copy, pre_contrast=["dyn|vibrant"], post_contrast=[]).index()


def test_tumour_size_sets_the_stage_and_difficulty_narrows_the_gap():
    sheet_sizes = {
        d: [[draw_breasts(np.random.default_rng(s), large, d).diameter for s in range(200)] for large in (False, True)]
        for d in (0.0, 1.0)
    }
    gaps = {d: min(big) - max(small) for d, (small, big) in sheet_sizes.items()}
    assert gaps[0.0] > 15 and 0 < gaps[1.0] < 3
    for s in range(50):
        small, big = (
            draw_breasts(np.random.default_rng(s), False, 0.5),
            draw_breasts(np.random.default_rng(s), True, 0.5),
        )
        assert small.stage == (1 if small.diameter <= 8 else 2) and big.stage in (3, 4)


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def first_pre_series(root: Path):
    return series_of(patient_folders(root)[staged_patients(root)[0]], post=False)


def drop_t_column(root: Path) -> str:
    clinical(root).drop(columns=T_STAGE).to_excel(root / CLINICAL, index=False)
    return CLINICAL


def drop_box_column(root: Path) -> str:
    boxes(root).drop(columns="End Slice").to_excel(root / BOXES)
    return BOXES


def bad_t_stage(root: Path) -> str:
    table = clinical(root)
    table.loc[table[T_STAGE].notna().idxmax(), T_STAGE] = "T2b?"
    table.to_excel(root / CLINICAL, index=False)
    return CLINICAL


def box_outside_image(root: Path) -> str:
    table = boxes(root)
    table.loc[staged_patients(root)[0], "End Row"] = 999
    table.to_excel(root / BOXES)
    return BOXES


def box_reversed(root: Path) -> str:
    table, patient = boxes(root), staged_patients(root)[0]
    table.loc[patient, "Start Column"] = table.loc[patient, "End Column"] + 1
    table.to_excel(root / BOXES)
    return BOXES


def patient_without_box(root: Path) -> str:
    patient = staged_patients(root)[0]
    boxes(root).drop(index=patient).to_excel(root / BOXES)
    return str(patient_folders(root)[patient])


def vendor_tag_absent(root: Path) -> str:
    series = first_pre_series(root)
    for path in series.files:
        dataset = pydicom.dcmread(path)
        del dataset.Manufacturer
        dataset.save_as(path)
    return str(series.files[0])


def truncated_dicom(root: Path) -> str:
    path = first_pre_series(root).files[3]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def no_pre_contrast_series(root: Path) -> str:
    series = first_pre_series(root)
    for path in series.files:
        dataset = pydicom.dcmread(path)
        dataset.SeriesDescription = "ax t1 bilateral"
        dataset.save_as(path)
    return str(patient_folders(root)[staged_patients(root)[0]])


@pytest.mark.parametrize(
    "damage",
    [
        drop_t_column,
        drop_box_column,
        bad_t_stage,
        box_outside_image,
        box_reversed,
        patient_without_box,
        vendor_tag_absent,
        truncated_dicom,
        no_pre_contrast_series,
    ],
)
def test_malformed_input_is_a_one_line_data_error_naming_the_file(copy, damage):
    assert_one_line_data_error(damage(copy), lambda: load_all(copy))


def test_unreadable_files_are_skipped_and_recorded_when_asked(copy):
    patients = staged_patients(copy)
    truncated = Path(truncated_dicom(copy))
    header_less = series_of(patient_folders(copy)[patients[1]], post=True).files[0]
    header_less.write_bytes(header_less.read_bytes()[:100])
    with pytest.raises(UnreadableFile):
        load_all(copy)
    c = cohort(copy, on_unreadable="skip")
    index = c.index()
    # a file whose header cannot be read drops its patient from the index; a truncated image drops its items
    assert len(index) == 2 * PATIENTS - 1
    items = c.load(list(index["patient"]))
    assert len(items) == 2 * PATIENTS - 2
    assert [r.patient for r in c.unreadable] == [pseudonymize(p, "mri_breast") for p in (patients[1], patients[0])]
    assert c.unreadable[1].file == c.file_reference(truncated, c.unreadable[1].patient)
    assert "truncated" in c.unreadable[1].reason
    assert not any(p in str(c.unreadable) for p in patients)


# --------------------------------------------------------------------------------------------
# Privacy and the data folder
# --------------------------------------------------------------------------------------------


def test_planted_identifiers_never_leave_the_loader(twin):
    planted = set(patient_folders(twin))
    for path in twin.rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        planted |= {str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate)}
    assert len(planted) > 2 * PATIENTS + 1 and any("^" in p for p in planted)
    index, items = load_all(twin)
    shown = index.to_csv() + " ".join(items.patients) + " ".join(items.domains)
    for secret in planted:
        assert secret not in shown


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    MriBreastCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder"):
        MriBreastCohort.check_root(tmp_path / "nowhere")
    (copy / BOXES).unlink()
    with pytest.raises(DataError, match=r"no Annotation_Boxes\.xlsx .*TCIA"):
        MriBreastCohort.check_root(copy)
    shutil.rmtree(copy / "Duke-Breast-Cancer-MRI")
    (copy / "Annotation_Boxes.csv").write_text("Patient ID,Start Row\n")
    with pytest.raises(DataError, match="no Breast_MRI_NNN patient folders"):
        MriBreastCohort.check_root(copy)
