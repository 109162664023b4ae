"""The xray_chest cohort: its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import torch
from cohort_checks import assert_one_line_data_error, index_and_items, private_copy
from pydantic import ValidationError

from harmonia.api import TwinSettings
from harmonia.errors import DataError
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.xray_chest import XrayChestCohort

PATIENTS = 6
SHEET = "master_spreadsheet_update.csv"
SMALL = {"image_size": 64}


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    """Two twins of the same phantoms: with scanner signatures (strength 1) and without (strength 0)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARMONIA_CACHE", str(tmp_path_factory.mktemp("cache")))
        roots = {}
        for name, strength in (("signed", 1.0), ("neutral", 0.0)):
            roots[name] = tmp_path_factory.mktemp(f"brax-{name}")
            XrayChestCohort.write_twin(roots[name], TwinSettings(patients=PATIENTS, strength=strength))
        return roots


@pytest.fixture
def twin(twins) -> Path:
    return twins["signed"]


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "brax")


def cohort(root: Path, **params) -> XrayChestCohort:
    return XrayChestCohort(XrayChestCohort.Params(**{**SMALL, **params}), root)


def load_all(root: Path, **params):
    return index_and_items(cohort(root, **params))


def sheet(root: Path, name: str = SHEET) -> pd.DataFrame:
    return pd.read_csv(root / name, index_col=0, dtype={"PatientID": str})


def study_rows(root: Path) -> pd.DataFrame:
    """Rows of the two study codes, as the loader should count them by default (uncertain left out)."""
    table = sheet(root)
    return table[table["Manufacturer"].isin([3, 5]) & (table["Cardiomegaly"] != -1)]


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_both_codes_and_classes(twin):
    index, items = load_all(twin)
    rows = study_rows(twin)
    assert list(index.columns) == ["patient", "domain", "stratum"]
    expected = rows.groupby("Manufacturer")["PatientID"].nunique()
    assert index["domain"].value_counts().to_dict() == {"3": expected[3], "5": expected[5]}
    assert set(index["stratum"]) == {"cardiomegaly", "none"}
    assert len(items) == len(rows)
    assert items.targets.tolist() == [int(v == 1) for v in label_order(twin, index, rows)]
    assert items.images.dtype == torch.float32 and items.images.shape[1:] == (1, 64, 64)
    assert set(items.domains) == {"3", "5"} and set(items.patients) == set(index["patient"])
    assert items.images.min() >= 0 and 100 < items.images.max() <= 255, "8-bit PNG values, not z-scored"


def label_order(root: Path, index: pd.DataFrame, rows: pd.DataFrame) -> list[float]:
    """The rows' Cardiomegaly cells in item order: patients as indexed, each patient's rows in sheet order."""
    of = {pseudonymize(pid, "xray_chest"): group for pid, group in rows.groupby("PatientID", sort=False)}
    return [v for p in index["patient"] for v in of[p]["Cardiomegaly"].fillna(0)]


@pytest.mark.parametrize(
    "params, change",
    [({"uncertain": "positive"}, {-1.0: 1}), ({"uncertain": "negative"}, {-1.0: 0}), ({"unmentioned": "exclude"}, {})],
)
def test_uncertain_and_unmentioned_labels_follow_the_parameters(twin, params, change):
    table = sheet(twin)
    table = table[table["Manufacturer"].isin([3, 5])]
    cells = table["Cardiomegaly"]
    assert {1.0, 0.0, -1.0} <= set(cells.dropna()) and cells.isna().any()
    _, items = load_all(twin, **params)
    kept = cells.isin([1.0, 0.0, *change]) | (cells.isna() & ("unmentioned" not in params))
    assert len(items) == int(kept.sum())
    positives = (cells == 1).sum() + sum((cells == k).sum() for k, v in change.items() if v == 1)
    assert int(items.targets.sum()) == positives


def test_hearts_are_wider_in_cardiomegaly(twin):
    _, items = load_all(twin)
    x = items.images[:, 0]
    z = (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True)
    # the bright fraction of the rows just above the diaphragm: heart and mediastinum against the lungs
    bright = (z[:, 34:42, :] > 0.3).float().mean(dim=(1, 2))
    positive = items.targets.bool()
    assert bright[positive].mean() > bright[~positive].mean() + 0.05


