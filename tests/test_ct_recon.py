"""The ct_recon cohort (paired reconstructions of Lee et al.): loader against its twin, aliases, malformed copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import torch
from cohort_checks import assert_one_line_data_error, index_and_items, private_copy
from pydantic import ValidationError
from scipy import ndimage

from harmonia.api import TwinSettings
from harmonia.errors import DataError
from harmonia.privacy import pseudonymize
from harmonia.splits import split_patients
from harmonia_plugins.cohorts.ct_recon import RECONS, ReconCohort, canonical_recon
from harmonia_plugins.cohorts.ct_recon_twin import hu_values, signature

EXAMS = 3
SMALL = {"image_size": 64, "spacing_mm": 6.0}
LIVER, MUSCLE = 5, 2


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recon")
    ReconCohort.write_twin(root, TwinSettings(patients=EXAMS, seed=0))
    return root


@pytest.fixture(scope="module")
def loaded(twin):
    """Index and items of the twin with the default (small) parameters, loaded once."""
    return load_all(twin)


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "recon")


def cohort(root: Path, **params) -> ReconCohort:
    return ReconCohort(ReconCohort.Params(**{**SMALL, **params}), root)


def load_all(root: Path, **params):
    return index_and_items(cohort(root, **params))


def exams(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def dicom_exam(root: Path, seg: bool = False) -> Path:
    """An exam stored as DICOM series, with (``seg``) or without a DICOM SEG liver mask."""
    return next(e for e in exams(root) if (e / "M80").is_dir() and (e / "liver_mask").is_dir() == seg)


def nifti_exam(root: Path) -> Path:
    return next(e for e in exams(root) if (e / "mono80keV.nii.gz").is_file())


def interior(targets: torch.Tensor) -> torch.Tensor:
    """Liver pixels whose four neighbours are liver too (no partial volume with the surroundings)."""
    liver = targets.numpy() == 1
    return torch.from_numpy(ndimage.binary_erosion(liver, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]])))


def per_domain(items, reduce) -> dict[str, float]:
    out = {}
    for recon in RECONS:
        mine = items.take(items.domains == recon)
        out[recon] = float(reduce(mine.images[:, 0][interior(mine.targets)]))
    return out


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_every_exam_is_one_patient_in_all_six_domains(loaded, twin):
    index, items = loaded
    assert list(index.columns) == ["patient", "domain", "stratum"]
    assert index["domain"].value_counts().to_dict() == {r: EXAMS for r in RECONS}
    assert index["stratum"].isna().all()
    pseudonyms = {pseudonymize(e.name, "ct_recon") for e in exams(twin)}
    assert set(index["patient"]) == pseudonyms
    assert all(set(index[index["patient"] == p]["domain"]) == set(RECONS) for p in pseudonyms)
    assert items.images.dtype == torch.float32 and items.targets.dtype == torch.int64
    assert items.images.shape[1:] == (1, 64, 64) and items.targets.shape[1:] == (64, 64)
    assert set(items.targets.unique().tolist()) == {0, 1}
    assert bool((items.targets.flatten(1).amax(dim=1) == 1).all()), "every item shows liver"


def test_reconstructions_are_paired_slice_by_slice(loaded):
    _, items = loaded
    for patient in dict.fromkeys(items.patients):
        mine = items.of_patients([patient])
        reference = mine.take(mine.domains == "M80")
        for recon in RECONS:
            other = mine.take(mine.domains == recon)
            assert torch.equal(other.targets, reference.targets), "one mask for every reconstruction"
            # same anatomy: the images correlate strongly although contrast and noise differ
            r = np.corrcoef(other.images.flatten().numpy(), reference.images.flatten().numpy())[0, 1]
            assert r > 0.9


def test_hu_and_noise_differ_between_reconstructions_as_seed_003_describes(loaded, twin):
    index, items = loaded
    x = items.images
    assert x.min() < -900 and 500 < x.max() < 3000, "native HU"
    assert float(x[:, 0, 0, 0].max()) == pytest.approx(-1024.0), "the 384 mm field of view is padded with air"
    liver = per_domain(items, torch.mean)
    # noise at about the acquired pixel size: shrinking to 6 mm would smooth fine (FBP) noise more than coarse (IR)
    fine = cohort(twin, image_size=128, spacing_mm=2.5).load(list(index["patient"].iloc[:1]))
    noise = per_domain(fine, torch.std)
    assert 70 < liver["M80"] < 110, f"reference liver in portal-phase HU: {liver}"
    assert liver["M40"] > 1.6 * liver["M80"] and liver["M80"] < liver["M60"] < liver["M40"]
    assert liver["M80"] < liver["OC"] < liver["M40"]
    assert noise["M40"] > 2 * noise["M80"]
    assert noise["FBP"] > 1.3 * noise["IR"]


def test_a_mask_stored_upside_down_or_as_seg_lands_on_the_liver(loaded, twin):
    _, items = loaded
    means = {}
    for exam in (nifti_exam(twin), dicom_exam(twin, seg=True), dicom_exam(twin)):
        mine = items.of_patients([pseudonymize(exam.name, "ct_recon")])
        m80 = mine.take(mine.domains == "M80")
        means[exam.name] = float(m80.images[:, 0][interior(m80.targets)].mean())
    assert max(means.values()) - min(means.values()) < 15, f"liver HU per exam: {means}"
    direction = sitk.ReadImage(str(nifti_exam(twin) / "liver_mask.nii.gz")).GetDirection()
    assert direction[4] == pytest.approx(-1.0), "the twin stores this mask with its rows reversed"


def test_domains_and_slices_follow_the_parameters(twin, loaded):
    c = cohort(twin, domains=["mono40", "filtered back projection"], reference="80keV")
    assert c.domains() == ["M40", "FBP"] and c.params.reference == "M80"
    index = c.index()
    assert set(index["domain"]) == {"M40", "FBP"}
    items = c.load(list(index["patient"]))
    assert set(items.domains) == {"M40", "FBP"}
    assert len(items) == 2 * len(loaded[1]) // len(RECONS)
    everything = cohort(twin, domains=["M80"], liver_slices_only=False).load(list(index["patient"]))
    assert len(everything) > len(loaded[1]) // len(RECONS)
    assert bool((everything.targets.flatten(1).amax(dim=1) == 0).any())
    with pytest.raises(ValidationError, match=r"unknown reconstruction 'T2W'; accepted: FBP"):
        ReconCohort.Params(domains=["T2W"])
    with pytest.raises(ValidationError, match="twice"):
        ReconCohort.Params(domains=["M80", "mono80keV"])


# --------------------------------------------------------------------------------------------
# Names of reconstructions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, recon",
    [
        ("M80", "M80"),
        ("m80", "M80"),
        ("mono80", "M80"),
        ("80keV", "M80"),
        ("Mono 80 keV", "M80"),
        ("VMI_40keV", "M40"),
        ("MonoE-60", "M60"),
        ("mono_70keV", "M70"),
        ("FBP", "FBP"),
        ("filtered_back_projection", "FBP"),
        ("IR", "IR"),
        ("SAFIRE 3", "IR"),
        ("ADMIRE_2", "IR"),
        ("iDose4", "IR"),
        ("ASiR-V", "IR"),
        ("AIDR 3D", "IR"),
        ("OC", "OC"),
        ("OPT", "OC"),
        ("Optimum Contrast", "OC"),
        ("T2W", None),
        ("120kVp", None),
        ("mono", None),
        ("M5", None),
        ("M200", None),
        ("liver_mask", None),
    ],
)
def test_reconstruction_names_are_canonicalised(name, recon):
    assert canonical_recon(name) == recon


def test_folder_spellings_do_not_change_the_index(copy, loaded):
    exam = dicom_exam(copy)
    (exam / "M40").rename(exam / "mono_40keV")
    (exam / "IR").rename(exam / "ADMIRE 3")
    (exam / "OC").rename(exam / "OPT")
    assert cohort(copy).index().equals(loaded[0])


# --------------------------------------------------------------------------------------------
# The twin's knobs
# --------------------------------------------------------------------------------------------


def test_strength_scales_the_reconstructions_departure_from_80_kev():
    for recon in RECONS:
        neutral = hu_values(recon, strength=0.0, difficulty=0.5)
        assert neutral == hu_values("M80", strength=0.0, difficulty=0.5)
        assert signature(recon, 0.0, neutral) == signature("M80", 0.0, neutral)
    m40 = hu_values("M40", strength=1.0, difficulty=0.5)
    assert m40[LIVER] > 1.8 * hu_values("M80", strength=1.0, difficulty=0.5)[LIVER]


def test_difficulty_fades_the_liver_towards_muscle():
    for recon in RECONS:
        easy, hard = hu_values(recon, 1.0, 0.0), hu_values(recon, 1.0, 1.0)
        assert hard[LIVER] - hard[MUSCLE] < 0.5 * (easy[LIVER] - easy[MUSCLE])


# --------------------------------------------------------------------------------------------
# The protocol's splits
# --------------------------------------------------------------------------------------------


def test_the_protocol_keeps_an_exams_reconstructions_on_one_side(loaded):
    index, _ = loaded
    many = pd.concat([index.assign(patient=index["patient"] + f"-{k}") for k in range(4)], ignore_index=True)
    splits = split_patients(many, seed=7, domains=list(RECONS))
    sides = {
        (patient, recon): part
        for recon, split in splits.items()
        for part in ("train", "val", "test")
        for patient in getattr(split, part)
    }
    for patient in set(many["patient"]):
        assert len({sides[patient, recon] for recon in RECONS}) == 1


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------


def test_planted_identifiers_and_exam_names_never_leave_the_loader(copy):
    secrets = {e.name for e in exams(copy)}
    for path in copy.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        secrets |= {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}
    assert len(secrets) >= EXAMS + 6
    truncate_fbp_slice(copy)
    c = cohort(copy, on_unreadable="skip")
    index = c.index()
    items = c.load(list(index["patient"]))
    assert c.unreadable
    shown = index.to_csv() + " ".join(items.patients) + " ".join(items.domains) + repr(c.unreadable)
    for secret in secrets:
        assert secret not in shown


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def truncate_fbp_slice(root: Path) -> str:
    path = sorted((dicom_exam(root) / "FBP").glob("*.dcm"))[3]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def unknown_recon_folder(root: Path) -> str:
    folder = dicom_exam(root) / "T2W"
    shutil.copytree(dicom_exam(root) / "FBP", folder)
    return f"{folder}: unknown reconstruction name 'T2W'; accepted: FBP"


def drop_mask(root: Path) -> str:
    exam = dicom_exam(root)
    (exam / "liver_mask.nii.gz").unlink()
    return f"{exam}: no liver mask"


def drop_reference(root: Path) -> str:
    exam = nifti_exam(root)
    (exam / "mono80keV.nii.gz").unlink()
    return f"{exam}: no M80 reconstruction"


def mask_of_another_size(root: Path) -> str:
    path = dicom_exam(root) / "liver_mask.nii.gz"
    mask = sitk.ReadImage(str(path))
    sitk.WriteImage(mask[:, :, :-1], str(path))
    return f"{path}: the liver mask is"


def recon_of_another_size(root: Path) -> str:
    path = nifti_exam(root) / "fbp.nii.gz"
    volume = sitk.ReadImage(str(path))
    sitk.WriteImage(volume[:-2, :, :], str(path))
    return f"{path}: reconstruction FBP is"


def mask_off_the_grid(root: Path) -> str:
    path = nifti_exam(root) / "liver_mask.nii.gz"
    mask = sitk.ReadImage(str(path))
    mask.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))  # the rows stay reversed, the geometry no longer says so
    sitk.WriteImage(mask, str(path))
    return f"{path}: the liver mask does not lie on the grid"


def seg_of_another_exam(root: Path) -> str:
    target = dicom_exam(root)
    (target / "liver_mask.nii.gz").unlink()
    shutil.copytree(dicom_exam(root, seg=True) / "liver_mask", target / "liver_mask")
    return f"{target / 'liver_mask' / '1-1.dcm'}: the SEG segments series"


def doubled_recon(root: Path) -> str:
    exam = nifti_exam(root)
    shutil.copy(exam / "mono80keV.nii.gz", exam / "M80.nii.gz")
    return f"{exam / 'mono80keV.nii.gz'}: reconstruction M80 is also given by M80.nii.gz"


@pytest.mark.parametrize(
    "damage",
    [
        truncate_fbp_slice,
        unknown_recon_folder,
        drop_mask,
        drop_reference,
        mask_of_another_size,
        recon_of_another_size,
        mask_off_the_grid,
        seg_of_another_exam,
        doubled_recon,
    ],
)
def test_malformed_input_is_a_one_line_data_error_naming_the_file(copy, damage):
    assert_one_line_data_error(damage(copy), lambda: load_all(copy))


def test_unreadable_files_are_skipped_and_recorded_when_asked(copy, loaded):
    truncate_fbp_slice(copy)
    mask = nifti_exam(copy) / "liver_mask.nii.gz"
    mask.write_bytes(mask.read_bytes()[:300])
    c = cohort(copy, on_unreadable="skip")
    index = c.index()
    assert index.equals(loaded[0]), "nothing is read when indexing"
    items = c.load(list(index["patient"]))
    damaged, lost = (pseudonymize(e.name, "ct_recon") for e in (dicom_exam(copy), nifti_exam(copy)))
    assert lost not in set(items.patients), "an exam whose mask is unreadable gives no items"
    assert set(items.of_patients([damaged]).domains) == set(RECONS) - {"FBP"}
    assert len(items.of_patients([damaged])) == len(loaded[1].of_patients([damaged])) * 5 // 6
    assert sorted(r.patient for r in c.unreadable) == sorted([damaged, lost])


def test_check_root_says_what_is_expected(copy, tmp_path):
    ReconCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder"):
        ReconCohort.check_root(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no exam folders .*docs/data/ct_recon\.md"):
        ReconCohort.check_root(empty)
    first = exams(copy)[0]
    for entry in first.iterdir():
        if "mask" not in entry.name:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    with pytest.raises(DataError, match="no reconstructions"):
        ReconCohort.check_root(copy)
