"""Derived CT series: geometry, patient, HU and stored type kept; new UIDs, DERIVED headers, no identifiers logged."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from harmonia.derived_series import StandardizeResult, standardize_series_folder
from harmonia.errors import InputError

PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "Doe^Jane", "MRN-QX7Z", "19610203"
#: words that identify the planted patient; none may reach a log line, the result or an output name
IDENTIFIERS = ("Doe", "Jane", "QX7Z", BIRTH_DATE)
DERIVATION = "harmonia 0.1.0, standardizer 0123abcd"
SUFFIX = " harmonia standardized"
#: an orientation other than identity: rows along y, columns along -z, slices stacked along -x
ORIENTATION = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
ORIGIN = np.array([12.5, -40.0, 80.0])


def halve(volume: np.ndarray) -> np.ndarray:
    return volume * 0.5 + 10


def write_series(
    folder: Path,
    *,
    modality: str = "CT",
    slices: int = 4,
    bits_stored: int = 16,
    signed: bool = True,
    slope: float = 1.0,
    intercept: float = -1024.0,
    syntax: str | None = None,
    padding: int | None = None,
    description: str = "CHEST 1.0 B30f",
    seed: int = 0,
) -> list[Dataset]:
    """A small CT (or other) series of 32×32 slices carrying the planted patient; files named after the patient and
    numbered against the spatial order. Returns the datasets in spatial order (pixels as written, uncompressed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1)) if signed else (0, 2**bits_stored)
    dtype = np.int16 if signed else np.uint16
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    normal = np.cross(ORIENTATION[:3], ORIENTATION[3:])
    written = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
            ds.SOPClassUID,
            ds.SOPInstanceUID,
        )
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = modality, description, 3, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = ORIENTATION
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + 2.5 * k * normal]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.8], 2.5
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            16,
            bits_stored,
            bits_stored - 1,
            int(signed),
        )
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = rng.integers(max(low, 0), min(high, 2000), size=(32, 32)).astype(dtype)
        if padding is not None:
            ds.PixelPaddingValue = padding
            stored[:4] = padding
        ds.PixelData = stored.tobytes()
        written.append(ds)
        if syntax == ImplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        copy = pydicom.dcmread(_save(ds, folder / f"DOE_JANE_{PATIENT_ID}_{slices - k:02d}.dcm"))
        if syntax not in (None, ImplicitVRLittleEndian):
            copy.compress(syntax)
            copy.save_as(folder / f"DOE_JANE_{PATIENT_ID}_{slices - k:02d}.dcm", enforce_file_format=True)
    return written


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def hu(ds: Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def read_back(folder: Path) -> list[Dataset]:
    """The derived series in ``folder``, in spatial order (along the slice normal)."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    normal = np.cross(ORIENTATION[:3], ORIENTATION[3:])
    return sorted(datasets, key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.fixture
def derived(tmp_path):
    """A four-slice CT series with a long description below a folder named after the patient, standardized."""
    source_folder = tmp_path / "in" / f"DOE_JANE_{PATIENT_ID}" / "series3"
    sources = write_series(source_folder, description="C" * 60)
    result = standardize_series_folder(tmp_path / "in", tmp_path / "out", halve, derivation=DERIVATION)
    (written,) = result.written
    return sources, source_folder, written


def test_geometry_and_hu_survive_as_simpleitk_reads_them(derived):
    _, source_folder, written = derived
    before, after = sitk_series(source_folder), sitk_series(written.folder)
    assert after.GetSize() == before.GetSize() == (32, 32, 4)
    np.testing.assert_allclose(after.GetOrigin(), before.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(after.GetSpacing(), before.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(after.GetDirection(), before.GetDirection(), atol=1e-6)
    expected = halve(sitk.GetArrayFromImage(before).astype(float))
    assert np.abs(sitk.GetArrayFromImage(after) - expected).max() <= 1.0  # one rescale step (slope 1)


def test_headers_say_derived_and_point_at_each_source_slice(derived):
    sources, _, written = derived
    outputs = read_back(written.folder)
    assert len(outputs) == len(sources)
    assert {d.SeriesInstanceUID for d in outputs} == {written.series_uid} != {sources[0].SeriesInstanceUID}
    assert not {d.SOPInstanceUID for d in outputs} & {s.SOPInstanceUID for s in sources}
    for source, output in zip(sources, outputs):
        assert list(output.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert output.DerivationDescription == DERIVATION
        (reference,) = output.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert output.SeriesDescription.endswith(SUFFIX.strip()) and len(output.SeriesDescription) <= 64
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert output.get(keyword) == source.get(keyword), keyword
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
            assert output.get(keyword) == source.get(keyword), keyword
        for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
            assert output.get(keyword) == source.get(keyword), keyword
        assert output.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert output.file_meta.MediaStorageSOPInstanceUID == output.SOPInstanceUID
        assert np.abs(hu(output) - halve(hu(source))).max() <= 1.0


def test_no_patient_identifier_in_logs_result_or_output_names(tmp_path, caplog, capsys):
    """Folders and files named after the patient, and every kind of message: written, clipped, skipped, unreadable."""
    caplog.set_level(logging.DEBUG, logger="harmonia")
    patient = tmp_path / "in" / f"{PATIENT_NAME}_{PATIENT_ID}"
    write_series(patient / "ct", bits_stored=12, signed=False)
    write_series(patient / "mr", modality="MR")
    write_series(patient / "gap")
    next((patient / "gap").glob("*_02.dcm")).unlink()  # a missing slice: the reader's error names the folder
    (patient / f"{PATIENT_NAME}.dcm").write_bytes(b"\0" * 300)
    result = standardize_series_folder(tmp_path / "in", tmp_path / "out", lambda v: v + 3000, derivation="x")
    assert len(result.written) == 1 and len(result.skipped) == 3 and result.written[0].clipped
    assert any("unevenly spaced" in s.reason for s in result.skipped)
    texts = [caplog.text, *capsys.readouterr(), *result.lines(), repr(result)]
    texts += [str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")]
    for text in texts:
        for identifier in IDENTIFIERS:
            assert identifier not in text


def test_pydicom_ct_test_file_is_a_one_file_series(tmp_path):
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    shutil.copy(path, tmp_path / "in.dcm")
    source = pydicom.dcmread(path)
    result = standardize_series_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}-out", halve, derivation="x")
    (output,) = read_back(result.written[0].folder)
    assert output.ImageType[:2] == ["DERIVED", "SECONDARY"]
    assert output.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert np.abs(hu(output) - halve(hu(source))).max() <= 1.0


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_series_are_read_and_written_uncompressed(tmp_path, syntax):
    sources = write_series(tmp_path / "in", syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "in").glob("*.dcm"))).file_meta.TransferSyntaxUID == syntax
    result = standardize_series_folder(tmp_path / "in", tmp_path / "out", halve, derivation=DERIVATION)
    outputs = read_back(result.written[0].folder)
    for source, output in zip(sources, outputs, strict=True):
        assert output.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert "PixelData" in output and not output["PixelData"].is_undefined_length
        assert np.abs(hu(output) - halve(hu(source))).max() <= 1.0


def test_bundled_jpeg2000_ct_with_mismatched_sign_is_decoded(tmp_path):
    """pydicom's J2K_pixelrep_mismatch.dcm: a 13-bit signed CT whose JPEG 2000 stream claims unsigned."""
    path = Path(get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False))
    shutil.copy(path, tmp_path / "in.dcm")
    source = pydicom.dcmread(path)
    result = standardize_series_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}-out", halve, derivation="x")
    (output,) = read_back(result.written[0].folder)
    assert output.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (output.BitsStored, output.PixelRepresentation) == (13, 1)
    assert np.abs(hu(output) - halve(hu(source))).max() <= 1.0


