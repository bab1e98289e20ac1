"""Shape-based interpolation of a 2D mask between two drawn slices.

ITK's MorphologicalContourInterpolator is not in SimpleITK's wheels (2.5 lacks it), so this is
the classic signed-distance interpolation (Raya & Udupa 1990) with the two shapes first moved onto
a straight centroid track: a structure that shifts between slices is carried across the gap
instead of fading out where the two shapes do not overlap, and the blended distance map
thresholded where its area is the linear interpolation of the two areas. Gaps of any length work; each
in-between slice depends only on the two bounding slices.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the mask's boundary: negative inside, positive outside (voxels)."""
    mask = mask.astype(bool)
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def _shifted(mask: np.ndarray, by: np.ndarray) -> np.ndarray:
    """``mask`` moved by ``by`` (rows, cols) voxels, rounded; what leaves the slice is lost."""
    r, c = (int(round(v)) for v in by)
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -r):h - max(0, r), max(0, -c):w - max(0, c)]
    out[max(0, r):max(0, r) + src.shape[0], max(0, c):max(0, c) + src.shape[1]] = src
    return out


def interpolate_between(first: np.ndarray, last: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` bool masks for the slices strictly between ``first`` and ``last`` (both non-empty 2D)."""
    first, last = first.astype(bool), last.astype(bool)
    if not first.any() or not last.any():
        raise ValueError("interpolate_between needs two non-empty masks")
    ca, cb = (np.array(ndimage.center_of_mass(m)) for m in (first, last))
    out = []
    for k in range(1, count + 1):
        t = k / (count + 1)
        # both shapes moved to the interpolated centroid, then their distance maps blended
        da = signed_distance(_shifted(first, t * (cb - ca)))
        db = signed_distance(_shifted(last, (t - 1) * (cb - ca)))
        blend = (1 - t) * np.where(np.isfinite(da), da, 1e6) + t * np.where(np.isfinite(db), db, 1e6)
        # the blend's zero level shrinks where the two shapes disagree (brain1 13 between 12 and 14:
        # 66 voxels for 524 and 247); its shape is kept but its level set to the interpolated area
        area = int(round((1 - t) * first.sum() + t * last.sum()))
        level = np.partition(blend.ravel(), area - 1)[area - 1]
        out.append(blend <= level)
    return out
