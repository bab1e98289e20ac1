"""Volume I/O: exact geometry round trips (all formats, rotated + anisotropic, real NRRDs), DICOM
series, the nibabel fallback, and one-line errors for bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medplib_runtime.errors import InputError
from medplib_runtime.imaging import io as vio
from medplib_runtime.imaging.geometry import index_to_physical, is_identity, physical_to_index
from medplib_runtime.imaging.io import Volume, check_writable, read_volume, write_labels, write_volume

ROTATED = tuple(float(v) for v in np.round(sitk.VersorTransform((0.3, 0.2, 0.9), 0.7).GetMatrix(), 12))
FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha"]


def rotated_volume(dtype=np.int16) -> Volume:
    arr = np.random.default_rng(0).integers(-1000, 2000, size=(7, 20, 30)).astype(dtype)
    # deliberately non-float32-representable origin/spacing, to see what each format keeps
    return Volume(arr, spacing=(3.3, 0.7, 0.45), origin=(-12.53, 40.2571, 7.1), direction=ROTATED)


def assert_same_geometry(a: Volume, b: Volume, *, exact: bool, tol: float = 1e-6) -> None:
    if exact:
        assert (a.spacing, a.origin, a.direction) == (b.spacing, b.origin, b.direction)
    else:  # NIfTI: float32 header fields; NRRD: spacing × direction products
        assert a.spacing == pytest.approx(b.spacing, rel=tol, abs=0)
        assert a.origin == pytest.approx(b.origin, rel=tol, abs=tol)
        assert a.direction == pytest.approx(b.direction, rel=0, abs=tol)


# first-trip tolerance for a rotated volume, per format (see the io module docstring)
FIRST_TRIP_TOL = {".mha": 0.0, ".nrrd": 1e-12, ".nii": 1e-6, ".nii.gz": 1e-6}


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def lung2(lung2_paths) -> tuple[Volume, Volume]:
    return read_volume(lung2_paths[0]), read_volume(lung2_paths[1])


# ------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("suffix", FORMATS)
def test_labels_round_trip_rotated_anisotropic(tmp_path, suffix):
    vol = rotated_volume()
    labels = (vol.array > 1500).astype(np.uint8) * 3 + (vol.array < -900)
    back = read_volume(write_labels(labels, like=vol, path=tmp_path / f"l{suffix}"))
    assert back.array.dtype == np.uint8 and np.array_equal(back.array, labels)
    tol = FIRST_TRIP_TOL[suffix]
    assert_same_geometry(back, vol, exact=tol == 0.0, tol=tol)
    # read → write → read: bit-identical for MHA/NRRD; NIfTI settles on its float32 values
    again = read_volume(write_labels(back.array, like=back, path=tmp_path / f"again{suffix}"))
    assert np.array_equal(again.array, back.array)
    assert_same_geometry(again, back, exact=not suffix.startswith(".nii"), tol=1e-7)
    third = read_volume(write_labels(again.array, like=again, path=tmp_path / f"third{suffix}"))
    assert_same_geometry(third, again, exact=True)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_image_round_trip_keeps_dtype_and_values(tmp_path, suffix, dtype):
    vol = rotated_volume(dtype)
    back = read_volume(write_volume(vol, tmp_path / f"img{suffix}"))
    assert back.array.dtype == dtype and np.array_equal(back.array, vol.array)
    assert_same_geometry(back, vol, exact=FIRST_TRIP_TOL[suffix] == 0.0, tol=FIRST_TRIP_TOL[suffix])


def test_uint16_labels_past_255(tmp_path):
    vol = rotated_volume()
    labels = np.zeros(vol.shape, np.int32)
    labels[0, 0, :3] = (1, 300, 65535)
    back = read_volume(write_labels(labels, like=vol, path=tmp_path / "l.nrrd"))
    assert back.array.dtype == np.uint16 and np.array_equal(back.array, labels)
    back = read_volume(write_labels(labels > 0, like=vol, path=tmp_path / "b.mha"))
    assert back.array.dtype == np.uint8 and back.array.sum() == 3


@pytest.mark.parametrize("case", ["brain1", "breast1"])
@pytest.mark.parametrize("suffix", FORMATS)
def test_real_nrrd_round_trip(tmp_path, request, case, suffix):
    image_path, label_path = request.getfixturevalue(f"{case}_paths")
    vol, label = read_volume(image_path), read_volume(label_path)
    ref = sitk.ReadImage(str(image_path))  # what ITK itself says
    assert vol.spacing_xyz == ref.GetSpacing() and vol.origin == ref.GetOrigin() and vol.direction == ref.GetDirection()
    assert np.array_equal(vol.array, sitk.GetArrayFromImage(ref)) and vol.metadata["format"] == "NrrdImageIO"
    out = read_volume(write_labels(label.array, like=vol, path=tmp_path / f"l{suffix}"))
    assert np.array_equal(out.array, label.array)
    assert_same_geometry(out, vol, exact=not suffix.startswith(".nii"))
    img = read_volume(write_volume(vol, tmp_path / f"i{suffix}"))
    assert np.array_equal(img.array, vol.array) and img.array.dtype == vol.array.dtype
    assert_same_geometry(img, vol, exact=not suffix.startswith(".nii"))


def test_real_brain1_geometry(brain1_paths):
    vol = read_volume(brain1_paths[0])
    assert vol.shape == (25, 256, 256) and vol.spacing == pytest.approx((6.5, 0.78125, 0.78125))
    assert vol.napari_scale == vol.spacing and vol.napari_translate == tuple(reversed(vol.origin))
    assert vol.voxel_volume_ml == pytest.approx(6.5 * 0.78125**2 / 1000)
    assert not vol.is_axis_aligned  # brain1 is stored with a flipped y axis
    assert not vol.is_constant


def test_real_lung2_labels_round_trip(tmp_path, lung2):
    image, label = lung2  # the shipped crop of lung2: its whole tumour (24,644 voxels) is inside
    assert image.shape == (36, 256, 256) and image.is_axis_aligned and image.array.min() < -900  # HU
    assert (label.array == 1).sum() == 24644
    for suffix in (".nrrd", ".nii.gz"):
        out = read_volume(write_labels(label.array, like=image, path=tmp_path / f"l{suffix}"))
        assert np.array_equal(out.array, label.array)
        assert_same_geometry(out, image, exact=suffix == ".nrrd")
    # napari scale/translate are the exact index → world map for an identity direction
    idx = np.array([[0, 0, 0], [35, 255, 255], [18, 50, 200]])
    world = idx * np.array(image.napari_scale) + np.array(image.napari_translate)
    expected = index_to_physical(idx, spacing=image.spacing, origin=image.origin, direction=image.direction)
    assert np.allclose(world, expected[:, ::-1])


# ------------------------------------------------------------------------------ geometry helpers

def test_index_physical_mapping_matches_itk():
    vol = rotated_volume()
    image = vol.to_sitk()
    idx = np.random.default_rng(1).uniform(-2, 20, size=(10, 3))  # (z, y, x), continuous
    ours = index_to_physical(idx, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)
    itk = [image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in i[::-1])) for i in idx]
    assert np.allclose(ours, itk, atol=1e-9)
    assert np.allclose(physical_to_index(ours, spacing=vol.spacing, origin=vol.origin, direction=vol.direction), idx)
    affine = vol.napari_affine
    assert affine.shape == (4, 4) and np.allclose(affine[:3, 3], vol.napari_translate)
    assert np.allclose((np.c_[idx, np.ones(10)] @ affine.T)[:, :3], np.asarray(itk)[:, ::-1])
    assert not is_identity(vol.direction) and is_identity(np.eye(3).ravel())


def test_volume_validates_geometry_and_helpers():
    with pytest.raises(InputError, match="does not fit a 3D array"):
        Volume(np.zeros((2, 3, 4)), (1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(InputError, match="spacing must be positive"):
        Volume.from_array(np.zeros((2, 3, 4)), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="2D or 3D"):
        Volume.from_array(np.zeros((2, 3, 4, 5)))
    flat = Volume.from_array(np.zeros((3, 4)), spacing=(0.5, 0.25))
    assert flat.origin == (0.0, 0.0) and flat.direction == (1.0, 0.0, 0.0, 1.0) and flat.spacing_xyz == (0.25, 0.5)
    with pytest.raises(InputError, match="no voxel volume"):
        _ = flat.voxel_volume_ml
    vol = rotated_volume()
    same = vol.with_array(np.ones(vol.shape, np.uint8))
    assert same.direction == vol.direction and same.array.dtype == np.uint8
    with pytest.raises(InputError, match=r"array has shape \(3, 4\)"):
        vol.with_array(np.zeros((3, 4)))


def test_is_constant_is_exposed_not_an_error(tmp_path):
    nan = np.full((3, 4, 5), np.nan, np.float32)
    assert Volume.from_array(nan).is_constant
    mixed = nan.copy()
    mixed[0, 0, 0] = 7.0
    assert Volume.from_array(mixed).is_constant
    mixed[1, 1, 1] = 8.0
    assert not Volume.from_array(mixed).is_constant
    path = write_volume(Volume.from_array(np.zeros((3, 4, 5), np.int16)), tmp_path / "zero.nrrd")
    assert read_volume(path).is_constant


# ------------------------------------------------------------------------------ 2D and 4D

def test_2d_files(tmp_path):
    flat = Volume.from_array(np.arange(12, dtype=np.uint8).reshape(3, 4), spacing=(0.5, 0.25), origin=(3.0, -2.0))
    back = read_volume(write_volume(flat, tmp_path / "flat.nrrd"))
    assert back.ndim == 2 and np.array_equal(back.array, flat.array)
    assert (back.spacing, back.origin, back.direction) == (flat.spacing, flat.origin, flat.direction)
    labels = read_volume(write_labels(back.array > 5, like=back, path=tmp_path / "l.mha"))
    assert labels.shape == (3, 4) and labels.spacing == (0.5, 0.25)
    with pytest.raises(InputError, match="2D image; a 3D volume is needed"):
        read_volume(tmp_path / "flat.nrrd", allow_2d=False)


def test_4d_single_time_point_is_3d_other_4d_is_an_error(tmp_path):
    one = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), isVector=False)
    sitk.WriteImage(one, str(tmp_path / "t1.nii.gz"))
    vol = read_volume(tmp_path / "t1.nii.gz")
    assert vol.shape == (2, 3, 4) and np.array_equal(vol.array.ravel(), np.arange(24))
    sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), str(tmp_path / "t3.nii.gz"))
    with pytest.raises(InputError, match=r"is 4D \(4, 4, 4, 3\); pick one 3D volume"):
        read_volume(tmp_path / "t3.nii.gz")


# ------------------------------------------------------------------------------ nibabel fallback

def test_sheared_nifti_falls_back_to_nibabel(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # nibabel order (i, j, k) = (x, y, z)
    sheared = np.array([[0.9, 0.2, 0, -10], [0, 1.1, 0, 5], [0, 0, 3, 7], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(arr, sheared), str(tmp_path / "shear.nii.gz"))
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(tmp_path / "shear.nii.gz"))  # the case the fallback exists for
    vol = read_volume(tmp_path / "shear.nii.gz")
    assert vol.shape == (6, 5, 4) and np.array_equal(vol.array, arr.T)
    assert vol.metadata["format"] == "nibabel" and vol.metadata["direction_orthonormalized"]
    d = np.array(vol.direction).reshape(3, 3)
    assert np.allclose(d @ d.T, np.eye(3)) and vol.origin == pytest.approx((10.0, -5.0, 7.0))
    # on a file ITK can read, the fallback agrees with ITK
    plain = np.array([[-0.9, 0, 0, -10], [0, 1.1, 0, 5], [0, 0, 3, 7], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(arr, plain), str(tmp_path / "plain.nii.gz"))
    ours = vio._read_nifti_nibabel(tmp_path / "plain.nii.gz", allow_2d=True, sitk_error="-")
    itk = read_volume(tmp_path / "plain.nii.gz")
    assert np.array_equal(ours.array, itk.array) and not ours.metadata["direction_orthonormalized"]
    assert_same_geometry(ours, itk, exact=False)


# ------------------------------------------------------------------------------ errors and atomic writes

def test_bad_inputs_are_one_line_input_errors(tmp_path):
    cases = []
    with pytest.raises(InputError, match="does not exist") as e:
        read_volume(tmp_path / "nope.nii.gz")
    cases.append(e)
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"\x00garbage")
    (tmp_path / "junk.nii.gz").write_bytes(b"not gzip at all")
    for path in (junk, tmp_path / "junk.nii.gz"):  # the .nii.gz also goes through the nibabel fallback
        with pytest.raises(InputError, match=f"{path.name} is not a readable image: ") as e:
            read_volume(path)
        cases.append(e)
    for channels, name in ((3, "RGB"), (4, "RGBA")):
        arr = np.zeros((5, 6, channels), np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(tmp_path / f"c{channels}.mha"))
        with pytest.raises(InputError, match=rf"has {channels} channels \({name}\) per voxel") as e:
            read_volume(tmp_path / f"c{channels}.mha")
        cases.append(e)
    assert all("\n" not in str(c.value) for c in cases)


def test_write_errors_leave_nothing_behind(tmp_path):
    vol = rotated_volume()
    with pytest.raises(InputError, match=r"labels have shape \(7, 20\), but the image is \(7, 20, 30\)"):
        write_labels(np.zeros((7, 20), np.uint8), like=vol, path=tmp_path / "x.nrrd")
    with pytest.raises(InputError, match=r"cannot write x.png: use one of .nii, .nii.gz, .nrrd, .mha"):
        write_labels(np.zeros(vol.shape, np.uint8), like=vol, path=tmp_path / "x.png")
    with pytest.raises(InputError, match="labels must be integers"):
        write_labels(np.zeros(vol.shape, np.float32), like=vol, path=tmp_path / "x.nrrd")
    with pytest.raises(InputError, match="label ids must lie in 0..65535"):
        write_labels(np.full(vol.shape, -1, np.int16), like=vol, path=tmp_path / "x.nrrd")
    with pytest.raises(InputError, match="does not exist"):
        check_writable(tmp_path / "missing" / "x.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    vol = rotated_volume()
    target = write_labels(np.ones(vol.shape, np.uint8), like=vol, path=tmp_path / "l.nrrd")
    before = target.read_bytes()

    def half_write(image, path, *args):  # writes some bytes, then fails like a full disk would
        Path(path).write_bytes(b"NRRD0004\n# truncated")
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: No space left on device")

    monkeypatch.setattr(vio.sitk, "WriteImage", half_write)
    with pytest.raises(InputError, match="cannot write .*l.nrrd: .*No space left on device"):
        write_labels(np.zeros(vol.shape, np.uint8), like=vol, path=target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["l.nrrd"]


# ------------------------------------------------------------------------------ DICOM series

def write_dicom_series(vol: Volume, folder: Path, *, uid: str, modality: str = "MR", reverse_names: bool = True) -> None:
    """One file per z slice with the tags a series reader needs (position, orientation, series UID).
    File names run against the slice order so that sorting by position is actually exercised."""
    folder.mkdir(parents=True, exist_ok=True)
    image = vol.to_sitk()
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetDepth()
    for i in range(n):
        sl = image[:, :, i]
        for tag, value in (("0020|000e", uid), ("0008|0060", modality), ("0008|103e", "test series"),
                           ("0020|0037", "\\".join(f"{v:.12g}" for v in d[0::3] + d[1::3])),
                           ("0020|0032", "\\".join(f"{v:.12g}" for v in image.TransformIndexToPhysicalPoint((0, 0, i)))),
                           ("0020|0013", str(i + 1))):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid.replace('.', '')[-4:]}_{(n - 1 - i) if reverse_names else i:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_rotated_round_trip(tmp_path):
    vol = rotated_volume()
    write_dicom_series(vol, tmp_path / "s", uid="1.2.826.0.1.3680043.2.1125.1.42", modality="CT")
    back = read_volume(tmp_path / "s")
    assert np.array_equal(back.array, vol.array)
    assert back.spacing == pytest.approx(vol.spacing, abs=1e-6) and back.origin == pytest.approx(vol.origin, abs=1e-6)
    assert back.direction == pytest.approx(vol.direction, abs=1e-6)
    assert back.metadata["modality"] == "CT" and back.metadata["files"] == 7 and back.metadata["format"] == "DICOM"


def test_dicom_series_of_real_brain1(tmp_path, brain1_paths):
    """brain1's direction has a flipped y (det = -1). DICOM cannot say that: the slice normal is
    row × column, so the series comes back with z reversed and a z-flipped direction — the same
    voxels at the same physical points, which is what must hold."""
    vol = read_volume(brain1_paths[0])
    write_dicom_series(vol, tmp_path / "brain", uid="1.2.3.4.5.6.7.8.9")
    back = read_volume(tmp_path / "brain")
    assert back.shape == vol.shape and back.metadata["modality"] == "MR"
    assert np.array_equal(back.array, vol.array[::-1])
    assert back.spacing == pytest.approx(vol.spacing, rel=1e-9)
    assert back.direction == pytest.approx(vol.direction[:8] + (-vol.direction[8],), abs=1e-9)
    corners = np.array([[0, 0, 0], [24, 255, 255], [12, 3, 200]])
    ours = index_to_physical(corners, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)
    theirs = index_to_physical(corners * [-1, 1, 1] + [24, 0, 0], spacing=back.spacing, origin=back.origin,
                               direction=back.direction)
    assert np.allclose(ours, theirs, atol=1e-6)


def test_dicom_folder_picks_the_largest_series(tmp_path):
    big = rotated_volume()
    small = Volume.from_array(np.full((3, 8, 9), 5, np.int16), spacing=(2.0, 1.0, 1.0))
    write_dicom_series(big, tmp_path / "mixed", uid="1.2.3.100")
    write_dicom_series(small, tmp_path / "mixed", uid="1.2.3.200")
    (tmp_path / "mixed" / "notes.txt").write_text("not a DICOM file")
    back = read_volume(tmp_path / "mixed")
    assert back.metadata["dicom_series"] == "1.2.3.100" and back.metadata["series_in_folder"] == 2
    assert np.array_equal(back.array, big.array)


def test_pydicom_sample_and_empty_folders(tmp_path):
    pydicom_data = pytest.importorskip("pydicom.data")
    folder = tmp_path / "ct"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(Path(pydicom_data.get_testdata_file("CT_small.dcm")).read_bytes())
    vol = read_volume(folder)  # a single-file series: one slice, still 3D
    assert vol.shape == (1, 128, 128) and vol.metadata["modality"] == "CT" and not vol.is_constant
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="empty holds no DICOM series"):
        read_volume(empty)
    (empty / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="holds no DICOM series"):
        read_volume(empty)
