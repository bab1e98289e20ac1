"""Volume I/O keeps geometry exactly; slicing along any axis; bad files → one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medplib_runtime.errors import InputError
from medplib_runtime.imaging.io import Volume, read_volume, write_labels, write_volume
from medplib_runtime.imaging.slicing import check_slice, mask_area_mm2, slice_spacing, slice_view, take_slice

ROTATED = tuple(np.round(sitk.VersorTransform((0.3, 0.2, 0.9), 0.7).GetMatrix(), 12))


def synthetic_volume() -> Volume:
    arr = np.random.default_rng(0).integers(-1000, 2000, size=(7, 20, 30)).astype(np.int16)
    return Volume(arr, spacing=(3.3, 0.7, 0.45), origin=(-12.5, 40.25, 7.0), direction=ROTATED)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_labels_round_trip_keeps_geometry_exactly(tmp_path, suffix):
    vol = synthetic_volume()
    labels = (vol.array > 1500).astype(np.uint8) * 3
    path = write_labels(labels, like=vol, path=tmp_path / f"labels{suffix}")
    back = read_volume(path)
    assert np.array_equal(back.array, labels) and back.array.dtype == np.uint8
    assert back.spacing == pytest.approx(vol.spacing, abs=1e-6)
    assert back.origin == pytest.approx(vol.origin, abs=1e-6)
    assert back.direction == pytest.approx(vol.direction, abs=1e-6)
    # and again: read → write → read is identical
    again = read_volume(write_labels(back.array, like=back, path=tmp_path / f"again{suffix}"))
    assert np.array_equal(again.array, back.array)
    if suffix.startswith(".nii"):  # NIfTI stores a rotation as a float32 quaternion: exact to ~1e-8
        assert again.direction == pytest.approx(back.direction, abs=1e-7)
    else:
        assert (again.spacing, again.origin, again.direction) == (back.spacing, back.origin, back.direction)


def test_real_nrrd_round_trip(tmp_path, brain1_paths):
    vol = read_volume(brain1_paths[0])
    assert vol.shape == (25, 256, 256) and vol.spacing == pytest.approx((6.5, 0.78125, 0.78125))
    ref = sitk.ReadImage(str(brain1_paths[0]))
    assert vol.origin == ref.GetOrigin() and vol.direction == ref.GetDirection()
    label = read_volume(brain1_paths[1])
    out = read_volume(write_labels(label.array, like=vol, path=tmp_path / "l.nrrd"))
    assert np.array_equal(out.array, label.array)
    assert (out.spacing, out.origin, out.direction) == (vol.spacing, vol.origin, vol.direction)
    assert write_volume(vol, tmp_path / "img.nii.gz").exists()
    assert np.array_equal(read_volume(tmp_path / "img.nii.gz").array, vol.array)


def test_dicom_series_folder(tmp_path):
    vol = synthetic_volume()
    folder = tmp_path / "series"
    folder.mkdir()
    image = vol.to_sitk()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    series_tags = [("0020|000e", "1.2.826.0.1.3680043.2.1125.1.42"), ("0008|0060", "CT"),
                   ("0020|0037", "\\".join(map(str, direction[0::3] + direction[1::3]))), ("0028|0030", "0.7\\0.45")]
    for i in range(image.GetDepth()):
        sl = image[:, :, i]
        for tag, value in series_tags:
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, i)))))
        sl.SetMetaData("0020|0013", str(i))
        writer.SetFileName(str(folder / f"{i:03d}.dcm"))
        writer.Execute(sl)
    back = read_volume(folder)
    assert np.array_equal(back.array, vol.array)
    assert back.spacing == pytest.approx(vol.spacing, abs=1e-3)
    assert back.origin == pytest.approx(vol.origin, abs=1e-3)
    assert back.direction == pytest.approx(vol.direction, abs=1e-4)
    assert back.metadata.get("modality") == "CT"


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="not a readable image"):
        read_volume(junk)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(empty)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 3), np.uint8), isVector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="3 channels"):
        read_volume(tmp_path / "rgb.mha")
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="4D"):
        read_volume(tmp_path / "t.nii.gz")
    vol = synthetic_volume()
    with pytest.raises(InputError, match=r"labels have shape \(7, 20\)"):
        write_labels(np.zeros((7, 20), np.uint8), like=vol, path=tmp_path / "x.nrrd")
    with pytest.raises(InputError, match="cannot write x.png"):
        write_labels(np.zeros(vol.shape, np.uint8), like=vol, path=tmp_path / "x.png")
    assert not list(tmp_path.glob(".x*")), "no temp files left behind"


def test_slicing_along_each_axis():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert take_slice(arr, axis=0, index=1).shape == (3, 4)
    assert take_slice(arr, axis=1, index=2).shape == (2, 4)
    assert take_slice(arr, axis=2, index=3).shape == (2, 3)
    view = slice_view(arr, axis=1, index=0)
    view[:] = -1
    assert (arr[:, 0, :] == -1).all() and (arr[:, 1:, :] >= 0).all()
    assert slice_spacing((5.0, 0.7, 0.5), 1) == (5.0, 0.5)
    assert mask_area_mm2(np.ones((2, 4), bool), (5.0, 0.7, 0.5), 1) == pytest.approx(8 * 2.5)
    with pytest.raises(InputError, match="slice 5 is out of range: axis 0 has 2 slices"):
        check_slice(arr.shape, axis=0, index=5)
    with pytest.raises(InputError, match="2D image has one slice"):
        check_slice((3, 4), axis=0, index=1)
