"""Exact facts from a label volume and its image geometry — the only source of answers.

Arrays are ``(z, y, x)``; slices are taken along axis 0 (the acquisition plane); a 2D position
is ``(row, col)`` on that slice. Spacing is in array order (mm); positions are LPS mm (ITK).

Volume-level facts come from :func:`medplib_runtime.volume.measure.measure_labels` (volume mL =
voxels × Π spacing / 1000, largest in-plane diameter, centroid, laterality, intensity with HU for
CT). Slice-level facts measure the one slice the same way (a 1-slice sub-volume with the slice's
own origin), so both agree by construction. Laterality is the side of the patient's midline —
the sagittal plane through the *volume's* centre, ±5 mm — that the centroid lies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..imaging.geometry import direction_matrix, index_to_physical
from ..imaging.io import Volume
from ..volume.measure import MIDLINE_TOLERANCE_MM, LabelMeasurement, measure_labels

GEOMETRY_TOL = 1e-3  # mm / direction cosine: NRRD/NIfTI round trips differ by ~1e-6


@dataclass(frozen=True)
class Component:
    """One connected piece (8-connected) of a label on a slice; ``mask`` is bool ``(y, x)``."""

    pixels: int
    area_mm2: float
    bbox: tuple[int, int, int, int]  # (r0, c0, r1, c1), inclusive
    centroid: tuple[float, float]  # (row, col)
    diameter_mm: float  # largest distance between two pixel centres
    laterality: str  # patient's "left", "right" or "midline"
    mask: np.ndarray = field(compare=False, repr=False)


@dataclass(frozen=True)
class SliceLabelFacts:
    """One label on one slice: all its pixels, and its connected pieces (largest first)."""

    label: int
    name: str
    pixels: int
    area_mm2: float
    diameter_mm: float
    laterality: str
    intensity_mean: float
    intensity_std: float
    intensity_unit: str  # "HU" for CT, "a.u." otherwise
    components: tuple[Component, ...]

    @property
    def largest(self) -> Component:
        return self.components[0]


@dataclass(frozen=True)
class VolumeFacts:
    """Per-volume facts: what the case metadata says plus exact measurements per label."""

    modality: str
    body_region: str
    plane: str  # of slices along axis 0: "axial", "coronal" or "sagittal"
    labels: tuple[LabelMeasurement, ...]

    def by_name(self, name: str) -> LabelMeasurement:
        for m in self.labels:
            if m.name == name:
                return m
        raise KeyError(name)


def plane_of_axis0(direction: tuple[float, ...]) -> str:
    """Which anatomical plane a slice along array axis 0 shows: its normal is ITK index axis z."""
    normal = direction_matrix(direction)[:, -1]  # physical direction of ITK's last index axis
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def check_case(image: Volume, labels: Volume, names: dict[int, str], *, case: str) -> None:
    """Raise one-line InputErrors for mismatched geometry, empty labels, unnamed or unknown labels."""
    if image.ndim != 3 or labels.ndim != 3:
        raise InputError(f"case {case}: image and labels must be 3D volumes, got {image.shape} and {labels.shape}")
    if image.shape != labels.shape:
        raise InputError(f"case {case}: labels are {labels.shape} but the image is {image.shape} (z, y, x)")
    for what, a, b in (("spacing", image.spacing, labels.spacing), ("origin", image.origin, labels.origin),
                       ("direction", image.direction, labels.direction)):
        if not np.allclose(a, b, atol=GEOMETRY_TOL, rtol=0):
            raise InputError(f"case {case}: label {what} {tuple(round(v, 4) for v in b)} differs from the image's"
                             f" {tuple(round(v, 4) for v in a)}")
    arr = np.asarray(labels.array)
    if arr.dtype.kind not in "biu":
        raise InputError(f"case {case}: labels must hold integer ids, got {arr.dtype}")
    present = [int(v) for v in np.unique(arr) if v != 0]
    if not present:
        raise InputError(f"case {case}: the label volume is empty")
    unnamed = [v for v in present if v not in names]
    if unnamed:
        raise InputError(f"case {case}: label ids {unnamed} have no name in the metadata 'labels'")
    missing = {k: v for k, v in names.items() if k not in present}
    if missing:
        raise InputError(f"case {case}: metadata names labels not in the label volume: {missing}")


def volume_facts(image: Volume, labels: Volume, names: dict[int, str], *, modality: str,
                 body_region: str) -> VolumeFacts:
    meas = measure_labels(np.asarray(labels.array), spacing=image.spacing, origin=image.origin,
                          direction=image.direction, image=image.array, modality=modality, names=names)
    return VolumeFacts(modality, body_region, plane_of_axis0(image.direction), meas)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected pieces of a 2D bool mask, largest first (SimpleITK relabels by size)."""
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    cc = sitk.RelabelComponent(cc, sortByObjectSize=True)
    arr = sitk.GetArrayFromImage(cc)
    return [arr == i for i in range(1, int(arr.max()) + 1)]


def slice_facts(image: Volume, labels: np.ndarray, k: int, names: dict[int, str], *,
                modality: str) -> tuple[SliceLabelFacts, ...]:
    """Facts of every named label present on slice ``k`` (axis 0) of a ``(z, y, x)`` label array."""
    plane = np.asarray(labels)[k]
    out = []
    for lab in sorted(names):
        mask = plane == lab
        if not mask.any():
            continue
        whole = _measure_2d(mask, image, k, modality)
        comps = tuple(_component(c, image, k, modality) for c in components(mask))
        st = whole.intensity
        out.append(SliceLabelFacts(lab, names[lab], whole.voxels, _area(whole.voxels, image), whole.largest_diameter_mm,
                                   _side(whole, image), st.mean, st.std, st.unit, comps))
    return tuple(out)


def _area(pixels: int, image: Volume) -> float:
    return float(pixels * image.spacing[1] * image.spacing[2])


def _measure_2d(mask: np.ndarray, image: Volume, k: int, modality: str) -> LabelMeasurement:
    """Measure one slice as a 1-slice volume whose origin is slice k's (same spacing, direction)."""
    origin_k = tuple(index_to_physical((k, 0, 0), spacing=image.spacing, origin=image.origin,
                                       direction=image.direction))
    return measure_labels(mask[None].astype(np.uint8), spacing=image.spacing, origin=origin_k,
                          direction=image.direction, image=np.asarray(image.array)[k][None],
                          modality=modality, label_ids=(1,))[0]


def _side(m: LabelMeasurement, image: Volume) -> str:
    """Laterality against the whole volume's midline (measure_labels' rule, see module doc)."""
    centre = index_to_physical((np.asarray(image.shape, float) - 1) / 2, spacing=image.spacing,
                               origin=image.origin, direction=image.direction)
    offset = m.centroid_lps[0] - centre[0]  # +x LPS = the patient's left
    return "midline" if abs(offset) <= MIDLINE_TOLERANCE_MM else ("left" if offset > 0 else "right")


def _component(mask: np.ndarray, image: Volume, k: int, modality: str) -> Component:
    m = _measure_2d(mask, image, k, modality)
    _, r0, c0, _, r1, c1 = m.bbox_index
    return Component(m.voxels, _area(m.voxels, image), (r0, c0, r1, c1), (m.centroid_index[1], m.centroid_index[2]),
                     m.largest_diameter_mm, _side(m, image), mask)