def test_hu_beyond_the_stored_type_is_clipped_and_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="harmonia")
    sources = write_series(tmp_path / "in", bits_stored=12, signed=False)  # HU -1024..3071
    result = standardize_series_folder(tmp_path / "in", tmp_path / "out", lambda v: v + 3000, derivation="x")
    expected = sum(int((hu(s) + 3000 > 3071).sum()) for s in sources)
    assert expected > 0
    assert result.written[0].clipped == expected
    assert f"{expected} of {4 * 32 * 32} pixels" in caplog.text and "clipped" in caplog.text
    for source, output in zip(sources, read_back(result.written[0].folder)):
        assert hu(output).max() == 3071
        np.testing.assert_array_equal(hu(output), np.minimum(hu(source) + 3000, 3071))


def test_padding_pixels_keep_the_padding_value(tmp_path):
    """From an implicit VR source too, where PixelPaddingValue's VR (US or SS) must be resolved on writing."""
    sources = write_series(tmp_path / "in", padding=-2000, syntax=ImplicitVRLittleEndian)
    result = standardize_series_folder(tmp_path / "in", tmp_path / "out", halve, derivation="x")
    for source, output in zip(sources, read_back(result.written[0].folder)):
        assert output.PixelPaddingValue == -2000
        assert (output.pixel_array[:4] == -2000).all()
        np.testing.assert_allclose(hu(output)[4:], halve(hu(source))[4:], atol=1.0)
    assert result.written[0].clipped == 0


