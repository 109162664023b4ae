"""The ct_standardizer mitigation (seed 003) and ``harmonia standardize``: pairs from train splits only, the
trained generator kept with the run, and DICOM in, derived DICOM out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.data import get_testdata_file

from harmonia import cli, runner
from harmonia.api import ImageSet, Task, TwinSettings
from harmonia.protocol import load_cohort, split_seed
from harmonia.recipe import load_recipe
from harmonia.registry import default_registry
from harmonia.splits import split_patients
from harmonia.standardizer import checkpoint_sha256, load_standardizer
from harmonia_plugins.cohorts.ct_recon import ReconCohort
from harmonia_plugins.mitigations import ct_standardizer
from harmonia_plugins.mitigations.ct_standardizer import CTStandardizer

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = Task("segmentation", ("background", "liver"))
TINY = {"generator": {"features": 4, "blocks": 1, "growth": 4}, "discriminator_features": 4, "patch_size": 16}
RECIPE = {
    "name": "tiny_standardizer",
    "cohort": {
        "plugin": "ct_recon",
        "params": {"image_size": 32, "spacing_mm": 10.0, "domains": ["M40", "M80"]},
        "train_domains": ["M80"],
        "synthetic": {"patients": 4},
    },
    "model": {"plugin": "unet2d", "params": {"channels": [4, 8]}},
    "train": {"epochs": 1, "batch_size": 8, "seeds": 1},
    "evaluate": ["dice", "volume_agreement", "image_quality"],
    "mitigations": [{"plugin": "ct_standardizer", "params": {**TINY, "stage1_steps": 3, "stage2_steps": 1}}],
}


def image_set(patients: list[str], domain: str, counts: list[int], offset: float) -> ImageSet:
    """Items numbered within each patient (value = offset + patient index * 10 + item index), one domain."""
    images, names = [], []
    for i, (patient, count) in enumerate(zip(patients, counts)):
        images += [torch.full((1, 8, 8), offset + 10 * i + k) for k in range(count)]
        names += [patient] * count
    return ImageSet(torch.stack(images), None, np.array(names, dtype=object), np.array([domain] * len(names)))


def test_paired_mode_pairs_each_slice_with_the_same_patients_slice_in_the_training_domain():
    mitigation = CTStandardizer(CTStandardizer.Params(), TASK)
    reference = image_set(["p1", "p2"], "M80", [3, 2], offset=0)
    other = image_set(["p1", "p2"], "FBP", [3, 4], offset=1000)  # p2 has other slices in FBP: no pairs
    sources, targets = mitigation._pairs(reference, other)
    assert torch.equal(targets[:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(sources[:, 0, 0, 0], torch.tensor([1000.0, 1001.0, 1002.0]))
    assert mitigation.unpaired_patients == 1


def test_paired_mode_on_a_cohort_without_pairs_says_to_use_unpaired():
    mitigation = CTStandardizer(CTStandardizer.Params(), TASK)
    with pytest.raises(ValueError, match="not paired; use mode: unpaired"):
        mitigation._pairs(image_set(["p1"], "A", [2], 0), image_set(["q1"], "B", [2], 5))


def test_unpaired_mode_learns_to_undo_simulated_acquisition_differences_of_the_training_domain():
    params = CTStandardizer.Params(mode="unpaired", degrade={"photons": (1e3, 1e3), "downsample": (2, 2)})
    mitigation = CTStandardizer(params, TASK)
    reference = image_set(["p1"], "M80", [2], offset=0)
    reference.images[:, :, 2:6, 2:6] = 300.0  # something for the degradation to blur and make noisy
    sources, targets = mitigation._pairs(reference, None)
    assert targets is reference.images and sources.shape == targets.shape
    assert not torch.allclose(sources, targets, atol=1.0)


def test_the_standardizer_is_fitted_on_train_splits_kept_with_the_run_and_recorded(tmp_path, monkeypatch):
    seen: list = []
    original = ct_standardizer.train_standardizer

    def spy(sources, targets, settings, device):
        seen.append((len(sources), len(targets)))
        return original(sources, targets, settings, device=device)

    real_pairs = CTStandardizer._pairs

    def spy_pairs(self, train, target_train):
        seen.append(set(train.patients) | set(target_train.patients))
        return real_pairs(self, train, target_train)

    monkeypatch.setattr(ct_standardizer, "train_standardizer", spy)
    monkeypatch.setattr(CTStandardizer, "_pairs", spy_pairs)
    run = runner.run(RECIPE, out=tmp_path / "run")

    point = load_recipe(RECIPE).points[0]
    data = load_cohort(point.recipe.cohort, default_registry())
    splits = split_patients(data.index, split_seed(point, 0), data.domains)
    train_patients = set(splits["M80"].train) | set(splits["M40"].train)
    assert seen[0] == train_patients
    assert not seen[0] & (set(splits["M80"].test) | set(splits["M80"].val))
    n_train = len(data.items.of_patients(splits["M80"].train, "M80"))
    assert seen[1] == (n_train, n_train)  # every M40 train slice paired with its M80 slice

    cell = run.manifest["cells"][0]
    assert cell["ct_standardizer.pairs"] == n_train and cell["ct_standardizer.vgg"].startswith("random")
    saved = sorted((run.path / "artifacts").glob("*.pt"))
    assert [p.name for p in saved] == ["sweep0-seed0-M80-ct_standardizer.pt"]
    assert load_standardizer(saved[0]).window == (-1000.0, 1000.0)
    metrics = set(run.results["metric"])
    assert {"psnr", "ssim", "volume_ccc", "dice"} <= metrics
    assert (run.path / "patients.csv").is_file()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny standardizer trained a few steps on smooth slices, saved."""
    from harmonia.standardizer import StandardizerSettings, save_standardizer, train_standardizer

    sources = torch.linspace(-200, 200, 32 * 32).reshape(1, 1, 32, 32).repeat(4, 1, 1, 1)
    settings = StandardizerSettings(**TINY, stage1_steps=3, stage2_steps=0, hu_window=(-1024, 1024))
    standardizer, _ = train_standardizer(sources, sources * 0.9 + 20, settings)
    return save_standardizer(standardizer, tmp_path_factory.mktemp("ckpt") / "std.pt")


