"""The mnms cohort: its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from cohort_checks import assert_one_line_data_error, index_and_items, private_copy
from pydantic import ValidationError

from harmonia.api import TwinSettings
from harmonia.errors import DataError, UnreadableFile
from harmonia.privacy import pseudonymize
from harmonia.synth import acquire, smooth_field, twin_signature
from harmonia_plugins.cohorts import mnms_twin
from harmonia_plugins.cohorts.mnms import INFO_CSV, MnmsCohort, mnms_vendor

VENDORS = ["Siemens", "Philips", "GE", "Canon"]
PATIENTS = 2
SMALL = {"image_size": 64, "spacing_mm": 3.0}


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[float, Path]:
    """Two twins of the same phantoms: with scanner signatures (strength 1) and without (strength 0)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARMONIA_CACHE", str(tmp_path_factory.mktemp("cache")))
        roots = {}
        for strength in (1.0, 0.0):
            roots[strength] = tmp_path_factory.mktemp(f"mnms-strength{strength:g}")
            MnmsCohort.write_twin(roots[strength], TwinSettings(patients=PATIENTS, seed=0, strength=strength))
        return roots


@pytest.fixture
def twin(twins) -> Path:
    return twins[1.0]


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "mnms")


def cohort(root: Path, **params) -> MnmsCohort:
    return MnmsCohort(MnmsCohort.Params(**{**SMALL, **params}), root)


def load_all(root: Path, **params):
    return index_and_items(cohort(root, **params))


def sheet(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / INFO_CSV, index_col=0, dtype={"External code": str})


def labelled_codes(root: Path) -> list[str]:
    return sorted(p.name[: -len("_sa_gt.nii.gz")] for p in root.rglob("*_sa_gt.nii.gz"))


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_every_vendor_and_class(twin):
    index, items = load_all(twin)
    assert list(index.columns) == ["patient", "domain", "stratum"]
    assert index["domain"].value_counts().to_dict() == {v: PATIENTS for v in VENDORS}
    assert set(index["stratum"]) <= {"NOR", "DCM", "HCM"}
    # the unlabelled GE case in Training/Unlabeled is listed in the sheet but not indexed
    assert len(sheet(twin)) == 4 * PATIENTS + 1
    assert items.images.dtype == torch.float32 and items.targets.dtype == torch.int64
    assert items.images.shape[1:] == (1, 64, 64) and items.targets.shape[1:] == (64, 64)
    assert set(items.targets.unique().tolist()) == {0, 1, 2, 3}
    assert set(items.domains) == set(VENDORS) and set(items.patients) == set(index["patient"])
    x = items.images
    assert torch.isfinite(x).all()
    assert x.min() >= 0 and 100 < x.max() < 5000, "native MRI units (a.u.), not z-scored or [0, 1]"


def test_items_are_the_labelled_slices_of_the_sheets_ed_and_es_frames(twin):
    index, items = load_all(twin)
    table = sheet(twin).set_index("External code")
    for code in labelled_codes(twin):
        gt = np.asanyarray(nib.load(next(twin.rglob(f"{code}_sa_gt.nii.gz"))).dataobj)
        ed, es = table.loc[code, "ED"], table.loc[code, "ES"]
        labelled = [int(gt[..., f].reshape(-1, gt.shape[2]).any(axis=0).sum()) for f in (ed, es)]
        mine = items.of_patients([pseudonymize(code, "mnms")])
        assert len(mine) == sum(labelled)
        assert all(t.any() for t in mine.targets), "every item has labels"
        # ED slices come first; the LV cavity is larger at end-diastole than at end-systole
        lv = (mine.targets == 1).sum(dim=(1, 2))
        assert lv[: labelled[0]].sum() > lv[labelled[0] :].sum()


