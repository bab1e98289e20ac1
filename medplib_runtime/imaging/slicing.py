"""2D slices of ``(z, y, x)`` volumes along any axis, and their in-plane spacing.

axis 0 → a ``(y, x)`` slice, axis 1 → ``(z, x)``, axis 2 → ``(z, y)``: the two remaining axes in
array order, as napari shows them when that axis is the slider. A 2D ``(y, x)`` image is treated
as a volume with a single slice: axis 0, index 0 (anything else is an InputError).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def check_slice(shape: tuple[int, ...], *, axis: int, index: int) -> None:
    """InputError unless ``(axis, index)`` names a slice of an array of ``shape``."""
    if isinstance(axis, bool) or isinstance(index, bool) or not isinstance(axis, (int, np.integer)) \
            or not isinstance(index, (int, np.integer)):
        raise InputError(f"axis and slice index must be integers, got axis={axis!r}, index={index!r}")
    if len(shape) == 2:
        if axis != 0:
            raise InputError(f"a 2D image has one slice (axis 0, index 0); got axis {axis}")
        if index != 0:
            raise InputError(f"slice {index} is out of range: a 2D image has one slice (0)")
        return
    if len(shape) != 3:
        raise InputError(f"expected a 2D or 3D image, got shape {tuple(shape)}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2; got {axis}")
    n = shape[axis]
    if not 0 <= index < n:
        raise InputError(f"slice {index} is out of range: axis {axis} has {n} slices (0–{n - 1})")


def slice_shape(shape: tuple[int, ...], *, axis: int) -> tuple[int, int]:
    """Shape of a slice along ``axis``: the other two axes in array order (2D: the shape itself)."""
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    check_slice(shape, axis=axis, index=0)
    rest = [int(n) for i, n in enumerate(shape) if i != axis]
    return rest[0], rest[1]


def take_slice(array: np.ndarray, *, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` as a 2D **view** (no copy; the whole array for 2D).

    Writing into the result writes into ``array`` (when ``array`` is writable).
    """
    check_slice(array.shape, axis=axis, index=index)
    if array.ndim == 2:
        return array
    key = [slice(None)] * 3
    key[axis] = index  # basic indexing → a view, unlike np.take which copies
    return array[tuple(key)]


def slice_view(array: np.ndarray, *, axis: int, index: int) -> np.ndarray:
    """A writable view of the slice (writing into it changes ``array``). Same as :func:`take_slice`."""
    return take_slice(array, axis=axis, index=index)


def put_slice(array: np.ndarray, plane: np.ndarray, *, axis: int, index: int, inplace: bool = False) -> np.ndarray:
    """Put a 2D ``plane`` at slice ``index`` along ``axis``.

    ``inplace=False`` (default) leaves ``array`` untouched and returns a modified copy;
    ``inplace=True`` writes into ``array`` and returns it. ``plane`` is cast to ``array``'s dtype.
    """
    check_slice(array.shape, axis=axis, index=index)
    plane = np.asarray(plane)
    expected = slice_shape(array.shape, axis=axis)
    if plane.shape != expected:
        raise InputError(f"slice data has shape {plane.shape}, but axis {axis} slices of {array.shape} are {expected}")
    out = array if inplace else array.copy()
    take_slice(out, axis=axis, index=index)[...] = plane
    return out


def slice_spacing(spacing: tuple[float, ...], axis: int) -> tuple[float, float]:
    """(row_mm, col_mm) of a slice along ``axis`` given array-order spacing (2D: the spacing itself)."""
    if len(spacing) == 2:
        if axis != 0:
            raise InputError(f"a 2D image has one slice (axis 0, index 0); got axis {axis}")
        return float(spacing[0]), float(spacing[1])
    if len(spacing) != 3 or axis not in (0, 1, 2):
        raise InputError(f"need 2 or 3 spacings and axis 0, 1 or 2; got {tuple(spacing)} and axis {axis}")
    rest = [float(s) for i, s in enumerate(spacing) if i != axis]
    return rest[0], rest[1]


def mask_area_mm2(mask: np.ndarray, spacing: tuple[float, ...], axis: int) -> float:
    """Area in mm² of the non-zero pixels of a 2D slice mask along ``axis``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"a slice mask must be 2D, got shape {mask.shape}")
    row_mm, col_mm = slice_spacing(spacing, axis)
    return float(np.count_nonzero(mask)) * row_mm * col_mm