def test_standardize_writes_a_derived_series_whose_hu_are_what_the_model_produced(checkpoint, tmp_path, capsys):
    source = Path(get_testdata_file("CT_small.dcm"))
    series = tmp_path / "in"
    series.mkdir()
    (series / "1.dcm").write_bytes(source.read_bytes())
    assert cli.main(["standardize", str(checkpoint), str(series), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "1 series written" in out and "CompressedSamples^CT1" not in out  # no patient name on the console

    written = [pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")]
    assert len(written) == 1
    derived, original = written[0], pydicom.dcmread(source)
    assert list(derived.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert derived.SeriesInstanceUID != original.SeriesInstanceUID
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert checkpoint_sha256(checkpoint) in derived.DerivationDescription
    hu = original.pixel_array * float(original.RescaleSlope) + float(original.RescaleIntercept)
    expected = load_standardizer(checkpoint).apply_hu(torch.from_numpy(hu.astype(np.float32))[None, None])[0, 0]
    got = derived.pixel_array * float(derived.RescaleSlope) + float(derived.RescaleIntercept)
    assert np.abs(got - expected.numpy()).max() <= float(derived.RescaleSlope)
    assert list(derived.ImagePositionPatient) == list(original.ImagePositionPatient)
    written_image, source_image = (sitk.ReadImage(str(p)) for p in (next((tmp_path / "out").rglob("*.dcm")), source))
    assert np.allclose(written_image.GetOrigin(), source_image.GetOrigin())
    assert np.allclose(written_image.GetSpacing(), source_image.GetSpacing())
    assert np.abs(sitk.GetArrayFromImage(written_image)[0] - expected.numpy()).max() <= float(derived.RescaleSlope)


def test_standardize_with_nothing_readable_is_exit_2_and_a_tampered_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no DICOM here")
    assert cli.main(["standardize", str(checkpoint), str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "no CT series could be standardized" in capsys.readouterr().err
    tampered = tmp_path / "std.pt"
    tampered.write_bytes(checkpoint.read_bytes()[:-8] + b"tampered")
    (tmp_path / "std.json").write_text(checkpoint.with_suffix(".json").read_text())
    assert cli.main(["standardize", str(tampered), str(empty), "--out", str(tmp_path / "out2")]) == 2
    error = capsys.readouterr().err
    assert "SHA-256" in error and "std.json" in error and error.count("\n") == 1


def test_standardize_a_twin_ct_series_keeps_its_geometry_for_simpleitk(checkpoint, tmp_path):
    ReconCohort.write_twin(tmp_path / "twin", TwinSettings(patients=2, seed=0))
    series = next(p for p in sorted((tmp_path / "twin").rglob("FBP")) if p.is_dir() and any(p.glob("*.dcm")))
    assert cli.main(["standardize", str(checkpoint), str(series), "--out", str(tmp_path / "out")]) == 0
    (derived,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]

    def read(folder: Path) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return reader.Execute()

    source, written = read(series), read(derived)
    assert written.GetSize() == source.GetSize()
    assert np.allclose(written.GetOrigin(), source.GetOrigin()) and np.allclose(
        written.GetSpacing(), source.GetSpacing()
    )
    assert np.allclose(written.GetDirection(), source.GetDirection())
    hu = sitk.GetArrayFromImage(source).astype(np.float32)
    expected = load_standardizer(checkpoint).apply_hu(torch.from_numpy(hu)[:, None])[:, 0].numpy()
    step = float(pydicom.dcmread(next(derived.glob("*.dcm"))).RescaleSlope)
    assert np.abs(sitk.GetArrayFromImage(written) - expected).max() <= step
