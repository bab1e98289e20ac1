"""Voxel ⇄ physical mapping for ITK geometry, and the napari affine that shows it exactly.

Conventions (docs/design.md, "Conventions"): indices are in numpy **array order** ``(z, y, x)`` (``(y, x)`` for 2D);
``spacing`` is in array order (mm); ``origin`` and ``direction`` are ITK's: ``origin`` is the
physical (LPS, mm) position of voxel 0 in ITK order ``(x, y[, z])``, ``direction`` is the
row-major ``ndim × ndim`` matrix whose columns are the physical directions of the ITK index axes.

ITK: ``p_xyz = origin + direction @ diag(spacing_xyz) @ i_xyz``. Array order just reverses
both sides, which is what napari's world coordinates are when a layer is given
``scale = spacing`` and ``translate = origin`` reversed (exact only for an identity direction;
:func:`napari_affine` is exact for any direction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError

_TOL = 1e-6


def identity_direction(ndim: int) -> tuple[float, ...]:
    """The ``ndim × ndim`` identity, row-major."""
    return tuple(float(v) for v in np.eye(ndim).ravel())


def direction_matrix(direction: Sequence[float]) -> np.ndarray:
    """Row-major tuple → ``(n, n)`` float64 matrix (ITK order); n² must equal ``len(direction)``."""
    d = np.asarray(direction, dtype=np.float64).ravel()
    n = int(round(np.sqrt(d.size)))
    if n * n != d.size or n not in (2, 3):
        raise InputError(f"direction must have 4 or 9 values (2×2 or 3×3), got {d.size}")
    return d.reshape(n, n)


def is_identity(direction: Sequence[float], *, tol: float = _TOL) -> bool:
    """True when the direction matrix is the identity (napari scale/translate are then exact)."""
    m = direction_matrix(direction)
    return bool(np.allclose(m, np.eye(m.shape[0]), atol=tol, rtol=0.0))


def _array_order_linear(spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Linear part of index(array order) → physical(array order): P · D · P · diag(spacing)."""
    d = direction_matrix(direction)
    n = d.shape[0]
    if len(spacing) != n:
        raise InputError(f"spacing has {len(spacing)} values but direction is {n}×{n}")
    flip = np.eye(n)[::-1]  # reverses axis order (its own inverse)
    return flip @ d @ flip @ np.diag(np.asarray(spacing, dtype=np.float64))


def napari_affine(*, spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """``(ndim+1, ndim+1)`` homogeneous matrix mapping array indices ``(z, y, x)`` to world
    ``(z, y, x)`` = reversed LPS mm. Pass as a layer's ``affine=`` (with scale/translate left at
    defaults) to show a rotated volume exactly."""
    lin = _array_order_linear(spacing, direction)
    n = lin.shape[0]
    if len(origin) != n:
        raise InputError(f"origin has {len(origin)} values, expected {n}")
    out = np.eye(n + 1)
    out[:n, :n] = lin
    out[:n, n] = np.asarray(origin, dtype=np.float64)[::-1]
    return out


def index_to_physical(index: np.ndarray | Sequence[float], *, spacing: Sequence[float],
                      origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Continuous array-order indices ``(..., ndim)`` (z, y, x) → physical points ``(..., ndim)``
    in ITK order (x, y, z), LPS mm; the same numbers as ITK's ``TransformContinuousIndexToPhysicalPoint``."""
    affine = napari_affine(spacing=spacing, origin=origin, direction=direction)
    n = affine.shape[0] - 1
    idx = np.asarray(index, dtype=np.float64)
    if idx.shape[-1] != n:
        raise InputError(f"index must end in {n} coordinates, got shape {idx.shape}")
    world = idx @ affine[:n, :n].T + affine[:n, n]
    return world[..., ::-1]


def physical_to_index(point: np.ndarray | Sequence[float], *, spacing: Sequence[float],
                      origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Physical points ``(..., ndim)`` (x, y, z LPS mm) → continuous array-order indices (z, y, x)."""
    affine = napari_affine(spacing=spacing, origin=origin, direction=direction)
    n = affine.shape[0] - 1
    pts = np.asarray(point, dtype=np.float64)
    if pts.shape[-1] != n:
        raise InputError(f"point must end in {n} coordinates, got shape {pts.shape}")
    inv = np.linalg.inv(affine)
    world = pts[..., ::-1]
    return world @ inv[:n, :n].T + inv[:n, n]


def orthonormalize(direction: np.ndarray) -> np.ndarray:
    """Nearest orthonormal matrix (polar decomposition via SVD); keeps the handedness."""
    u, _, vt = np.linalg.svd(np.asarray(direction, dtype=np.float64))
    return u @ vt


def geometry_differences(a, b) -> str:
    """Which of spacing, origin, direction differ between two volumes of one shape ('' when none)."""
    names = [name for name, same in (
        ("spacing", np.allclose(a.spacing, b.spacing, rtol=1e-4)),
        ("origin", np.allclose(a.origin, b.origin, atol=1e-3)),
        ("direction", np.allclose(a.direction, b.direction, atol=1e-4))) if not same]
    return " and ".join(names) if len(names) < 3 else "spacing, origin and direction"