def test_dicom_and_png_give_the_same_items(twin):
    _, png = load_all(twin)
    _, dicom = load_all(twin, image_format="dicom")
    assert torch.equal(png.targets, dicom.targets) and list(png.patients) == list(dicom.patients)
    assert dicom.images.max() > 1000, "12-bit DICOM values in native units"
    a, b = png.images.flatten(1), dicom.images.flatten(1)
    assert all(np.corrcoef(u, v)[0, 1] > 0.99 for u, v in zip(a.numpy(), b.numpy()))


def test_dicom_is_read_when_the_sheet_has_no_png_paths(copy, twin):
    sheet(copy).drop(columns="PngPath").to_csv(copy / "master_spreadsheet.csv")
    (copy / SHEET).unlink()
    XrayChestCohort.check_root(copy)
    _, items = load_all(copy)
    assert items.images.max() > 1000 and len(items) == len(study_rows(twin))
    sheet(twin).drop(columns="DicomPath").to_csv(copy / "master_spreadsheet.csv")
    with pytest.raises(DataError, match="image_format is dicom but the spreadsheet has no DicomPath"):
        load_all(copy, image_format="dicom")


def test_images_are_padded_to_a_square_keeping_their_aspect(twin):
    table = sheet(twin)
    assert (table["Rows"] > table["Columns"]).all(), "the twin's radiographs are portrait"
    _, items = load_all(twin)
    assert (items.images[:, 0, :, 0] == 0).all() and (items.images[:, 0, :, -1] == 0).all()
    assert (items.images[:, 0, 0, 10:-10] > 0).any(dim=1).all()


def test_sixteen_bit_pngs_are_read_in_their_own_units(copy):
    table = study_rows(copy)
    path = copy / table["PngPath"].iloc[0]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    sitk.WriteImage(sitk.GetImageFromArray(image.astype(np.uint16) * 257), str(path))
    c = cohort(copy)
    patient = pseudonymize(table["PatientID"].iloc[0], "xray_chest")
    assert c.load([patient]).images[0].max() > 255 * 100


# --------------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------------


