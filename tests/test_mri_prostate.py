"""The mri_prostate cohort: its loader read against its synthetic twin, and its errors on malformed copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from cohort_checks import assert_one_line_data_error, index_and_items, private_copy

from harmonia.api import TwinSettings
from harmonia.errors import DataError
from harmonia.privacy import pseudonymize
from harmonia_plugins.cohorts.mri_prostate import MriProstateCohort

PATIENTS = 3
SMALL = {"image_size": 48, "spacing_mm": 3.0}
MARKSHEET = Path("picai_labels/clinical_information/marksheet.csv")
HUMAN = Path("picai_labels/csPCa_lesion_delineations/human_expert/resampled")
AI = Path("picai_labels/csPCa_lesion_delineations/AI/Bosma22a")


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, Path]:
    """Twins of the same phantoms with and without scanner signatures, and an easy and a hard one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARMONIA_CACHE", str(tmp_path_factory.mktemp("cache")))
        settings = {
            "signed": TwinSettings(patients=PATIENTS, strength=1.0),
            "neutral": TwinSettings(patients=PATIENTS, strength=0.0),
            "easy": TwinSettings(patients=2, seed=3, difficulty=0.0),
            "hard": TwinSettings(patients=2, seed=3, difficulty=1.0),
        }
        roots = {}
        for name, twin in settings.items():
            roots[name] = tmp_path_factory.mktemp(f"prostate-{name}")
            MriProstateCohort.write_twin(roots[name], twin)
        return roots


@pytest.fixture
def twin(twins) -> Path:
    return twins["signed"]


@pytest.fixture
def copy(twin, tmp_path) -> Path:
    """A private copy of the twin that a test may damage."""
    return private_copy(twin, tmp_path, "picai")


def cohort(root: Path, **params) -> MriProstateCohort:
    return MriProstateCohort(MriProstateCohort.Params(**{**SMALL, **params}), root)


def load_all(root: Path, **params):
    return index_and_items(cohort(root, **params))


def marksheet(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / MARKSHEET, index_col=0, dtype={"patient_id": str, "study_id": str})


def t2w_files(root: Path) -> dict[str, Path]:
    """Case name (<pid>_<sid>) -> its T2W file."""
    return {p.name[: -len("_t2w.mha")]: p for p in sorted(root.rglob("*_t2w.mha"))}


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def set_header(path: Path, key: str, value: str | None) -> None:
    """Rewrite an MHA with one header key changed (None removes it)."""
    image = sitk.ReadImage(str(path))
    if value is None:
        image.EraseMetaData(key)
    else:
        image.SetMetaData(key, value)
    sitk.WriteImage(image, str(path), useCompression=True)


def positive_case_without_human_mask(root: Path) -> str:
    table = marksheet(root)
    cases = table["patient_id"] + "_" + table["study_id"]
    missing = [
        c for c, v in zip(cases, table["case_csPCa"]) if v == "YES" and not (root / HUMAN / f"{c}.nii.gz").exists()
    ]
    assert len(missing) == 1
    return missing[0]


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_twin_round_trip_gives_both_domains_and_classes(twin):
    index, items = load_all(twin)
    assert list(index.columns) == ["patient", "domain", "stratum"]
    assert index["domain"].value_counts().to_dict() == {"Siemens": PATIENTS, "Other": PATIENTS}
    assert set(index["stratum"]) == {"csPCa", "no csPCa"}
    assert items.images.dtype == torch.float32 and items.targets.dtype == torch.int64
    assert items.images.shape[1:] == (1, 48, 48) and items.targets.ndim == 1
    assert set(items.targets.tolist()) == {0, 1}
    assert set(items.domains) == {"Siemens", "Other"} and set(items.patients) == set(index["patient"])
    assert torch.isfinite(items.images).all()
    assert items.images.min() >= 0 and 200 < items.images.max() < 5000, "native MRI units, not z-scored"


def test_items_are_every_t2w_slice_flagged_by_its_human_mask(twin):
    _, items = load_all(twin)
    without = positive_case_without_human_mask(twin)
    expected: dict[str, list[int]] = {}
    for case, path in t2w_files(twin).items():
        if case == without:
            continue
        mask = read(twin / HUMAN / f"{case}.nii.gz")
        assert mask.shape == read(path).shape
        flags = mask.reshape(len(mask), -1).any(axis=1).astype(int).tolist()
        expected.setdefault(pseudonymize(case.split("_")[0], "mri_prostate"), []).extend(flags)
    for patient, flags in expected.items():
        assert items.of_patients([patient]).targets.tolist() == flags
    assert len(items) == sum(len(f) for f in expected.values())


def test_lesion_masks_parameter_adds_the_ai_annotated_case(twin):
    case = positive_case_without_human_mask(twin)
    patient = pseudonymize(case.split("_")[0], "mri_prostate")
    plain = cohort(twin)
    plain.index()
    assert plain.exclusion_counts() == {"case without a lesion mask in human_expert/resampled": 1}
    assert pseudonymize(case, "mri_prostate") in plain.excluded
    both = cohort(twin, lesion_masks=["human_expert/resampled", "AI/Bosma22a"])
    assert len(both.load([patient])) == len(plain.load([patient])) + len(read(t2w_files(twin)[case]))
    assert both.load([patient]).targets.sum() > 0
    assert both.index().set_index("patient").loc[patient, "stratum"] == "csPCa"
    ai_only = cohort(twin, lesion_masks=["AI/Bosma22a"])
    assert len(ai_only.index()) == 2 * PATIENTS


