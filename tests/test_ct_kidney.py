"""The ct_kidney cohort (C4KC-KiTS): its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from cohort_checks import assert_one_line_data_error, index_and_items, private_copy
from pydantic import ValidationError
from pydicom.pixels import pack_bits

from harmonia.api import TwinSettings
from harmonia.errors import DataError
from harmonia.privacy import pseudonymize
from harmonia.synth.abdomen import draw_anatomy
from harmonia_plugins.cohorts.ct_kidney import KidneyCohort
from harmonia_plugins.cohorts.ct_kidney_twin import TUMOUR_RADIUS_MM, arterial_values, draw_tumour

PATIENTS = 3
SMALL = {"image_size": 64, "spacing_mm": 6.0}


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[float, Path]:
    """Twins with scanner signatures (strength 1, 3 patients per domain) and without (strength 0, 2 per domain)."""
    roots = {}
    for strength, patients in ((1.0, PATIENTS), (0.0, 2)):
        roots[strength] = tmp_path_factory.mktemp(f"kits-strength{strength:g}")
        KidneyCohort.write_twin(roots[strength], TwinSettings(patients=patients, seed=0, strength=strength))
    return roots


@pytest.fixture
def twin(twins) -> Path:
    return twins[1.0]


@pytest.fixture(scope="module")
def loaded(twins):
    """Index and items of the signed twin with the default (small) parameters, loaded once."""
    return load_all(twins[1.0])


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "kits")


def cohort(root: Path, **params) -> KidneyCohort:
    return KidneyCohort(KidneyCohort.Params(**{**SMALL, **params}), root)


def load_all(root: Path, **params):
    return index_and_items(cohort(root, **params))


def patients(root: Path) -> list[Path]:
    return sorted((root / "C4KC-KiTS").iterdir())


def series_files(folder: Path, description: str) -> list[Path]:
    """The files of the patient's series whose folder name contains ``description``."""
    return sorted(next(folder.glob(f"*/*{description}*")).glob("*.dcm"))


def seg_file(folder: Path) -> Path:
    return series_files(folder, "Segmentation")[0]


def tumour_slices_in_seg(folder: Path) -> int:
    """Distinct slice positions of the SEG frames of its tumour segment, read with pydicom alone."""
    seg = pydicom.dcmread(seg_file(folder))
    tumour = {int(s.SegmentNumber) for s in seg.SegmentSequence if "tumor" in s.SegmentLabel.lower()}
    heights = {
        round(float(f.PlanePositionSequence[0].ImagePositionPatient[2]), 2)
        for f in seg.PerFrameFunctionalGroupsSequence
        if int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) in tumour
    }
    return len(heights)


def edit_headers(files: list[Path], **changes) -> None:
    """Set (value) or delete (None) header keywords in every file."""
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_both_domains_both_classes_and_hu(loaded):
    index, items = loaded
    assert list(index.columns) == ["patient", "domain", "stratum"]
    assert index["domain"].value_counts().to_dict() == {"Siemens": PATIENTS, "Other": PATIENTS}
    assert index["stratum"].isna().all()
    assert items.images.dtype == torch.float32 and items.targets.dtype == torch.int64
    assert items.images.shape[1:] == (1, 64, 64) and items.targets.shape == (len(items),)
    for domain in ("Siemens", "Other"):
        assert set(items.targets[torch.as_tensor(items.domains == domain)].tolist()) == {0, 1}
    x = items.images
    assert torch.isfinite(x).all()
    assert x.min() < -900 and 300 < x.max() < 2000, "native HU: air about -1000, bone a few hundred"
    body = x[x > -200]
    assert -150 < float(body.median()) < 150, "soft tissue around 0-100 HU"


def test_every_slice_of_the_referenced_ct_is_an_item_labelled_from_the_seg(twin, loaded):
    _, items = loaded
    for folder in patients(twin):
        mine = items.of_patients([pseudonymize(folder.name, "ct_kidney")])
        # the SEG references the arterial series; a non-contrast series sits beside it in some folders
        assert len(mine) == len(series_files(folder, "arterial"))
        assert int(mine.targets.sum()) == tumour_slices_in_seg(folder) > 0
        # tumour slices are contiguous: the tumour is one blob
        positive = np.flatnonzero(mine.targets.numpy())
        assert positive[-1] - positive[0] + 1 == len(positive)


