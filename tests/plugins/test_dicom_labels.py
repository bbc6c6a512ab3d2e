"""The dicom plugin's labels: RTSTRUCT contours rasterised on the image grid, DICOM SEG in/out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from miscore_dicom import DicomIO

import miscore
from miscore.testing import synthetic_case
from tests.plugins.dicom_helpers import (
    SeriesSpec,
    index_to_lps,
    oblique_cosines,
    rectangle,
    stored_values,
    write_enhanced,
    write_rtstruct,
    write_series,
)


def build_ct(tmp_path: Path, oblique: bool = False) -> tuple[SeriesSpec, Path]:
    spec = SeriesSpec(shape=(20, 16, 6))
    if oblique:
        spec.row_cosine, spec.column_cosine = oblique_cosines(25.0)
    folder = tmp_path / "ct"
    write_series(folder, spec, stored_values(spec.shape), rng=np.random.default_rng(7))
    return spec, folder


@pytest.mark.parametrize("oblique", [False, True])
def test_rtstruct_contours_fill_the_voxels_inside(tmp_path: Path, oblique: bool) -> None:
    spec, folder = build_ct(tmp_path, oblique)
    # a box over slices 1..3 whose edges pass half-way between voxel centres
    box = [index_to_lps(spec, rectangle(2.5, 9.5, 3.5, 11.5, k)) for k in (1, 2, 3)]
    # a ring in slice 4: outer square with a square hole (even-odd rule)
    ring = [
        index_to_lps(spec, rectangle(10.5, 18.5, 2.5, 10.5, 4)),
        index_to_lps(spec, rectangle(12.5, 16.5, 4.5, 8.5, 4)),
    ]
    # a polygon whose vertices sit on voxel centres: boundary voxels are inside
    triangle = [index_to_lps(spec, np.array([[1.0, 1.0, 5], [6.0, 1.0, 5], [1.0, 6.0, 5]]))]
    rtstruct = write_rtstruct(
        tmp_path / "rs.dcm", spec, {"Box": box, "Ring": ring, "Triangle": triangle}
    )
    io = DicomIO()
    image = io.read(folder)

    label = io.read_label(rtstruct, image)

    assert label.same_grid(image)
    assert label.array.dtype == np.uint8
    expected = np.zeros(spec.shape, np.uint8)
    expected[3:10, 4:12, 1:4] = 1
    expected[11:19, 3:11, 4] = 2
    expected[13:17, 5:9, 4] = 0
    ii, jj = np.meshgrid(np.arange(20), np.arange(16), indexing="ij")
    expected[(ii >= 1) & (jj >= 1) & (ii + jj <= 7), 5] = 3
    np.testing.assert_array_equal(label.array[..., 0], expected)
    assert label.meta["roi_classes"] == {"Box": 1, "Ring": 2, "Triangle": 3}
    assert label.meta["contours_drawn"] == {"Box": 3, "Ring": 2, "Triangle": 1}


def test_rtstruct_roi_class_map_and_overlap_order(tmp_path: Path) -> None:
    spec, folder = build_ct(tmp_path)
    big = [index_to_lps(spec, rectangle(1.5, 12.5, 1.5, 12.5, 2))]
    small = [index_to_lps(spec, rectangle(4.5, 8.5, 4.5, 8.5, 2))]
    rtstruct = write_rtstruct(tmp_path / "rs.dcm", spec, {"Liver": big, "Tumor": small})
    image = DicomIO().read(folder)

    label = DicomIO(roi_classes={"Liver": 1, "Tumor": 2}).read_label(rtstruct, image)
    only_tumor = DicomIO().read_label(rtstruct, image, roi_classes={"Tumor": 5})

    assert np.count_nonzero(label.array == 2) == 16
    assert np.count_nonzero(label.array == 1) == 11 * 11 - 16
    assert set(np.unique(only_tumor.array)) == {0, 5}
    assert np.count_nonzero(only_tumor.array) == 16
    with pytest.raises(miscore.InputError, match="no ROI named 'Spleen'; available: 'Liver'"):
        DicomIO(roi_classes={"Spleen": 1}).read_label(rtstruct, image)


def test_rtstruct_from_another_scan_is_refused(tmp_path: Path) -> None:
    spec, folder = build_ct(tmp_path)
    box = [index_to_lps(spec, rectangle(2.5, 9.5, 3.5, 11.5, 1))]
    other = write_rtstruct(tmp_path / "other.dcm", spec, {"Box": box}, frame_uid="1.2.3.4")
    off_slice = [index_to_lps(spec, rectangle(2.5, 9.5, 3.5, 11.5, 1)) + [[0, 0, 1.0]] * 4]
    between = write_rtstruct(tmp_path / "between.dcm", spec, {"Box": off_slice})
    image = DicomIO().read(folder)

    with pytest.raises(miscore.InputError, match="belongs to another scan"):
        DicomIO().read_label(other, image)
    with pytest.raises(miscore.InputError, match="does not lie in one image slice"):
        DicomIO().read_label(between, image)


def test_rtstruct_in_a_folder_is_found(tmp_path: Path) -> None:
    spec, folder = build_ct(tmp_path)
    (tmp_path / "labels").mkdir()
    box = [index_to_lps(spec, rectangle(2.5, 9.5, 3.5, 11.5, 1))]
    write_rtstruct(tmp_path / "labels" / "rs.dcm", spec, {"Box": box})
    image = DicomIO().read(folder)

    label = DicomIO().read_label(tmp_path / "labels", image)

    assert np.count_nonzero(label.array) == 7 * 8


@pytest.mark.parametrize("oblique", [False, True])
def test_seg_written_for_a_prediction_reads_back_on_the_same_grid(
    tmp_path: Path, oblique: bool
) -> None:
    spec, folder = build_ct(tmp_path, oblique)
    image = DicomIO().read(folder)
    truth = synthetic_case(shape=spec.shape, classes=3).label
    assert truth is not None
    prediction = image.with_array(truth.array)

    written = DicomIO(output="dicom-seg", segment_labels={1: "organ", 2: "core"}).write(
        prediction, tmp_path / "pred.nii.gz", reference=image
    )

    assert written == tmp_path / "pred.dcm" and written.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".miscore-tmp-")]
    ds = pydicom.dcmread(written)
    assert ds.Modality == "SEG"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["organ", "core"]
    assert ds.FrameOfReferenceUID == spec.frame_uid
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == set(image.meta["sop_instance_uids"])
    label = DicomIO().read_label(written, image)
    assert label.same_grid(image)
    np.testing.assert_array_equal(label.array, truth.array)
    assert label.meta["segments"] == {"organ": 1, "core": 2}
    renamed = DicomIO(segment_classes={"core": 1}).read_label(written, image)
    np.testing.assert_array_equal(renamed.array[..., 0], (truth.array[..., 0] == 2).astype(int))


def test_seg_for_an_enhanced_multiframe_source(tmp_path: Path) -> None:
    spec = SeriesSpec(shape=(10, 8, 5))
    order = [2, 4, 0, 1, 3]
    source = write_enhanced(
        tmp_path / "enhanced.dcm", spec, stored_values(spec.shape), order, [1.0] * 5
    )
    image = DicomIO().read(source)
    truth = synthetic_case(shape=spec.shape, classes=2).label
    assert truth is not None

    written = DicomIO(output="dicom-seg").write(
        image.with_array(truth.array), tmp_path / "seg.dcm", reference=image
    )
    label = DicomIO().read_label(written, image)

    np.testing.assert_array_equal(label.array, truth.array)


def test_seg_needs_a_dicom_reference(tmp_path: Path) -> None:
    case = synthetic_case()
    assert case.label is not None
    with pytest.raises(miscore.InputError, match="needs the DICOM series the image was read"):
        DicomIO(output="dicom-seg").write(case.label, tmp_path / "x.dcm", reference=case.image)
    _, folder = build_ct(tmp_path)
    image = DicomIO().read(folder)
    wrong = miscore.Volume(np.zeros((4, 4, 4, 1), np.uint8))
    with pytest.raises(miscore.InputError, match="not a one-channel label map on the source"):
        DicomIO(output="dicom-seg").write(wrong, tmp_path / "x.dcm", reference=image)


def test_fractional_seg_is_thresholded_at_half(tmp_path: Path) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    spec, folder = build_ct(tmp_path)
    image = DicomIO().read(folder)
    probability = np.zeros(spec.shape, np.float32)
    probability[4:9, 2:6, 2] = 0.8  # kept
    probability[10:12, 2:6, 3] = 0.3  # below one half: dropped
    sources = [pydicom.dcmread(p) for p in image.meta["files"]]
    for ds in sources:
        for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"):
            setattr(ds, keyword, "")
        ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=probability.transpose(2, 1, 0),
        segmentation_type="FRACTIONAL",
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="lesion",
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type="MANUAL",
            )
        ],
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(tmp_path / "fractional.dcm")

    label = DicomIO(segment_classes={"lesion": 4}).read_label(tmp_path / "fractional.dcm", image)

    expected = np.zeros(spec.shape, np.uint8)
    expected[4:9, 2:6, 2] = 4
    np.testing.assert_array_equal(label.array[..., 0], expected)
