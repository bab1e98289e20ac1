"""Measurements of labels in a volume, in physical units, from the image geometry (numpy only).

Conventions: arrays ``(z, y, x)``; spacing in array order (mm); positions in patient
coordinates, LPS (ITK's: +x = patient Left, +y = Posterior, +z = Superior) and RAS (3D
Slicer's: the same point with x and y negated). Rotated and flipped direction matrices are
honoured everywhere a position or a distance is computed (index → physical via
imaging.geometry); volumes only need the spacing (the direction is orthonormal).

* volume: voxels × Π spacing, in mL (1 mL = 1000 mm³).
* largest in-plane diameter: on each slice along axis 0 (the acquisition plane), the largest
  distance between the centres of two voxels of the label (the RECIST-style long axis), in mm;
  the largest over all slices, and the slice it is on.
* laterality: the side of the patient's midline the centroid is on, taking the midline as the
  sagittal plane through the volume's centre (no body segmentation here: say so in answers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from ..imaging.geometry import index_to_physical

MIDLINE_TOLERANCE_MM = 5.0


@dataclass(frozen=True)
class IntensityStats:
    mean: float
    std: float
    min: float
    max: float
    unit: str  # "HU" for CT, "a.u." otherwise


@dataclass(frozen=True)
class LabelMeasurement:
    label: int
    name: str | None
    voxels: int
    volume_ml: float
    bbox_index: tuple[int, ...]  # (z0, y0, x0, z1, y1, x1), inclusive
    extent_mm: tuple[float, ...]  # along each array axis: number of voxels spanned × spacing
    slices: tuple[int, int]  # first and last slice along axis 0 that hold the label
    largest_diameter_mm: float
    diameter_slice: int
    centroid_index: tuple[float, ...]  # (z, y, x), continuous
    centroid_lps: tuple[float, ...]  # (x, y, z) mm
    centroid_ras: tuple[float, ...]  # (x, y, z) mm
    laterality: str  # "left", "right" or "midline" (patient's)
    touches_edge: bool
    intensity: IntensityStats | None

    def as_dict(self) -> dict:
        return asdict(self)


def measure_labels(labels: np.ndarray, *, spacing: tuple[float, ...], origin: tuple[float, ...],
                   direction: tuple[float, ...], image: np.ndarray | None = None, modality: str = "auto",
                   label_ids: tuple[int, ...] | None = None,
                   names: dict[int, str] | None = None) -> tuple[LabelMeasurement, ...]:
    """Measure every non-zero label (or ``label_ids``) of a ``(z, y, x)`` label volume."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3D (z, y, x) volume to measure; got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
        if labels.dtype.kind not in "f":
            raise InputError(f"labels must hold integer ids; got {labels.dtype}")
        bad = int(np.count_nonzero(~np.isfinite(labels)))
        if bad:  # NaN != 0, so each NaN voxel would count as labelled
            raise InputError(f"labels hold {bad:,} NaN/inf voxels; label ids must be whole numbers")
        if not np.array_equal(labels, np.round(labels)):
            raise InputError(f"labels must hold integer ids; got {labels.dtype} values with fractions")
        labels = labels.astype(np.int64)
    if labels.size and labels.dtype.kind in "if" and labels.min() < 0:
        raise InputError(f"labels hold negative ids (lowest {labels.min()}): label ids are 0 (background) or positive")
    _check_geometry(spacing, direction, labels.ndim)
    if image is not None and np.shape(image) != labels.shape:
        raise InputError(f"labels have shape {labels.shape} but the image is {np.shape(image)}")
    present = [int(v) for v in np.unique(labels) if v != 0]
    if label_ids is None:
        label_ids = tuple(present)
        if not label_ids:
            raise InputError("the label volume is empty: nothing to measure")
    for lab in label_ids:
        if lab <= 0:
            raise InputError(f"label {lab} cannot be measured: ids are positive (0 is the background)")
        if lab not in present:
            raise InputError(f"label {lab} is not in the label volume (present: {present or 'none'})")
    unit = _unit(image, modality)
    geom = dict(spacing=tuple(spacing), origin=tuple(origin), direction=tuple(direction))
    return tuple(_measure(labels == lab, lab, (names or {}).get(lab), image, unit, geom) for lab in label_ids)