def test_the_ct_the_seg_references_wins_over_other_series(twin, loaded):
    folder = next(f for f in patients(twin) if list(f.glob("*/*non-contrast*")))
    arterial, plain = series_files(folder, "arterial"), series_files(folder, "non-contrast")
    assert len(plain) != len(arterial)
    _, items = loaded
    assert len(items.of_patients([pseudonymize(folder.name, "ct_kidney")])) == len(arterial)


def test_tumour_free_slices_are_thinned_when_asked(twin, loaded):
    _, every = loaded
    _, two = load_all(twin, tumour_free_slices=2)
    _, none = load_all(twin, tumour_free_slices=0)
    _, kidney = load_all(twin, kidney_slices_only=True)
    positives = int(every.targets.sum())
    assert int(two.targets.sum()) == int(none.targets.sum()) == int(kidney.targets.sum()) == positives
    assert len(two) == positives + 2 * 2 * PATIENTS
    assert len(none) == positives
    assert positives < len(kidney) < len(every)


def test_geometry_follows_the_parameters_and_pads_with_air(twin):
    index = cohort(twin).index()
    patient = [index["patient"].iloc[0]]
    wide = cohort(twin, image_size=64, spacing_mm=8.0).load(patient)  # 512 mm: wider than the scan
    fine = cohort(twin, image_size=96, spacing_mm=4.0).load(patient)
    assert wide.images.shape[-2:] == (64, 64) and fine.images.shape[-2:] == (96, 96)
    assert len(wide) == len(fine)
    assert float(wide.images[:, 0, 0, 0].max()) == pytest.approx(-1024.0), "padding is air, not water"


# --------------------------------------------------------------------------------------------
# Vendors and the twin's signal
# --------------------------------------------------------------------------------------------


