"""2D slices of ``(z, y, x)`` volumes along any axis, and their in-plane spacing.

axis 0 → ``(y, x)`` slice, axis 1 → ``(z, x)``, axis 2 → ``(z, y)``. A 2D ``(y, x)`` image is
one slice: axis 0, index 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_slice(shape: tuple[int, ...], *, axis: int, index: int) -> None:
    if len(shape) == 2:
        if index != 0:
            raise InputError(f"slice {index} is out of range: a 2D image has one slice (0)")
        return
    if len(shape) != 3:
        raise InputError(f"expected a 2D or 3D image, got shape {shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2; got {axis}")
    n = shape[axis]
    if not 0 <= index < n:
        raise InputError(f"slice {index} is out of range: axis {axis} has {n} slices (0–{n - 1})")


def take_slice(array: np.ndarray, *, axis: int, index: int) -> np.ndarray:
    """A view of slice ``index`` along ``axis`` (the whole array for 2D)."""
    check_slice(array.shape, axis=axis, index=index)
    return array if array.ndim == 2 else np.take(array, index, axis=axis)


def slice_view(array: np.ndarray, *, axis: int, index: int) -> np.ndarray:
    """A writable view of the slice (writing into it changes ``array``)."""
    check_slice(array.shape, axis=axis, index=index)
    return array if array.ndim == 2 else np.moveaxis(array, axis, 0)[index]


def slice_spacing(spacing: tuple[float, ...], axis: int) -> tuple[float, float]:
    """(row_mm, col_mm) of a slice along ``axis`` given array-order spacing."""
    if len(spacing) == 2:
        return float(spacing[0]), float(spacing[1])
    rest = [s for i, s in enumerate(spacing) if i != axis]
    return float(rest[0]), float(rest[1])


def mask_area_mm2(mask: np.ndarray, spacing: tuple[float, ...], axis: int) -> float:
    row_mm, col_mm = slice_spacing(spacing, axis)
    return float(np.count_nonzero(mask)) * row_mm * col_mm