def test_geometry_follows_the_parameters(twin):
    patient = cohort(twin).index()["patient"].iloc[0]
    fine = cohort(twin, image_size=96, spacing_mm=1.5).load([patient])
    coarse = cohort(twin, image_size=48, spacing_mm=3.0).load([patient])
    assert fine.images.shape[-2:] == (96, 96) and coarse.images.shape[-2:] == (48, 48)
    assert torch.equal(fine.targets, coarse.targets)
    # the same 144 mm field of view: the mean signal agrees
    assert float(fine.images.mean()) == pytest.approx(float(coarse.images.mean()), rel=0.05)


def test_difficulty_shrinks_lesions(twins):
    sets = ["human_expert/resampled", "AI/Bosma22a"]
    fraction = {k: float(load_all(twins[k], lesion_masks=sets)[1].targets.float().mean()) for k in ("easy", "hard")}
    assert fraction["easy"] > 1.5 * fraction["hard"] > 0


# --------------------------------------------------------------------------------------------
# Vendors
# --------------------------------------------------------------------------------------------


def appearance_gap(root: Path) -> float:
    """How far apart the two domains' images look once z-scored (what a model sees): the difference of the
    domains' mean roughness (mean absolute step between neighbouring pixels), in units of its spread."""
    _, items = load_all(root)
    z = items.images[:, 0]
    z = (z - z.mean(dim=(1, 2), keepdim=True)) / z.std(dim=(1, 2), keepdim=True)
    rough = (z[:, :, 1:] - z[:, :, :-1]).abs().mean(dim=(1, 2)).numpy()
    a, b = rough[items.domains == "Siemens"], rough[items.domains == "Other"]
    return float(abs(a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2))


def test_scanner_signatures_make_the_domains_look_different(twins):
    """Noise level and texture, k-space blur and contrast differ between vendors; z-scoring does not undo them."""
    signed, neutral = appearance_gap(twins["signed"]), appearance_gap(twins["neutral"])
    assert neutral < 0.5, f"without signatures the domains should look alike: {neutral:.3f}"
    assert signed > 1.5, f"with signatures the domains should differ: {signed:.3f}"


def test_vendor_comes_from_the_t2w_header(copy, twin):
    headers = {case: sitk.ReadImage(str(p)).GetMetaData("0008|0070") for case, p in t2w_files(copy).items()}
    assert set(headers.values()) == {"SIEMENS", "Philips Medical Systems"}
    case = next(c for c, v in headers.items() if v.startswith("Philips"))
    set_header(t2w_files(copy)[case], "0008|0070", "Siemens Healthineers")
    patient = pseudonymize(case.split("_")[0], "mri_prostate")
    domains = cohort(copy).index().set_index("patient")["domain"]
    assert domains[patient] == "Siemens"
    assert domains.value_counts().to_dict() == {"Siemens": PATIENTS + 1, "Other": PATIENTS - 1}


def test_a_patient_scanned_on_both_vendors_stays_in_one_domain(copy):
    table = marksheet(copy)
    twice = table["patient_id"].value_counts().idxmax()
    first, second = sorted(table.loc[table["patient_id"] == twice, "study_id"])
    files = t2w_files(copy)
    assert sitk.ReadImage(str(files[f"{twice}_{first}"])).GetMetaData("0008|0070") == "SIEMENS"
    set_header(files[f"{twice}_{second}"], "0008|0070", "Philips Medical Systems")
    c = cohort(copy)
    patient = pseudonymize(twice, "mri_prostate")
    assert c.index().set_index("patient").loc[patient, "domain"] == "Siemens"
    assert len(c.load([patient])) == len(read(files[f"{twice}_{first}"]))


# --------------------------------------------------------------------------------------------
# Privacy
# --------------------------------------------------------------------------------------------


def test_raw_ids_and_planted_header_names_never_leave_the_loader(twin):
    headers = [sitk.ReadImage(str(p)) for p in t2w_files(twin).values()]
    planted = {h.GetMetaData(k) for h in headers for k in ("0010|0010", "0010|0020", "0010|0030")}
    table = marksheet(twin)
    secrets = planted | set(table["patient_id"]) | set(table["study_id"])
    assert any("^" in s for s in planted) and len(secrets) > 2 * PATIENTS
    index, items = load_all(twin)
    shown = index.to_csv() + " ".join(items.patients) + " ".join(items.domains)
    for secret in secrets:
        assert secret not in shown
    assert all(p.startswith("p") and len(p) == 17 for p in index["patient"])


# --------------------------------------------------------------------------------------------
# Malformed copies
# --------------------------------------------------------------------------------------------


