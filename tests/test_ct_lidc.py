"""The ct_lidc cohort: its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from cohort_checks import assert_one_line_data_error, index_and_items, private_copy
from scipy import ndimage

from harmonia.api import TwinSettings
from harmonia.errors import DataError, UnreadableFile
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.ct_lidc import CtLidcCohort

PATIENTS = 2


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct_lidc")
    CtLidcCohort.write_twin(root, TwinSettings(patients=PATIENTS, seed=0))
    return root


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "ct_lidc")


def cohort(root: Path, **params) -> CtLidcCohort:
    return CtLidcCohort(CtLidcCohort.Params(**params), root)


def load_all(root: Path, **params):
    return index_and_items(cohort(root, **params))


def patient_folders(root: Path) -> dict[str, Path]:
    return {p.name: p for p in (root / "LIDC-IDRI").iterdir()}


def ct_xml(folder: Path) -> Path:
    """The CT reader XML of a twin patient (not the radiograph's)."""
    return next(p for p in folder.rglob("*.xml") if "LidcReadMessage" in p.read_text())


def ct_files(folder: Path) -> list[Path]:
    return sorted(ct_xml(folder).parent.glob("*.dcm"))


def expected_labels(root: Path) -> dict[str, list[int]]:
    """Pseudonym -> sorted classes of its extreme nodules, from the XML read with regular expressions.

    The twin names each nodule alike in every reader's session, so readers' ratings group by ``noduleID``.
    """
    found = {}
    for patient, folder in patient_folders(root).items():
        ratings = defaultdict(list)
        for nodule in re.findall(r"<unblindedReadNodule>(.*?)</unblindedReadNodule>", ct_xml(folder).read_text()):
            rating = re.search(r"<malignancy>(\d)</malignancy>", nodule)
            if rating:
                ratings[re.search(r"<noduleID>(.*?)</noduleID>", nodule)[1]].append(int(rating[1]))
        labels = sorted({1.0: 0, 5.0: 1}[m] for m in map(np.median, ratings.values()) if m in (1.0, 5.0))
        if labels:
            found[pseudonymize(patient, "ct_lidc")] = labels
    return found


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_both_domains_and_the_readers_extreme_ratings(twin):
    c = cohort(twin)
    index, items = c.index(), c.load(list(c.index()["patient"]))
    assert c.exclusion_counts() == {"no nodule rated 1 or 5": 1}
    assert list(index.columns) == ["patient", "domain", "stratum"]
    assert index["domain"].value_counts().to_dict() == {"GE": PATIENTS, "Other": PATIENTS}
    # the twin's extra patient has only a nodule rated 3: not indexed
    assert len(patient_folders(twin)) == 2 * PATIENTS + 1
    expected = expected_labels(twin)
    assert set(index["patient"]) == set(expected)
    got = defaultdict(list)
    for patient, label in zip(items.patients, items.targets.tolist()):
        got[patient].append(label)
    assert {p: sorted(v) for p, v in got.items()} == expected
    assert dict(zip(index["patient"], index["stratum"])) == {
        p: "malignant" if max(v) else "benign" for p, v in expected.items()
    }
    assert items.images.shape == (sum(map(len, expected.values())), 1, 5, 47, 47)
    assert items.images.dtype == torch.float32 and items.targets.dtype == torch.int64
    assert set(items.domains) == {"GE", "Other"}


def test_items_are_hu_crops_centred_on_the_nodule(twin):
    _, items = load_all(twin)
    x = items.images[:, 0]
    assert x.min() >= -1100 and x.max() < 1000, "HU, not z-scored"
    lung = ((x > -950) & (x < -750)).flatten(1).float().mean(dim=1)
    assert (lung > 0.2).all(), "every crop is mostly lung around the nodule"
    assert (x[:, 2, 23, 23] > -300).all(), "every crop's centre voxel is nodule"
    # the nodule: the solid region connected to the crop's centre
    sizes = []
    for crop in x.numpy():
        regions, _ = ndimage.label(crop > -400)
        sizes.append((regions == regions[2, 23, 23]).sum())
    sizes, malignant = np.array(sizes), items.targets.numpy() == 1
    assert sizes[malignant].mean() > 2 * sizes[~malignant].mean(), "malignant nodules are the larger ones"


def test_outlines_are_placed_by_z_position_when_the_sop_uid_is_unknown(copy, twin):
    for xml in copy.rglob("*.xml"):
        xml.write_text(
            re.sub(r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>1.2.3</imageSOP_UID>", xml.read_text())
        )
    _, original = load_all(twin)
    _, relocated = load_all(copy)
    assert torch.equal(original.images, relocated.images)


def test_nodules_whose_median_rating_is_not_extreme_are_left_out(copy, twin):
    patient = indexed(copy)[0]
    xml = ct_xml(patient_folders(copy)[patient])
    # the twin's nodules are rated 5 (or 1) by most readers and 4 (or 2) by at most one
    xml.write_text(re.sub(r"<malignancy>[15]</malignancy>", "<malignancy>3</malignancy>", xml.read_text()))
    assert set(cohort(twin).index()["patient"]) - set(cohort(copy).index()["patient"]) == {
        pseudonymize(patient, "ct_lidc")
    }


def test_patient_folders_directly_under_the_root(copy, twin):
    for folder in list((copy / "LIDC-IDRI").iterdir()):
        folder.rename(copy / folder.name)
    assert cohort(copy).index().equals(cohort(twin).index())


def test_cluster_distance_decides_which_annotations_are_one_nodule(twin):
    _, items = load_all(twin)
    # below the readers' outline jitter, every reader's annotation stands alone: one item per annotation
    _, apart = load_all(twin, cluster_mm=0.01)
    assert len(apart) > len(items)


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def indexed(root: Path) -> list[str]:
    """The raw names of the patients with an extreme-rated nodule, sorted."""
    labelled = expected_labels(root)
    return sorted(p for p in patient_folders(root) if pseudonymize(p, "ct_lidc") in labelled)


def first_patient(root: Path) -> Path:
    return patient_folders(root)[indexed(root)[0]]


def vendor_tag_absent(root: Path) -> str:
    files = ct_files(first_patient(root))
    for path in files:
        dataset = pydicom.dcmread(path)
        del dataset.Manufacturer
        dataset.save_as(path)
    return str(files[0])


def truncated_dicom(root: Path) -> str:
    path = ct_files(first_patient(root))[5]
    path.write_bytes(path.read_bytes()[:20000])
    return str(path)


def malformed_xml(root: Path) -> str:
    xml = ct_xml(first_patient(root))
    xml.write_text(xml.read_text()[:3000])
    return str(xml)


def rating_not_a_number(root: Path) -> str:
    xml = ct_xml(first_patient(root))
    xml.write_text(xml.read_text().replace("<malignancy>", "<malignancy>high", 1))
    return str(xml)


def outline_off_the_scan(root: Path) -> str:
    xml = ct_xml(first_patient(root))
    text = re.sub(r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>1.2.3</imageSOP_UID>", xml.read_text())
    xml.write_text(re.sub(r"<imageZposition>[^<]*</imageZposition>", "<imageZposition>999.0</imageZposition>", text))
    return str(xml)


@pytest.mark.parametrize(
    "damage", [vendor_tag_absent, truncated_dicom, malformed_xml, rating_not_a_number, outline_off_the_scan]
)
def test_malformed_input_is_a_one_line_data_error_naming_the_file(copy, damage):
    assert_one_line_data_error(damage(copy), lambda: load_all(copy))


def test_unreadable_files_are_skipped_and_recorded_when_asked(copy, twin):
    names = indexed(copy)
    truncated = Path(truncated_dicom(copy))
    malformed_xml_of = ct_xml(patient_folders(copy)[names[1]])
    malformed_xml_of.write_text("<LidcReadMessage><unclosed>")
    with pytest.raises(UnreadableFile):
        load_all(copy)
    c = cohort(copy, on_unreadable="skip")
    index = c.index()
    # the malformed XML drops its patient from the index; the truncated slice drops its patient's items
    assert set(cohort(twin).index()["patient"]) - set(index["patient"]) == {pseudonymize(names[1], "ct_lidc")}
    items = c.load(list(index["patient"]))
    assert pseudonymize(names[0], "ct_lidc") not in set(items.patients) and len(items) > 0
    assert [r.patient for r in c.unreadable] == [pseudonymize(n, "ct_lidc") for n in (names[1], names[0])]
    assert c.unreadable[1].file == c.file_reference(truncated, c.unreadable[1].patient)
    assert not any(n in str(c.unreadable) for n in names)


# --------------------------------------------------------------------------------------------
# Privacy and the data folder
# --------------------------------------------------------------------------------------------


def test_planted_identifiers_never_leave_the_loader(twin):
    planted = set(patient_folders(twin))
    for path in twin.rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        planted |= {str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate)}
    assert len(planted) > 2 * PATIENTS + 1 and any("^" in p for p in planted)
    for xml in twin.rglob("*.xml"):
        assert not any(secret in xml.read_text() for secret in planted), "LIDC XML names no one"
    index, items = load_all(twin)
    shown = index.to_csv() + " ".join(items.patients) + " ".join(items.domains)
    for secret in planted:
        assert secret not in shown


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    CtLidcCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder"):
        CtLidcCohort.check_root(tmp_path / "nowhere")
    shutil.rmtree(copy / "LIDC-IDRI")
    with pytest.raises(DataError, match=r"no LIDC-IDRI-NNNN patient folders .*TCIA"):
        CtLidcCohort.check_root(copy)