def test_ed_and_es_frames_come_from_the_sheet(copy):
    def lv_area(phase: str) -> int:
        return int((load_all(copy, phases=[phase])[1].targets == 1).sum())

    assert lv_area("ED") > lv_area("ES")
    table = sheet(copy)
    table[["ED", "ES"]] = table[["ES", "ED"]].to_numpy()
    table.to_csv(copy / INFO_CSV)
    assert lv_area("ED") < lv_area("ES")


def test_all_slices_when_asked(twin):
    labelled = len(load_all(twin)[1])
    everything = load_all(twin, labelled_slices_only=False)[1]
    assert len(everything) > labelled
    assert (everything.targets.flatten(1).amax(dim=1) == 0).any()


def test_geometry_follows_the_parameters(twin):
    c = MnmsCohort(MnmsCohort.Params(domains=["canon"], image_size=96, spacing_mm=2.0), twin)
    patient = c.index()["patient"].iloc[0]
    coarse = cohort(twin, domains=["Canon"], image_size=48, spacing_mm=4.0).load([patient])
    fine = c.load([patient])
    assert fine.images.shape[-2:] == (96, 96) and coarse.images.shape[-2:] == (48, 48)
    # same field of view (192 mm): the LV covers the same area in mm^2 at both spacings
    area = [float((s.targets == 1).sum()) * mm**2 for s, mm in ((fine, 2.0), (coarse, 4.0))]
    assert area[0] == pytest.approx(area[1], rel=0.15)


# --------------------------------------------------------------------------------------------
# Vendors
# --------------------------------------------------------------------------------------------


def blood_to_muscle(root: Path) -> dict[str, float]:
    """Per vendor: mean z-scored LV blood minus mean z-scored myocardium, over all items."""
    _, items = load_all(root)
    x = items.images[:, 0]
    z = (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True)
    out = {}
    for vendor in VENDORS:
        mine = torch.as_tensor(items.domains == vendor)
        zv, tv = z[mine], items.targets[mine]
        out[vendor] = float(zv[tv == 1].mean() - zv[tv == 2].mean())
    return out


def test_scanner_signatures_make_vendors_look_different(twins):
    signed, neutral = blood_to_muscle(twins[1.0]), blood_to_muscle(twins[0.0])
    spread = {k: max(v.values()) - min(v.values()) for k, v in (("signed", signed), ("neutral", neutral))}
    assert spread["neutral"] < 0.3, f"without signatures the vendors should look alike: {neutral}"
    assert spread["signed"] > 0.5, f"with signatures the vendors should differ: {signed}"


def test_vendor_names_alone_give_the_same_domains(copy, twin):
    table = sheet(copy)
    written = {"SIEMENS", "Philips Medical Systems", "GE MEDICAL SYSTEMS", "Canon Medical Systems"}
    assert set(table["VendorName"]) == written
    table.drop(columns="Vendor").to_csv(copy / INFO_CSV)
    assert cohort(copy).index().equals(cohort(twin).index())


@pytest.mark.parametrize(
    "text, vendor",
    [
        ("SIEMENS", "Siemens"),
        ("Philips Medical Systems", "Philips"),
        ("G.E. Medical Systems", "GE"),
        ("Canon Medical Systems", "Canon"),
        ("TOSHIBA_MEC", None),
        ("Hitachi", None),
    ],
)
def test_only_the_four_mnms_vendors_are_accepted(text, vendor):
    assert mnms_vendor(text) == vendor


def test_domains_parameter_selects_and_validates_vendors(twin):
    c = cohort(twin, domains=["ge", "SIEMENS"])
    assert c.domains() == ["GE", "Siemens"]
    assert set(c.index()["domain"]) == {"GE", "Siemens"}
    with pytest.raises(ValidationError, match="Hitachi"):
        MnmsCohort.Params(domains=["Hitachi"])
    with pytest.raises(ValidationError, match="twice"):
        MnmsCohort.Params(domains=["GE", "GE MEDICAL SYSTEMS"])


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------