def first_case(root: Path) -> tuple[str, Path]:
    case, path = next((c, p) for c, p in t2w_files(root).items() if (root / HUMAN / f"{c}.nii.gz").exists())
    return case, path


def drop_marksheet(root: Path) -> str:
    (root / MARKSHEET).unlink()
    return "marksheet.csv"


def drop_outcome_column(root: Path) -> str:
    marksheet(root).drop(columns="case_csPCa").to_csv(root / MARKSHEET)
    return "case_csPCa"


def bad_outcome(root: Path) -> str:
    table = marksheet(root)
    table.loc[0, "case_csPCa"] = "maybe"
    table.to_csv(root / MARKSHEET)
    return "marksheet.csv line 2"


def case_listed_twice(root: Path) -> str:
    table = marksheet(root)
    pd.concat([table, table.iloc[[0]]]).to_csv(root / MARKSHEET)
    return "listed a second time"


def case_not_listed(root: Path) -> str:
    case, path = first_case(root)
    table = marksheet(root)
    table[table["patient_id"] + "_" + table["study_id"] != case].to_csv(root / MARKSHEET)
    return path.name


def vendor_key_absent(root: Path) -> str:
    _, path = first_case(root)
    set_header(path, "0008|0070", None)
    return path.name


def truncate_t2w(root: Path) -> str:
    _, path = first_case(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path.name


def shrink_mask(root: Path) -> str:
    case, _ = first_case(root)
    path = root / HUMAN / f"{case}.nii.gz"
    mask = sitk.ReadImage(str(path))
    sitk.WriteImage(mask[:, :, :-1], str(path))
    return path.name


def duplicate_image_folds(root: Path) -> str:
    case, path = first_case(root)
    extra = root / "images" / path.parent.parent.name / path.parent.name
    extra.mkdir(parents=True)
    shutil.copy(path, extra / path.name)
    return path.name


@pytest.mark.parametrize(
    "damage",
    [
        drop_marksheet,
        drop_outcome_column,
        bad_outcome,
        case_listed_twice,
        case_not_listed,
        vendor_key_absent,
        truncate_t2w,
        shrink_mask,
        duplicate_image_folds,
    ],
)
def test_malformed_input_is_a_one_line_data_error_naming_the_culprit(copy, damage):
    assert_one_line_data_error(damage(copy), lambda: load_all(copy))


@pytest.mark.parametrize("damage, reason", [(truncate_t2w, "truncated"), (vendor_key_absent, "0008|0070")])
def test_unreadable_files_are_recorded_and_skipped_when_asked(copy, damage, reason):
    culprit = damage(copy)
    case = culprit[: -len("_t2w.mha")]
    raw_patient = case.split("_")[0]
    c = cohort(copy, on_unreadable="skip")
    index = c.index()
    items = c.load(list(index["patient"]))
    assert len(c.unreadable) == 1
    record = c.unreadable[0]
    assert reason in record.reason and record.patient == pseudonymize(raw_patient, "mri_prostate")
    assert raw_patient not in record.file and record.file == c.file_reference(t2w_files(copy)[case], record.patient)
    assert set(items.domains) == {"Siemens", "Other"} and len(items) > 0
    assert len(items) == sum(
        len(read(p)) for k, p in t2w_files(copy).items() if k != case and (copy / HUMAN / f"{k}.nii.gz").exists()
    )


def test_check_root_says_what_is_missing_and_how_to_get_it(copy, tmp_path):
    MriProstateCohort.check_root(copy)
    with pytest.raises(DataError, match="not a folder"):
        MriProstateCohort.check_root(tmp_path / "nowhere")
    images_only = tmp_path / "images-only"
    shutil.copytree(copy, images_only, ignore=shutil.ignore_patterns("picai_labels"))
    with pytest.raises(DataError, match=r"no picai_labels/clinical_information/marksheet\.csv.*zenodo"):
        MriProstateCohort.check_root(images_only)
    for fold in copy.glob("picai_public_images_fold*"):
        shutil.rmtree(fold)
    with pytest.raises(DataError, match="no T2W images"):
        MriProstateCohort.check_root(copy)


# --------------------------------------------------------------------------------------------
# Layout variants
# --------------------------------------------------------------------------------------------


def test_folds_unpacked_into_one_folder_and_labels_from_the_github_zip_are_read(copy, twin):
    expected = cohort(twin).index()
    (copy / "images").mkdir()
    for fold in sorted(copy.glob("picai_public_images_fold*")):
        for patient in fold.iterdir():
            shutil.move(patient, copy / "images" / patient.name)
        fold.rmdir()
    table = marksheet(copy)
    (copy / "picai_labels").rename(copy / "picai_labels-main")
    table.to_csv(copy / "picai_labels-main/clinical_information/marksheet.csv", index=False)
    MriProstateCohort.check_root(copy)
    assert cohort(copy).index().equals(expected)


def test_images_and_labels_one_level_down_are_found(copy, twin, tmp_path):
    expected = cohort(twin).index()
    nested = tmp_path / "outer"
    nested.mkdir()
    shutil.move(copy, nested / "picai")
    MriProstateCohort.check_root(nested)
    assert cohort(nested).index().equals(expected)
