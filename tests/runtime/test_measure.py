"""Measurements equal hand-computed values on synthetic volumes with anisotropic spacing and a
rotated direction; bad input is refused in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.volume.measure import measure_labels

SPACING = (3.0, 0.5, 0.8)  # (z, y, x) mm
ORIGIN = (-40.0, 25.0, 100.0)  # ITK (x, y, z) LPS mm
A = math.radians(30)
ROTATED = (math.cos(A), -math.sin(A), 0.0, math.sin(A), math.cos(A), 0.0, 0.0, 0.0, 1.0)  # 30° about z, row-major
IDENTITY = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def _box_labels():
    labels = np.zeros((10, 40, 30), np.uint8)
    labels[2:6, 10:20, 5:11] = 1  # 4 × 10 × 6 voxels
    labels[7, 30:32, 20:22] = 2
    return labels


def test_volume_extent_diameter_centroid_by_hand_rotated():
    labels = _box_labels()
    image = np.full(labels.shape, -1000, np.int16)  # air: the image looks like CT in HU
    image[labels == 1] = 40
    image[2, 10, 5] = 100  # one brighter voxel
    m1, m2 = measure_labels(labels, spacing=SPACING, origin=ORIGIN, direction=ROTATED, image=image,
                            names={1: "lesion"})
    assert (m1.label, m1.name, m1.voxels) == (1, "lesion", 240)
    assert m1.volume_ml == pytest.approx(240 * 3.0 * 0.5 * 0.8 / 1000)
    assert m1.bbox_index == (2, 10, 5, 5, 19, 10)
    assert m1.extent_mm == pytest.approx((4 * 3.0, 10 * 0.5, 6 * 0.8))
    assert m1.slices == (2, 5)
    # farthest voxel centres on one slice: opposite corners of 10 × 6 voxels → (9·0.5, 5·0.8) mm apart
    assert m1.largest_diameter_mm == pytest.approx(math.hypot(9 * 0.5, 5 * 0.8))
    # centroid index (3.5, 14.5, 7.5) → ITK index (x, y, z) = (7.5, 14.5, 3.5); p = origin + R · (i ⊙ spacing)
    i_xyz = np.array([7.5 * 0.8, 14.5 * 0.5, 3.5 * 3.0])
    r = np.array(ROTATED).reshape(3, 3)
    lps = np.array(ORIGIN) + r @ i_xyz
    assert m1.centroid_index == pytest.approx((3.5, 14.5, 7.5))
    assert m1.centroid_lps == pytest.approx(tuple(lps))
    assert m1.centroid_ras == pytest.approx((-lps[0], -lps[1], lps[2]))
    assert m1.intensity.unit == "HU" and m1.intensity.max == 100 and m1.intensity.min == 40
    assert m1.intensity.mean == pytest.approx((239 * 40 + 100) / 240)
    assert not m1.touches_edge
    assert m2.voxels == 4 and m2.largest_diameter_mm == pytest.approx(math.hypot(0.5, 0.8))


def test_rotation_changes_positions_not_sizes():
    labels = _box_labels()
    a = measure_labels(labels, spacing=SPACING, origin=ORIGIN, direction=IDENTITY, label_ids=(1,))[0]
    b = measure_labels(labels, spacing=SPACING, origin=ORIGIN, direction=ROTATED, label_ids=(1,))[0]
    assert a.volume_ml == b.volume_ml and a.largest_diameter_mm == pytest.approx(b.largest_diameter_mm)
    assert a.centroid_lps != pytest.approx(b.centroid_lps)
    assert a.intensity is None


def test_laterality_and_edge():
    labels = np.zeros((4, 20, 40), np.uint8)
    labels[1:3, 5:10, 30:40] = 1  # high x index, touching the x edge
    labels[1:3, 5:10, 0:5] = 2
    # identity direction: +x index = +x LPS = patient's left
    left, right = measure_labels(labels, spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0), direction=IDENTITY)
    assert left.laterality == "left" and right.laterality == "right"
    assert left.touches_edge and right.touches_edge
    flipped = (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)  # x index runs to the patient's right (RAS-stored data)
    a, b = measure_labels(labels, spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0), direction=flipped)
    assert a.laterality == "right" and b.laterality == "left"


@pytest.mark.parametrize("labels, kwargs, message", [
    (np.zeros((3, 4, 5), np.uint8), {}, "empty"),
    (np.ones((4, 5), np.uint8), {}, "3D"),
    (np.ones((3, 4, 5), np.uint8), {"label_ids": (7,)}, "label 7 is not in the label volume"),
    (np.ones((3, 4, 5), np.uint8), {"image": np.zeros((3, 4, 6))}, "shape"),
    (np.full((3, 4, 5), 0.5), {}, "integer ids"),
])
def test_bad_input(labels, kwargs, message):
    with pytest.raises(InputError, match=message):
        measure_labels(labels, spacing=(1, 1, 1), origin=(0, 0, 0), direction=IDENTITY, **kwargs)