def test_raw_codes_and_header_names_never_leave_the_loader(twin):
    codes = list(sheet(twin)["External code"])
    names = {nib.load(p).header["descrip"].item().decode().split()[0] for p in twin.rglob("*_sa.nii.gz")}
    assert len(codes) == 4 * PATIENTS + 1 and names
    index, items = load_all(twin)
    shown = index.to_csv() + " ".join(items.patients) + " ".join(items.domains)
    for secret in [*codes, *names]:
        assert secret not in shown
    assert all(p.startswith("p") and len(p) == 17 for p in index["patient"])


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def first_case(root: Path) -> tuple[str, Path]:
    code = labelled_codes(root)[0]
    return code, next(root.rglob(f"{code}_sa.nii.gz"))


def drop_sheet(root: Path) -> str:
    (root / INFO_CSV).unlink()
    return INFO_CSV


def drop_vendor_columns(root: Path) -> str:
    sheet(root).drop(columns=["Vendor", "VendorName"]).to_csv(root / INFO_CSV)
    return INFO_CSV


def shrink_gt(root: Path) -> str:
    code, image = first_case(root)
    gt_path = image.with_name(f"{code}_sa_gt.nii.gz")
    gt = nib.load(gt_path)
    nib.save(nib.Nifti1Image(np.asanyarray(gt.dataobj)[:, :, :-1], gt.affine), gt_path)
    return gt_path.name


def truncate_image(root: Path) -> str:
    _, image = first_case(root)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    return image.name


def corrupt_gzip(root: Path) -> str:
    _, image = first_case(root)
    image.write_bytes(gzip.compress(b"not a NIfTI header" * 10))
    return image.name


def ed_out_of_range(root: Path) -> str:
    table = sheet(root)
    code, _ = first_case(root)
    table.loc[table["External code"] == code, "ED"] = 99
    table.to_csv(root / INFO_CSV)
    return INFO_CSV


def ed_unlabelled(root: Path) -> str:
    table = sheet(root)
    code, image = first_case(root)
    row = table["External code"] == code
    frames = nib.load(image).shape[3]
    unlabelled = next(f for f in range(frames) if f not in set(table.loc[row, ["ED", "ES"]].iloc[0]))
    table.loc[row, "ED"] = unlabelled
    table.to_csv(root / INFO_CSV)
    return f"{code}_sa_gt.nii.gz"


def contradicting_vendor(root: Path) -> str:
    table = sheet(root)
    table.loc[table["Vendor"] == "A", "VendorName"] = "Philips Medical Systems"
    table.to_csv(root / INFO_CSV)
    return INFO_CSV


def unlisted_patient(root: Path) -> str:
    code, _ = first_case(root)
    table = sheet(root)
    table[table["External code"] != code].to_csv(root / INFO_CSV)
    return f"{code}_sa_gt.nii.gz"


def image_missing(root: Path) -> str:
    _, image = first_case(root)
    image.unlink()
    return image.name


@pytest.mark.parametrize(
    "damage",
    [
        drop_sheet,
        drop_vendor_columns,
        shrink_gt,
        truncate_image,
        corrupt_gzip,
        ed_out_of_range,
        ed_unlabelled,
        contradicting_vendor,
        unlisted_patient,
        image_missing,
    ],
)
def test_malformed_input_is_a_one_line_data_error_naming_the_file(copy, damage):
    assert_one_line_data_error(damage(copy), lambda: load_all(copy))