def test_domain_comes_from_the_ct_manufacturer(copy):
    manufacturers = {pydicom.dcmread(series_files(f, "arterial")[0]).Manufacturer: f for f in patients(copy)}
    assert set(manufacturers) == {"SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "TOSHIBA"}
    before = cohort(copy).index().set_index("patient")["domain"]
    folder = manufacturers["SIEMENS"]
    edit_headers(series_files(folder, "arterial"), Manufacturer="Siemens Healthineers")
    patient = pseudonymize(folder.name, "ct_kidney")
    assert cohort(copy).index().set_index("patient")["domain"][patient] == "Siemens"
    edit_headers(series_files(folder, "arterial"), Manufacturer="GE MEDICAL SYSTEMS")
    after = cohort(copy).index().set_index("patient")["domain"]
    assert before[patient] == "Siemens" and after[patient] == "Other"
    assert (after.drop(patient) == before.drop(patient)).all()


def air_noise(root: Path) -> dict[str, float]:
    """Per manufacturer: the HU standard deviation of the air in front of the body, from the DICOM files."""
    noise: dict[str, list[float]] = {}
    for folder in patients(root):
        files = series_files(folder, "arterial")
        head = pydicom.dcmread(files[0])
        air = [pydicom.dcmread(f).pixel_array[:8].astype(float) for f in files]
        noise.setdefault(head.Manufacturer, []).append(float(np.std(air)))
    return {k: float(np.mean(v)) for k, v in noise.items()}


def test_scanner_signatures_make_vendors_look_different(twins):
    signed, neutral = air_noise(twins[1.0]), air_noise(twins[0.0])
    spread = {k: max(v.values()) / min(v.values()) for k, v in (("signed", signed), ("neutral", neutral))}
    assert spread["neutral"] < 1.04, f"without signatures the vendors' noise should match: {neutral}"
    assert spread["signed"] > 1.15, f"with signatures the vendors' noise should differ: {signed}"


def test_difficulty_shrinks_the_tumour_and_its_contrast():
    rng = np.random.default_rng(0)
    anatomy = draw_anatomy(rng, scale=1.0)
    easy = [draw_tumour(rng, anatomy, 0.0).radius for _ in range(20)]
    hard = [draw_tumour(rng, anatomy, 1.0).radius for _ in range(20)]
    assert min(easy) >= TUMOUR_RADIUS_MM[0][0] and max(hard) <= TUMOUR_RADIUS_MM[1][1]
    cortex, tumour = 7, 12
    assert arterial_values(0.0)[cortex] - arterial_values(0.0)[tumour] > 2 * (
        arterial_values(1.0)[cortex] - arterial_values(1.0)[tumour]
    )


# --------------------------------------------------------------------------------------------
# Segment labels
# --------------------------------------------------------------------------------------------


def relabel_tumour(root: Path, label: str) -> None:
    for folder in patients(root):
        path = seg_file(folder)
        ds = pydicom.dcmread(path)
        for segment in ds.SegmentSequence:
            if segment.SegmentLabel != "Kidney":
                segment.SegmentLabel = label
        ds.save_as(path)


def test_tumour_segment_is_found_by_its_label(copy, loaded):
    patient = loaded[0]["patient"].iloc[:1].tolist()
    expected = int(loaded[1].of_patients(patient).targets.sum())
    relabel_tumour(copy, "tumor")
    assert int(cohort(copy).load(patient).targets.sum()) == expected
    relabel_tumour(copy, "Lesion")
    with pytest.raises(DataError, match=r"no segment label matches .*'Kidney', 'Lesion'"):
        cohort(copy).load(patient)
    assert int(cohort(copy, tumour_segment="^lesion$").load(patient).targets.sum()) == expected
    with pytest.raises(ValidationError, match="regular expression"):
        KidneyCohort.Params(tumour_segment="(")


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------


def planted_identifiers(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}
    return found


def test_planted_identifiers_never_leave_the_loader(copy):
    secrets = planted_identifiers(copy)
    assert len(secrets) > 2 * PATIENTS and all(secrets)
    truncate(copy)
    c = cohort(copy, on_unreadable="skip")
    index = c.index()
    items = c.load(list(index["patient"]))
    shown = index.to_csv() + " ".join(items.patients) + " ".join(items.domains) + repr(c.unreadable)
    assert c.unreadable, "the truncated file is recorded"
    for secret in secrets:
        assert secret not in shown


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def first_folder(root: Path) -> Path:
    return patients(root)[0]


def drop_seg(root: Path) -> str:
    folder = first_folder(root)
    shutil.rmtree(seg_file(folder).parent)
    return f"{folder}: no DICOM SEG"


def seg_of_another_series(root: Path) -> str:
    folder, other = patients(root)[:2]
    shutil.copy(seg_file(other), seg_file(folder))
    return f"{seg_file(folder)}: the SEG segments series"


def seg_of_another_size(root: Path) -> str:
    path = seg_file(first_folder(root))
    ds = pydicom.dcmread(path)
    small = ds.pixel_array[:, ::2, ::2]
    ds.Rows, ds.Columns = small.shape[1:]
    ds.PixelData = pack_bits(small.astype(np.uint8))
    ds.save_as(path)
    return f"{path}: SEG frames are"


def truncate(root: Path) -> str:
    path = series_files(first_folder(root), "arterial")[5]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def drop_vendor(root: Path) -> str:
    files = series_files(first_folder(root), "arterial")
    edit_headers(files, Manufacturer=None)
    return f"{files[0]}: no Manufacturer (0008,0070)"


def no_patients(root: Path) -> str:
    for folder in patients(root):
        shutil.rmtree(folder)
    return f"{root}: no patient folders"


@pytest.mark.parametrize("damage", [drop_seg, seg_of_another_series, seg_of_another_size, truncate, drop_vendor])
def test_malformed_input_is_a_one_line_data_error_naming_the_file(copy, damage):
    assert_one_line_data_error(damage(copy), lambda: load_all(copy))


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    KidneyCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder"):
        KidneyCohort.check_root(tmp_path / "nowhere")
    drop_vendor(copy)
    with pytest.raises(DataError, match="no Manufacturer"):
        KidneyCohort.check_root(copy)
    culprit = no_patients(copy)
    with pytest.raises(DataError, match="cancerimagingarchive") as caught:
        KidneyCohort.check_root(copy)
    assert culprit in str(caught.value)


def test_unreadable_files_are_skipped_and_recorded_when_asked(copy, loaded):
    expected = loaded[0]
    truncate(copy)  # pixel data cut: found when loading
    header_cut = series_files(patients(copy)[1], "arterial")[0]
    header_cut.write_bytes(header_cut.read_bytes()[:200])  # header cut: found when indexing
    c = cohort(copy, on_unreadable="skip")
    index = c.index()
    assert len(index) == len(expected) - 1
    items = c.load(list(index["patient"]))
    assert set(items.patients) == set(index["patient"]) - {pseudonymize(patients(copy)[0].name, "ct_kidney")}
    assert len(c.unreadable) == 2
    assert "truncated" in c.unreadable[1].reason and "SeriesInstanceUID" in c.unreadable[0].reason


def test_patient_folders_directly_under_the_root_and_junk_files_are_accepted(copy, loaded):
    for folder in patients(copy):
        (folder / "notes.txt").write_text("not DICOM")
        folder.rename(copy / folder.name)
    (copy / "C4KC-KiTS").rmdir()
    assert cohort(copy).index().equals(loaded[0])