def test_non_ct_series_is_skipped_with_its_reason_and_the_ct_one_written(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="harmonia")
    write_series(tmp_path / "in" / "a", modality="MR")
    write_series(tmp_path / "in" / "b")
    (tmp_path / "in" / "b" / "broken.dcm").write_bytes(b"\0" * 200)
    result = standardize_series_folder(tmp_path / "in", tmp_path / "out", halve, derivation="x")
    assert isinstance(result, StandardizeResult) and len(result.written) == 1
    reasons = {s.name[:5]: s.reason for s in result.skipped}
    assert any("modality MR, not CT" in r for r in reasons.values())
    assert "file-" in reasons and "broken" not in reasons["file-"]
    assert "modality MR, not CT" in caplog.text


@pytest.mark.filterwarnings("ignore:Expected implicit VR")  # pydicom's, about the corrupt file
@pytest.mark.parametrize("content", ["mr", "corrupt", "empty"])
def test_nothing_standardizable_is_an_input_error_naming_the_input(tmp_path, content):
    source = tmp_path / "in"
    source.mkdir()
    if content == "mr":
        write_series(source, modality="MR")
    elif content == "corrupt":
        (source / "slice.dcm").write_bytes(b"DICM" * 100)
    with pytest.raises(InputError, match=f"^{source}: no CT series"):
        standardize_series_folder(source, tmp_path / "out", halve, derivation="x")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("out", [".", "derived", "sub/derived"])
def test_output_inside_the_input_is_refused(tmp_path, out):
    write_series(tmp_path / "in")
    with pytest.raises(InputError, match="inside the input folder"):
        standardize_series_folder(tmp_path / "in", tmp_path / "in" / out, halve, derivation="x")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        f"DOE_JANE_{PATIENT_ID}_{k:02d}.dcm" for k in range(1, 5)
    ]


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    write_series(tmp_path / "in")
    first = standardize_series_folder(tmp_path / "in", tmp_path / "out", halve, derivation="x").written[0]
    again = standardize_series_folder(tmp_path / "in", tmp_path / "out", lambda v: v, derivation="x")
    assert again.written == () and again.skipped[0].already_written and "overwrite" in again.skipped[0].reason
    assert read_back(first.folder)[0].SeriesInstanceUID == first.series_uid
    replaced = standardize_series_folder(tmp_path / "in", tmp_path / "out", lambda v: v, derivation="x", overwrite=True)
    assert replaced.written[0].folder == first.folder
    assert {d.SeriesInstanceUID for d in read_back(first.folder)} == {replaced.written[0].series_uid}
    assert [p.name for p in (tmp_path / "out").iterdir()] == [first.name]  # no temporary folder left behind


def test_a_failure_while_writing_leaves_no_half_series(tmp_path, monkeypatch):
    write_series(tmp_path / "in")
    save_as, saved = Dataset.save_as, []

    def disk_full_at_the_third_slice(self, *args, **kwargs):
        if len(saved) == 2:
            raise OSError("No space left on device")
        saved.append(args[0])
        return save_as(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", disk_full_at_the_third_slice)
    with pytest.raises(OSError, match="No space"):
        standardize_series_folder(tmp_path / "in", tmp_path / "out", halve, derivation="x")
    assert len(saved) == 2 and list((tmp_path / "out").iterdir()) == []


def test_a_transform_changing_the_shape_is_refused(tmp_path):
    write_series(tmp_path / "in")
    with pytest.raises(ValueError, match="shape"):
        standardize_series_folder(tmp_path / "in", tmp_path / "out", lambda v: v[:2], derivation="x")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_on_series_hears_each_series_by_pseudonym(tmp_path):
    write_series(tmp_path / "in" / "a", modality="MR")
    write_series(tmp_path / "in" / "b")
    heard: list[str] = []
    result = standardize_series_folder(tmp_path / "in", tmp_path / "out", halve, derivation="x", on_series=heard.append)
    assert sorted(heard) == sorted([result.written[0].name, result.skipped[0].name])