@pytest.mark.parametrize("damage", [truncate_image, corrupt_gzip])
def test_an_unreadable_image_stops_the_load_or_is_skipped_and_listed(copy, damage):
    culprit = damage(copy)
    code, image = first_case(copy)
    with pytest.raises(UnreadableFile) as caught:
        load_all(copy)
    assert culprit in str(caught.value) and "\n" not in str(caught.value)
    c = cohort(copy, on_unreadable="skip")
    index, items = index_and_items(c)
    skipped = pseudonymize(code, "mnms")
    assert set(items.patients) == set(index["patient"]) - {skipped} and len(items) > 0
    [record] = c.unreadable
    assert record.patient == skipped and record.file == c.file_reference(image, skipped)
    assert code not in repr(record) and culprit not in record.reason


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    MnmsCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder"):
        MnmsCohort.check_root(tmp_path / "nowhere")
    (copy / INFO_CSV).unlink()
    with pytest.raises(DataError, match=r"no M&Ms info CSV .*ub\.edu/mnms"):
        MnmsCohort.check_root(copy)
    empty = tmp_path / "only-sheet"
    empty.mkdir()
    (empty / INFO_CSV).write_text(",External code,Vendor,ED,ES\n0,A0B1C2,A,0,9\n")
    with pytest.raises(DataError, match="no labelled patients"):
        MnmsCohort.check_root(empty)


# --------------------------------------------------------------------------------------------
# Older releases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["201207_M&Ms Dataset information - diagnosis - opendataset.csv", "M&Ms Dataset Information.csv"],
)
def test_older_release_sheets_are_read(copy, twin, name):
    expected = cohort(twin).index()
    # the 2020 sheets have no VendorName column and no unnamed index column
    sheet(copy).drop(columns="VendorName").to_csv(copy / name, index=False)
    (copy / INFO_CSV).unlink()
    MnmsCohort.check_root(copy)
    assert cohort(copy).index().equals(expected)


def test_current_sheet_wins_over_an_older_one(copy, twin):
    stale = sheet(copy).assign(Vendor="A", VendorName="SIEMENS")
    stale.to_csv(copy / "201207_M&Ms Dataset information - diagnosis - opendataset.csv")
    assert cohort(copy).index().equals(cohort(twin).index())


def _labelled_tissue_means(vendor: str, settings: TwinSettings, spatial: bool) -> np.ndarray:
    """Mean intensity under the twin's LV, MYO and RV labels (1, 2, 3) in ED volumes of three phantom patients.

    ``spatial=False`` switches off the per-image bias field, a zero-mean smooth field that brightens
    whichever cavity happens to lie nearer the simulated coil in one image (as in real cine).
    """
    signature = twin_signature(vendor, "MRI", settings)
    if not spatial:
        signature = signature.model_copy(update={"bias": signature.bias.model_copy(update={"enabled": False})})
    site, sums = mnms_twin.SITES[vendor], np.zeros((2, 3))
    for patient in range(3):
        rng = np.random.default_rng([settings.seed, patient])
        heart = mnms_twin.draw_heart(rng, settings.difficulty)
        grid = mnms_twin.Grid.of(site.matrix, site.matrix, site.pixel_mm)
        texture = smooth_field(grid.x.shape, 0.3, rng)
        tissues, labels = mnms_twin.patient_volumes(heart, grid, texture, heart.ed)
        values = mnms_twin.intensities(settings.difficulty)
        image = acquire(tissues, values, signature, seed=patient, spacing=(mnms_twin.SLICE_MM, *[site.pixel_mm] * 2))
        for label in (1, 2, 3):
            sums[:, label - 1] += image[labels == label].sum(), (labels == label).sum()
    return sums[0] / sums[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_vendor_keeps_blood_brighter_than_myocardium_and_one_tissue_order(seed):
    """bSSFP blood is brighter than myocardium on every scanner; vendors change contrast, never the order.

    LV and RV cavities hold the same tissue (blood): they may differ by partial volume and ringing
    at the thin RV, but not by a vendor-specific gain of their own as the old per-tissue contrast gave.
    """
    settings = TwinSettings(seed=seed)
    for vendor in VENDORS:
        lv, myo, rv = _labelled_tissue_means(vendor, settings, spatial=True)
        assert lv > 1.2 * myo and rv > 1.2 * myo, vendor
        lv, myo, rv = _labelled_tissue_means(vendor, settings, spatial=False)
        assert min(lv, rv) > 1.2 * myo and abs(lv / rv - 1) < 0.25, (vendor, lv, myo, rv)
