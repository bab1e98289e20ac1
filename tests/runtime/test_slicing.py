"""Slices along each axis (views), putting slices back, in-plane spacing, areas, and 2D = one slice."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.imaging.slicing import (check_slice, mask_area_mm2, put_slice, slice_shape, slice_spacing,
                                             slice_view, take_slice)

SPACING = (5.0, 0.7, 0.5)  # (z, y, x) mm


@pytest.fixture
def vol() -> np.ndarray:
    return np.arange(4 * 5 * 6).reshape(4, 5, 6)  # (z, y, x)


@pytest.mark.parametrize(("axis", "index", "expected_shape"), [(0, 3, (5, 6)), (1, 2, (4, 6)), (2, 5, (4, 5))])
def test_take_slice_matches_numpy_indexing_and_is_a_view(vol, axis, index, expected_shape):
    plane = take_slice(vol, axis=axis, index=index)
    assert plane.shape == expected_shape == slice_shape(vol.shape, axis=axis)
    assert np.array_equal(plane, np.take(vol, index, axis=axis))
    assert np.shares_memory(plane, vol)  # no copy of a big volume per request
    assert slice_view(vol, axis=axis, index=index).shape == expected_shape


def test_axis_meaning_is_napari_slider_order(vol):
    # axis 1 fixes y: rows run along z, columns along x
    plane = take_slice(vol, axis=1, index=2)
    assert plane[3, 4] == vol[3, 2, 4]
    plane = take_slice(vol, axis=2, index=1)  # fixes x: (z, y)
    assert plane[2, 4] == vol[2, 4, 1]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_put_slice_copy_and_in_place(vol, axis):
    plane = np.full(slice_shape(vol.shape, axis=axis), -7)
    original = vol.copy()
    out = put_slice(vol, plane, axis=axis, index=1)
    assert np.array_equal(vol, original), "default returns a copy"
    assert (take_slice(out, axis=axis, index=1) == -7).all()
    untouched = np.delete(out, 1, axis=axis)
    assert np.array_equal(untouched, np.delete(original, 1, axis=axis))
    same = put_slice(vol, plane, axis=axis, index=1, inplace=True)
    assert same is vol and np.array_equal(vol, out)


def test_put_slice_checks_shape_and_casts(vol):
    with pytest.raises(InputError, match=r"slice data has shape \(6, 5\), but axis 0 slices of \(4, 5, 6\) are \(5, 6\)"):
        put_slice(vol, np.zeros((6, 5)), axis=0, index=0)
    labels = np.zeros((2, 3, 4), np.uint8)
    out = put_slice(labels, np.ones((3, 4), bool), axis=0, index=1)
    assert out.dtype == np.uint8 and out.sum() == 12


def test_check_slice_messages():
    with pytest.raises(InputError, match="^slice 40 is out of range: axis 0 has 25 slices \\(0–24\\)$"):
        check_slice((25, 256, 256), axis=0, index=40)
    with pytest.raises(InputError, match="slice -1 is out of range: axis 2 has 6 slices"):
        check_slice((4, 5, 6), axis=2, index=-1)  # negative indices are not wrapped: they are mistakes
    with pytest.raises(InputError, match="axis must be 0, 1 or 2; got 3"):
        check_slice((4, 5, 6), axis=3, index=0)
    with pytest.raises(InputError, match="must be integers"):
        check_slice((4, 5, 6), axis=0, index=1.5)
    with pytest.raises(InputError, match="2D or 3D"):
        check_slice((2, 3, 4, 5), axis=0, index=0)
    check_slice((4, 5, 6), axis=2, index=np.int64(5))  # numpy ints are fine


def test_2d_image_is_one_slice_axis0_index0():
    img = np.arange(12).reshape(3, 4)
    check_slice(img.shape, axis=0, index=0)
    assert take_slice(img, axis=0, index=0) is img
    assert slice_shape(img.shape, axis=0) == (3, 4)
    with pytest.raises(InputError, match="slice 1 is out of range: a 2D image has one slice"):
        take_slice(img, axis=0, index=1)
    with pytest.raises(InputError, match="a 2D image has one slice \\(axis 0, index 0\\); got axis 1"):
        check_slice(img.shape, axis=1, index=0)
    out = put_slice(img, np.zeros((3, 4), int), axis=0, index=0)
    assert out.sum() == 0 and img.sum() == 66
    assert slice_spacing((0.5, 0.25), 0) == (0.5, 0.25)
    assert mask_area_mm2(np.ones((3, 4), bool), (0.5, 0.25), 0) == pytest.approx(12 * 0.125)


def test_slice_spacing_and_area():
    assert slice_spacing(SPACING, 0) == (0.7, 0.5)
    assert slice_spacing(SPACING, 1) == (5.0, 0.5)
    assert slice_spacing(SPACING, 2) == (5.0, 0.7)
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True  # 6 pixels
    assert mask_area_mm2(mask, SPACING, 0) == pytest.approx(6 * 0.35)
    assert mask_area_mm2(mask.astype(np.uint8) * 9, SPACING, 2) == pytest.approx(6 * 3.5)
    with pytest.raises(InputError, match="must be 2D"):
        mask_area_mm2(np.ones((2, 2, 2)), SPACING, 0)
    with pytest.raises(InputError, match="axis 0, 1 or 2"):
        slice_spacing(SPACING, 5)


def test_slice_of_real_volume_area_matches_label_count(brain1_paths):
    from medplib_runtime.imaging.io import read_volume

    label = read_volume(brain1_paths[1])
    z = int(np.argmax((label.array > 0).sum(axis=(1, 2))))  # the slice with most lesion
    plane = take_slice(label.array, axis=0, index=z)
    area = mask_area_mm2(plane > 0, label.spacing, 0)
    assert area == pytest.approx((label.array[z] > 0).sum() * 0.78125**2, rel=1e-9) and area > 0
    # summing per-slice areas × thickness gives the lesion volume
    total_ml = sum(mask_area_mm2(take_slice(label.array, axis=0, index=i) > 0, label.spacing, 0)
                   for i in range(label.shape[0])) * label.spacing[0] / 1000
    assert total_ml == pytest.approx((label.array > 0).sum() * label.voxel_volume_ml)
