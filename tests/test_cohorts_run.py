"""Every first-party cohort through the real protocol on a tiny SYNTHETIC twin: it runs, and no identifier leaks.

The twins plant invented patient names, IDs and birth dates in DICOM, MHA and NIfTI headers and in
their spreadsheets; none of them, nor a patient folder's name, may appear in any file of the run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from harmonia import runner
from harmonia.io.dicom import looks_like_dicom

CLASSIFICATION = ["mri_breast", "mri_prostate", "ct_lidc", "ct_hnscc", "ct_kidney", "ct_oropharyngeal", "xray_chest"]
SEGMENTATION = ["mnms", "ct_recon"]
#: spreadsheet columns that hold patient identifiers in the real datasets
ID_COLUMNS = ("PatientID", "patient_id", "Patient ID", "Trial PatientID", "ID", "External code")
#: cohort parameters that keep items small, so each run takes seconds
SMALL = {
    "mnms": {"image_size": 32, "spacing_mm": 4.0, "phases": ["ED"], "domains": ["Siemens", "Philips"]},
    "mri_prostate": {"image_size": 32, "spacing_mm": 4.0},
    "ct_hnscc": {"image_size": 32, "spacing_mm": 6.0},
    "ct_kidney": {"image_size": 32, "spacing_mm": 8.0},
    "ct_oropharyngeal": {"roi_size": 16, "spacing_mm": 3.0},
    "xray_chest": {"image_size": 32},
    "ct_recon": {"image_size": 32, "spacing_mm": 8.0, "domains": ["FBP", "M80"]},
}


def planted_identifiers(twin: Path) -> set[str]:
    """Every patient name, ID and birth date the twin wrote into headers and sheets, and its top patient folders."""
    found: set[str] = set()
    for path in twin.rglob("*"):
        if not path.is_file():
            continue
        if looks_like_dicom(path):
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            found |= {str(header.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate")}
        elif path.suffix == ".mha":
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            found |= {reader.GetMetaData(k) for k in reader.GetMetaDataKeys() if k.startswith("0010|")}
        elif path.name.endswith((".nii", ".nii.gz")):  # M&Ms: the description holds a name and the patient code
            found |= set(nib.load(path).header["descrip"].item().decode(errors="ignore").split())
        elif path.suffix in (".csv", ".xlsx"):
            sheet = pd.read_csv(path, dtype=str) if path.suffix == ".csv" else pd.read_excel(path, dtype=str)
            found |= {str(v) for c in ID_COLUMNS if c in sheet for v in sheet[c].dropna()}
    return {f for f in found if len(f) >= 4}


def run_tiny(cohort: str, registry, tmp_path: Path, model: str, metric: str):
    recipe = {
        "name": f"tiny_{cohort}",
        "cohort": {"plugin": cohort, "params": SMALL.get(cohort, {}), "synthetic": {"patients": 4, "seed": 2}},
        "model": {"plugin": model},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seeds": 1, "device": "cpu"},
        "evaluate": [metric],
    }
    return runner.run(recipe, out=tmp_path / "run", registry=registry)


@pytest.mark.parametrize("cohort", [*CLASSIFICATION, *SEGMENTATION])
def test_cohort_runs_the_protocol_and_leaks_no_identifier(cohort, registry, tmp_path):
    segmentation = cohort in SEGMENTATION
    run = run_tiny(
        cohort,
        registry,
        tmp_path,
        *(("toynet", "pixel_accuracy") if segmentation else ("toy_classifier", "item_accuracy")),
    )
    results = run.results
    domains = list(dict.fromkeys(results["train_domain"]))
    assert len(domains) == 2 and set(results["test_domain"]) == set(domains)
    assert set(results["data"]) == {"synthetic"} and results["value"].between(0, 1).all()

    twin = Path(run.manifest["data_provenance"][cohort]["root"])
    secrets = planted_identifiers(twin)
    secrets |= {
        p.name
        for p in twin.rglob("*")
        if p.is_dir() and re.search(r"\d{3}", p.name) and len(p.parents) - len(twin.parents) <= 3
    }
    assert secrets, "the twin should plant identifiers for this test to mean anything"
    written = "\n".join(p.read_text(errors="ignore") for p in run.path.rglob("*") if p.is_file() and p.suffix != ".png")
    leaked = {s for s in secrets if re.search(rf"(?<![\w.]){re.escape(s)}(?![\w])", written)}
    assert not leaked, f"identifiers in the run folder: {sorted(leaked)[:5]}"
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    if cohort == "ct_lidc":  # its twin holds one patient whose only nodule is rated 3
        assert manifest["excluded_patients"] == {"ct_lidc": {"no nodule rated 1 or 5": 1}}


def test_a_skipped_file_named_after_a_person_leaves_no_name_in_the_run(registry, tmp_path):
    from harmonia.api import TwinSettings
    from harmonia_plugins.cohorts.xray_chest import XrayChestCohort

    root = tmp_path / "brax"
    root.mkdir()
    XrayChestCohort.write_twin(root, TwinSettings(patients=4, seed=2))
    sheet_path = root / "master_spreadsheet_update.csv"
    sheet = pd.read_csv(sheet_path, dtype=str)
    image = root / sheet.loc[0, "PngPath"]
    named = image.with_name("DOEJOHN_003.png")
    named.write_bytes(image.read_bytes()[:200])
    sheet.loc[0, "PngPath"] = str(named.relative_to(root))
    sheet.to_csv(sheet_path, index=False)
    recipe = {
        "name": "tiny_unreadable",
        "cohort": {
            "plugin": "xray_chest",
            "root": str(root),
            "params": {**SMALL["xray_chest"], "on_unreadable": "skip"},
        },
        "model": {"plugin": "toy_classifier"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seeds": 1, "device": "cpu"},
        "evaluate": ["item_accuracy"],
    }
    run = runner.run(recipe, out=tmp_path / "run", registry=registry)
    listed = pd.read_csv(run.path / "unreadable.csv", dtype=str)
    assert len(listed) == 1 and listed["file"][0].startswith(f"{listed['patient'][0]}/file-")
    written = "\n".join(p.read_text(errors="ignore") for p in run.path.rglob("*") if p.is_file() and p.suffix != ".png")
    assert "DOEJOHN" not in written and sheet.loc[0, "PatientID"] not in written