def skewness(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the skewness of its intensities (a vendor's processing tone curve changes the shape of the
    histogram, which z-scoring does not undo), and the image's domain."""
    _, items = load_all(root)
    x = items.images[:, 0].flatten(1)
    z = (x - x.mean(dim=1, keepdim=True)) / x.std(dim=1, keepdim=True)
    return (z**3).mean(dim=1).numpy(), items.domains


def test_scanner_signatures_shift_each_code_its_own_way(twins):
    (signed, domains), (neutral, same) = skewness(twins["signed"]), skewness(twins["neutral"])
    assert list(domains) == list(same)
    # the two twins hold the same phantoms: the paired change is the code's signature alone
    shift = signed - neutral
    by_code = [shift[domains == code] for code in ("3", "5")]
    gap = abs(by_code[0].mean() - by_code[1].mean())
    spread = np.sqrt((by_code[0].var() + by_code[1].var()) / 2)
    assert gap > 2 * spread, f"the codes' shifts should differ: {gap:.4f} vs spread {spread:.4f}"


def test_manufacturer_codes_select_the_domains(copy):
    table = sheet(copy)
    assert set(table["Manufacturer"]) == {1, 3, 5}
    table["Manufacturer"] = table["Manufacturer"].astype(float)  # "3.0" as a sheet with blanks writes it
    table.loc[table.index[0], "Manufacturer"] = None
    table.to_csv(copy / SHEET)
    c = cohort(copy, manufacturers=["5", "1"])
    assert c.domains() == ["5", "1"] and set(c.index()["domain"]) == {"5", "1"}
    assert len(cohort(copy).index()) == len(cohort(copy).index().query("domain in ['3', '5']"))
    with pytest.raises(ValidationError, match="whole numbers"):
        XrayChestCohort.Params(manufacturers=["GE"])


def test_a_patient_imaged_on_two_codes_stays_in_one_domain(copy):
    table = sheet(copy)
    counts = table.groupby("PatientID").size()
    twice = counts[counts == 2].index[0]
    rows = table.index[table["PatientID"] == twice]
    code = table.loc[rows[0], "Manufacturer"]
    table.loc[rows[1], "Manufacturer"] = 8 - code  # 3 <-> 5
    table.loc[rows, "Cardiomegaly"] = 1.0
    table.to_csv(copy / SHEET)
    c = cohort(copy)
    patient = pseudonymize(twice, "xray_chest")
    assert c.index().set_index("patient").loc[patient, "domain"] == str(code)
    assert len(c.load([patient])) == 1


def test_views_select_frontal_images_by_default(copy):
    table = sheet(copy)
    frontal = len(load_all(copy)[1])
    rows = study_rows(copy).index
    table.loc[rows[0], "ViewPosition"] = "LL"
    table.loc[rows[1], "ViewPosition"] = None
    table.to_csv(copy / SHEET)
    assert len(load_all(copy)[1]) == frontal - 2
    assert len(load_all(copy, views=[])[1]) == frontal


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------


def test_patient_ids_and_planted_dicom_names_never_leave_the_loader(twin):
    table = sheet(twin)
    headers = [pydicom.dcmread(twin / p, stop_before_pixels=True) for p in table["DicomPath"]]
    planted = {str(h.PatientName) for h in headers} | {h.PatientBirthDate for h in headers}
    secrets = planted | set(table["PatientID"]) | {str(a) for a in table["AccessionNumber"]}
    assert all("^" in str(h.PatientName) for h in headers) and {h.PatientID for h in headers} <= set(table["PatientID"])
    for params in ({}, {"image_format": "dicom"}):
        index, items = load_all(twin, **params)
        shown = index.to_csv() + " ".join(items.patients) + " ".join(items.domains)
        for secret in secrets:
            assert secret not in shown
    assert all(p.startswith("p") and len(p) == 17 for p in index["patient"])


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def first_image(root: Path, column: str = "PngPath") -> Path:
    rows = study_rows(root)
    return root / rows[column].iloc[0]


def drop_sheet(root: Path) -> str:
    (root / SHEET).unlink()
    return "master_spreadsheet_update.csv"


def drop_column(name: str):
    def damage(root: Path) -> str:
        sheet(root).drop(columns=name).to_csv(root / SHEET)
        return name

    damage.__name__ = f"drop_{name}"
    return damage


def drop_both_paths(root: Path) -> str:
    sheet(root).drop(columns=["PngPath", "DicomPath"]).to_csv(root / SHEET)
    return "PngPath or DicomPath"


def bad_label(root: Path) -> str:
    table = sheet(root)
    table.loc[table.index[2], "Cardiomegaly"] = 2
    table.to_csv(root / SHEET)
    return f"{SHEET} line 4"


def truncate_png(root: Path) -> str:
    path = first_image(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name


def remove_png(root: Path) -> str:
    path = first_image(root)
    path.unlink()
    return path.name


@pytest.mark.parametrize(
    "damage",
    [
        drop_sheet,
        drop_column("Cardiomegaly"),
        drop_column("Manufacturer"),
        drop_column("PatientID"),
        drop_both_paths,
        bad_label,
        truncate_png,
        remove_png,
    ],
)
def test_malformed_input_is_a_one_line_data_error_naming_the_culprit(copy, damage):
    assert_one_line_data_error(damage(copy), lambda: load_all(copy))


def test_truncated_dicom_is_a_data_error_naming_the_file(copy):
    path = first_image(copy, "DicomPath")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(DataError, match=path.name):
        load_all(copy, image_format="dicom")


@pytest.mark.parametrize("damage, reason", [(truncate_png, "truncated"), (remove_png, "missing")])
def test_unreadable_images_are_recorded_and_skipped_when_asked(copy, twin, damage, reason):
    damage(copy)
    raw_patient = study_rows(copy)["PatientID"].iloc[0]
    c = cohort(copy, on_unreadable="skip")
    items = c.load(list(c.index()["patient"]))
    assert len(items) == len(study_rows(twin)) - 1
    assert len(c.unreadable) == 1
    record = c.unreadable[0]
    assert reason in record.reason and record.patient == pseudonymize(raw_patient, "xray_chest")
    assert raw_patient not in record.file and record.file == c.file_reference(first_image(copy), record.patient)


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    XrayChestCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder"):
        XrayChestCohort.check_root(tmp_path / "nowhere")
    (copy / SHEET).unlink()
    with pytest.raises(DataError, match=r"no master_spreadsheet_update\.csv or master_spreadsheet\.csv.*physionet"):
        XrayChestCohort.check_root(copy)
