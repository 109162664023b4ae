"""harmonia.io: vendor names, DICOM/ITK reading in native units and geometry, contours, SEGs, errors."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from harmonia.errors import DataError, UnreadableFile
from harmonia.io import (
    canonical_vendor,
    find_series,
    read_header,
    read_image,
    read_rtstruct,
    read_seg,
    rtstruct_roi_names,
    seg_segment_labels,
    write_dicom_series,
    write_mha,
    write_rtstruct,
    write_seg,
)

SPACING = (2.5, 0.8, 0.7)
PLANTED = ("DOE^JANE", "PID-4711")


@pytest.mark.parametrize(
    "text, vendor",
    [
        ("GE MEDICAL SYSTEMS", "GE"),
        ("G.E. Medical Systems", "GE"),
        ("GE Healthcare", "GE"),
        ("SIEMENS", "Siemens"),
        ("Siemens Healthineers", "Siemens"),
        ("TOSHIBA_MEC", "Toshiba"),
        ("TOSHIBA", "Toshiba"),
        ("Canon Medical Systems", "Canon"),
        ("Philips Medical Systems", "Philips"),
        ("Philips Healthcare", "Philips"),
        ("  Acme   Imaging ", "Acme Imaging"),
        ("GEMINI", "GEMINI"),
        ("", ""),
        (None, ""),
    ],
)
def test_canonical_vendor_maps_known_names_and_keeps_unknown_ones(text, vendor):
    assert canonical_vendor(text) == vendor


def phantom() -> np.ndarray:
    """A small CT volume in HU: air around a soft-tissue block holding an enhancing lesion."""
    volume = np.full((6, 32, 40), -1000.0)
    volume[1:5, 8:24, 10:30] = 40
    volume[2:4, 12:20, 15:22] = 200
    return volume


def ct_series(folder, volume=None, **kwargs):
    kwargs = {
        "modality": "CT",
        "manufacturer": "GE MEDICAL SYSTEMS",
        "patient_name": PLANTED[0],
        "patient_id": PLANTED[1],
        "origin": (-10.0, -20.0, 30.0),
        **kwargs,
    }
    return write_dicom_series(folder, phantom() if volume is None else volume, SPACING, **kwargs)


def test_dicom_series_reads_back_in_hu_with_geometry_and_vendor(tmp_path):
    ct_series(tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    assert image.shape == (6, 32, 40) and image.spacing == SPACING
    np.testing.assert_array_equal(image.array, phantom())
    assert (image.modality, image.manufacturer, image.vendor) == ("CT", "GE MEDICAL SYSTEMS", "GE")
    np.testing.assert_allclose(
        image.index_to_world(np.array([[5, 31, 39]])), [[-10 + 39 * 0.7, -20 + 31 * 0.8, 30 + 5 * 2.5]]
    )
    np.testing.assert_allclose(
        image.world_to_index(image.index_to_world(np.array([[1.5, 2.0, 3.25]]))), [[1.5, 2.0, 3.25]]
    )


def test_slices_are_ordered_by_position_not_file_name(tmp_path):
    written = ct_series(tmp_path / "ct")
    # rename so that file order runs from the top slice down
    for k, path in enumerate(written.files):
        path.rename(path.with_name(f"x{len(written.files) - k:03d}.dcm"))
    image = read_image(tmp_path / "ct")
    np.testing.assert_array_equal(image.array, phantom())
    assert image.sop_instance_uids == written.sop_instance_uids
    assert image.instance_numbers == tuple(range(1, 7))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode(tmp_path, syntax):
    ct_series(tmp_path / "ct", transfer_syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "ct").iterdir())).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_image(tmp_path / "ct").array, phantom())


def test_a_transfer_syntax_no_decoder_handles_is_named(tmp_path):
    written = ct_series(tmp_path / "ct")
    dataset = pydicom.dcmread(written.files[0])
    dataset.PixelData = encapsulate([b"\0" * 64])
    dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    dataset.save_as(tmp_path / "mpeg.dcm")
    with pytest.raises(
        UnreadableFile,
        match=r"mpeg\.dcm: .*transfer syntax MPEG2 .*1\.2\.840\.10008\.1\.2\.4\.100.*no installed decoder",
    ):
        read_image(tmp_path / "mpeg.dcm")


@pytest.mark.parametrize("keep", [0.5, 0.08, 0.02])
def test_truncated_dicom_is_an_unreadable_file_naming_it(tmp_path, keep):
    written = ct_series(tmp_path / "ct")
    data = written.files[2].read_bytes()
    written.files[2].write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UnreadableFile) as caught:
        read_image(tmp_path / "ct")
    assert str(written.files[2]) in str(caught.value) and "\n" not in str(caught.value)
    assert str(written.files[2]) not in caught.value.reason


def test_pixel_less_and_non_dicom_files_are_unreadable(tmp_path):
    written = ct_series(tmp_path / "ct")
    write_rtstruct(tmp_path / "rt.dcm", written, {"GTV": phantom() == 200}, *PLANTED)
    with pytest.raises(UnreadableFile, match="no pixel data .*RTSTRUCT"):
        read_image(tmp_path / "rt.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all " * 20)
    with pytest.raises(UnreadableFile, match=r"junk\.dcm: not a DICOM file"):
        read_image(tmp_path / "junk.dcm")


def test_find_series_groups_files_ignores_other_files_and_links_derived_objects(tmp_path):
    written = ct_series(tmp_path / "p" / "ct")
    write_rtstruct(tmp_path / "p" / "rt" / "1-1.dcm", written, {"GTV": phantom() == 200}, *PLANTED)
    (tmp_path / "p" / "ct" / "069.xml").write_text("<LidcReadMessage/>")
    found = {s.modality: s for s in find_series(tmp_path / "p")}
    assert set(found) == {"CT", "RTSTRUCT"}
    assert found["CT"].files == written.files and found["CT"].vendor == "GE"
    assert found["RTSTRUCT"].referenced_series_uids == (written.series_uid,)
    assert found["RTSTRUCT"].frame_of_reference_uid == written.frame_of_reference_uid


def test_find_series_reports_unreadable_headers_to_a_callback_or_raises(tmp_path):
    written = ct_series(tmp_path / "ct")
    written.files[0].write_bytes(written.files[0].read_bytes()[:60])
    with pytest.raises(UnreadableFile, match="001.dcm"):
        find_series(tmp_path / "ct")
    seen = []
    series = find_series(tmp_path / "ct", on_unreadable=seen.append)
    assert [e.path for e in seen] == [str(written.files[0])] and len(series[0].files) == 5


def test_a_folder_with_two_image_series_needs_a_series_uid(tmp_path):
    first = ct_series(tmp_path / "study", series_description="arterial")
    ct_series(tmp_path / "study", series_description="venous", file_name="v{index:03d}.dcm")
    with pytest.raises(DataError, match="2 image series .*arterial.*venous"):
        read_image(tmp_path / "study")
    assert read_image(tmp_path / "study", series_uid=first.series_uid).description == "arterial"


def test_a_missing_slice_is_reported(tmp_path):
    written = ct_series(tmp_path / "ct")
    written.files[3].unlink()
    with pytest.raises(DataError, match="unevenly spaced"):
        read_image(tmp_path / "ct")


def test_rtstruct_contours_rasterise_back_to_the_mask(tmp_path):
    written = ct_series(tmp_path / "ct")
    lesion = phantom() == 200
    ring = (phantom() == 40) & ~np.pad(np.ones((4, 10, 14), bool), ((1, 1), (11, 11), (13, 13)))
    write_rtstruct(
        tmp_path / "rt.dcm", written, {"GTVp": lesion, "GTV-N ring": ring, "Body": phantom() > -500}, *PLANTED
    )
    image = read_image(tmp_path / "ct")
    assert rtstruct_roi_names(tmp_path / "rt.dcm") == ["GTVp", "GTV-N ring", "Body"]
    masks = read_rtstruct(tmp_path / "rt.dcm", image, re.compile(r"^GTV", re.I))
    assert set(masks) == {"GTVp", "GTV-N ring"}
    np.testing.assert_array_equal(masks["GTVp"], lesion)
    np.testing.assert_array_equal(masks["GTV-N ring"], ring)  # the hole stays empty
    assert set(read_rtstruct(tmp_path / "rt.dcm", image, "body")) == {"Body"}


def test_rtstruct_of_another_frame_of_reference_or_off_the_image_is_refused(tmp_path):
    written = ct_series(tmp_path / "ct")
    write_rtstruct(tmp_path / "rt.dcm", written, {"GTV": phantom() == 200}, *PLANTED)
    other = ct_series(tmp_path / "other", patient_id="someone-else")
    with pytest.raises(DataError, match="frame of reference"):
        read_rtstruct(tmp_path / "rt.dcm", read_image(tmp_path / "other"), "GTV")
    shifted = ct_series(tmp_path / "shifted", origin=(-10.0, -20.0, 60.0), study_uid=other.study_uid)
    assert shifted.frame_of_reference_uid == other.frame_of_reference_uid
    write_rtstruct(tmp_path / "rt2.dcm", written, {"GTV": phantom() == 200}, *PLANTED)
    image = read_image(tmp_path / "ct")
    small = type(image)(
        array=image.array[:, :10, :10],
        spacing=image.spacing,
        path=image.path,
        origin=image.origin,
        axes=image.axes,
        frame_of_reference_uid=image.frame_of_reference_uid,
    )
    with pytest.raises(DataError, match="outside"):
        read_rtstruct(tmp_path / "rt2.dcm", small, "GTV")


def test_seg_reads_back_as_a_label_map_and_must_fit_its_image(tmp_path):
    written = ct_series(tmp_path / "ct")
    tissue, lesion = phantom() == 40, phantom() == 200
    write_seg(tmp_path / "seg.dcm", written, {"Kidney": tissue, "Tumor": lesion}, *PLANTED)
    image = read_image(tmp_path / "ct")
    labels = read_seg(tmp_path / "seg.dcm", image)
    assert seg_segment_labels(tmp_path / "seg.dcm") == {1: "Kidney", 2: "Tumor"}
    np.testing.assert_array_equal(labels == 2, lesion)
    np.testing.assert_array_equal(labels == 1, tissue)
    ct_series(tmp_path / "big", np.zeros((6, 40, 40)), patient_id="big")
    with pytest.raises(DataError, match="SEG frames are 40x32 pixels, but .* slices are 40x40"):
        read_seg(tmp_path / "seg.dcm", read_image(tmp_path / "big"))
    ct_series(tmp_path / "far", origin=(0.0, 0.0, 500.0), patient_id="far")
    with pytest.raises(DataError, match="matches no slice"):
        read_seg(tmp_path / "seg.dcm", read_image(tmp_path / "far"))


def test_mha_keeps_vendor_and_drops_patient_keys(tmp_path):
    write_mha(
        tmp_path / "t2w.mha",
        phantom().astype(np.int16),
        SPACING,
        {"0008|0070": "SIEMENS", "0008|0060": "MR", "0010|0010": PLANTED[0], "0010|0020": PLANTED[1]},
    )
    image = read_image(tmp_path / "t2w.mha")
    assert (image.vendor, image.modality, image.spacing) == ("Siemens", "MR", SPACING)
    np.testing.assert_array_equal(image.array, phantom())
    assert not any(p in repr(image.metadata) for p in PLANTED)


def test_truncated_mha_and_nifti_are_unreadable(tmp_path):
    write_mha(tmp_path / "t2w.mha", phantom().astype(np.int16), SPACING, {})
    nib.save(nib.Nifti1Image(phantom().astype(np.int16), np.eye(4)), tmp_path / "m.nii.gz")
    for path in (tmp_path / "t2w.mha", tmp_path / "m.nii.gz"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(UnreadableFile, match=re.escape(str(path))):
            read_image(path)


def test_nifti_geometry_matches_dicom_world_coordinates(tmp_path):
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)  # RAS: x and y flip sign in DICOM's LPS world
    nib.save(nib.Nifti1Image(phantom().transpose(2, 1, 0).astype(np.float32), affine), tmp_path / "ct.nii.gz")
    image = read_image(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(image.array, phantom())
    np.testing.assert_allclose(
        image.index_to_world(np.array([[1, 2, 3]])), [[-(10 + 3 * 0.7), -(20 + 2 * 0.8), 30 + 2.5]]
    )


def test_png_and_planar_dicom_are_2d(tmp_path):
    picture = (np.arange(30 * 20).reshape(30, 20) * 50).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(tmp_path / "cxr.png"))
    png = read_image(tmp_path / "cxr.png")
    assert png.shape == (30, 20) and png.origin is None
    np.testing.assert_array_equal(png.array, picture)
    written = write_dicom_series(
        tmp_path / "dx",
        picture.astype(float),
        (0.15, 0.15),
        modality="DX",
        manufacturer="Carestream Health",
        patient_name=PLANTED[0],
        patient_id=PLANTED[1],
    )
    dx = read_image(written.files[0])
    assert dx.shape == (30, 20) and dx.spacing == (0.15, 0.15) and dx.vendor == "Carestream"
    np.testing.assert_array_equal(dx.array, picture)


def test_monochrome1_is_flipped_so_high_means_bright(tmp_path):
    written = write_dicom_series(
        tmp_path / "cr",
        np.array([[0.0, 1000.0]]),
        (0.2, 0.2),
        modality="CR",
        manufacturer="Agfa",
        patient_name="A",
        patient_id="B",
    )
    dataset = pydicom.dcmread(written.files[0])
    dataset.PhotometricInterpretation, dataset.BitsStored = "MONOCHROME1", 12
    dataset.save_as(written.files[0])
    np.testing.assert_array_equal(read_image(written.files[0]).array, [[4095.0, 3095.0]])


def test_images_carry_no_patient_identifiers(tmp_path):
    ct_series(tmp_path / "ct")
    image = read_image(tmp_path / "ct")
    text = repr({k: v for k, v in vars(image).items() if k != "array"})
    assert not any(p in text for p in PLANTED)


def test_twin_writing_is_deterministic(tmp_path):
    first = ct_series(tmp_path / "a" / "ct")
    second = ct_series(tmp_path / "b" / "ct")
    assert first.sop_instance_uids == second.sop_instance_uids
    assert [f.read_bytes() for f in first.files] == [f.read_bytes() for f in second.files]


@pytest.mark.parametrize(
    "syntax",
    [
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.JPEGLosslessSV1,
        pydicom.uid.JPEGLSLossless,
        JPEG2000Lossless,
        RLELossless,
    ],
)
def test_decoders_for_the_transfer_syntaxes_tcia_cohorts_use_are_installed(syntax):
    from pydicom.pixels import get_decoder

    assert get_decoder(syntax).is_available, (
        f"no decoder for {syntax.name}; the project's dependencies should bring one"
    )


def test_read_header_gives_mha_keys_without_patient_ones(tmp_path):
    write_mha(
        tmp_path / "t2w.mha", phantom().astype(np.int16), SPACING, {"0008|0070": "Philips", "0010|0010": PLANTED[0]}
    )
    header = read_header(tmp_path / "t2w.mha")
    assert header["0008|0070"] == "Philips" and header["0020|4000"].startswith("SYNTHETIC")
    assert not any(k.startswith("0010|") or PLANTED[0] in v for k, v in header.items())
    (tmp_path / "bad.mha").write_text("NDims = banana\n")
    with pytest.raises(UnreadableFile, match=r"bad\.mha: unreadable image header"):
        read_header(tmp_path / "bad.mha")


def test_written_dicom_says_it_is_synthetic(tmp_path):
    written = ct_series(tmp_path / "ct")
    write_rtstruct(tmp_path / "rt.dcm", written, {"GTV": phantom() == 200}, *PLANTED)
    for path in (*written.files, tmp_path / "rt.dcm"):
        assert pydicom.dcmread(path, stop_before_pixels=True).ImageComments.startswith("SYNTHETIC")