def _check_geometry(spacing, direction, ndim: int) -> None:
    """Sizes come from the spacing and positions from the direction: a NaN or non-positive spacing, or a
    direction that is not a rotation (ITK's are orthonormal), would give numbers that look right."""
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (ndim,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"spacing must be {ndim} positive numbers (mm); got {tuple(spacing.tolist())}")
    d = np.asarray(direction, dtype=np.float64)
    if d.size != ndim * ndim or not np.isfinite(d).all() or not np.allclose(d.reshape(ndim, ndim) @ d.reshape(
            ndim, ndim).T, np.eye(ndim), atol=1e-4):
        raise InputError(f"direction must be a {ndim}×{ndim} rotation (orthonormal); got {tuple(d.tolist())}")


def _unit(image, modality: str) -> str:
    if image is None:
        return "a.u."
    if modality == "auto":
        from ..imaging.windowing import guess_modality

        modality = guess_modality(np.asarray(image))
    return "HU" if modality == "CT" else "a.u."


def _measure(mask: np.ndarray, label: int, name, image, unit: str, geom: dict) -> LabelMeasurement:
    spacing = np.asarray(geom["spacing"], float)
    idx = np.argwhere(mask)  # N×3 (z, y, x)
    lo, hi = idx.min(0), idx.max(0)
    centroid = idx.mean(0)
    lps = index_to_physical(centroid, **geom)
    diameter, on_slice = _largest_in_plane_diameter(mask, idx, geom)
    centre = index_to_physical((np.asarray(mask.shape, float) - 1) / 2, **geom)
    offset = lps[0] - centre[0]  # +x LPS = towards the patient's left
    side = "midline" if abs(offset) <= MIDLINE_TOLERANCE_MM else ("left" if offset > 0 else "right")
    stats = None
    if image is not None:
        values = np.asarray(image)[mask].astype(np.float64)
        stats = IntensityStats(float(values.mean()), float(values.std()), float(values.min()), float(values.max()),
                               unit)
    touches = bool((lo == 0).any() or (hi == np.asarray(mask.shape) - 1).any())
    return LabelMeasurement(
        label=label, name=name, voxels=int(len(idx)), volume_ml=float(len(idx) * spacing.prod() / 1000.0),
        bbox_index=tuple(int(v) for v in np.concatenate([lo, hi])),
        extent_mm=tuple(float((h - l + 1) * s) for l, h, s in zip(lo, hi, spacing)),
        slices=(int(lo[0]), int(hi[0])), largest_diameter_mm=diameter, diameter_slice=on_slice,
        centroid_index=tuple(float(v) for v in centroid), centroid_lps=tuple(float(v) for v in lps),
        centroid_ras=(float(-lps[0]), float(-lps[1]), float(lps[2])), laterality=side, touches_edge=touches,
        intensity=stats)


def _largest_in_plane_diameter(mask: np.ndarray, idx: np.ndarray, geom: dict) -> tuple[float, int]:
    """Max over axis-0 slices of the largest voxel-centre distance (physical mm, any rotation)."""
    best, best_slice = 0.0, int(idx[0, 0])
    for z in np.unique(idx[:, 0]):
        pts = idx[idx[:, 0] == z]
        if len(pts) > 3:
            pts = _hull_points(pts)
        phys = index_to_physical(pts.astype(float), **geom)
        d = _max_pairwise(phys)
        if d > best:
            best, best_slice = d, int(z)
    return best, best_slice


def _hull_points(pts: np.ndarray) -> np.ndarray:
    """The in-plane convex hull's vertices (the farthest pair is always among them)."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        return pts[ConvexHull(pts[:, 1:].astype(float)).vertices]
    except (QhullError, ValueError):  # collinear points: all of them are candidates
        return pts


def _max_pairwise(p: np.ndarray) -> float:
    if len(p) < 2:
        return 0.0
    d = p[:, None, :] - p[None, :, :]
    return float(np.sqrt((d ** 2).sum(-1)).max())
