"""Region prompts for R questions, as MedPLIB made them. Masks are bool ``(y, x)``; points ``(row, col)``.

* point → a 41×41 square around a pixel of the structure (its demo's click), clipped to the image;
* box → the structure's bounding rectangle;
* free-form → a random 20–100 % sub-region of the largest component (its evaluation's regions):
  the fraction f is uniform in [0.2, 1]; we keep the ⌈f·N⌉ pixels nearest to a random seed pixel
  of the component, which gives one compact blob rather than scattered pixels.
"""

from __future__ import annotations

import numpy as np

POINT_SQUARE = 41
MODES = ("point", "box", "freeform")


def point_square(shape: tuple[int, int], row: int, col: int, size: int = POINT_SQUARE) -> np.ndarray:
    half = size // 2
    mask = np.zeros(shape, bool)
    mask[max(0, row - half):row + half + 1, max(0, col - half):col + half + 1] = True
    return mask


def box_region(shape: tuple[int, int], bbox: tuple[int, int, int, int]) -> np.ndarray:
    r0, c0, r1, c1 = bbox
    mask = np.zeros(shape, bool)
    mask[r0:r1 + 1, c0:c1 + 1] = True
    return mask


def freeform_subregion(component: np.ndarray, rng: np.random.Generator, lo: float = 0.2,
                       hi: float = 1.0) -> np.ndarray:
    pts = np.argwhere(component)
    seed = pts[int(rng.integers(len(pts)))]
    keep = max(1, int(np.ceil(rng.uniform(lo, hi) * len(pts))))
    order = np.argsort(((pts - seed) ** 2).sum(1), kind="stable")[:keep]
    mask = np.zeros(component.shape, bool)
    mask[tuple(pts[order].T)] = True
    return mask


def make_region(mode: str, component: np.ndarray, bbox: tuple[int, int, int, int],
                rng: np.random.Generator) -> np.ndarray:
    """A region of ``mode`` (one of MODES) for one connected component (bool ``(y, x)``)."""
    if mode == "point":
        pts = np.argwhere(component)
        r, c = pts[int(rng.integers(len(pts)))]
        return point_square(component.shape, int(r), int(c))
    if mode == "box":
        return box_region(component.shape, bbox)
    if mode == "freeform":
        return freeform_subregion(component, rng)
    raise ValueError(f"unknown region mode {mode!r}")


def background_square(labelled: np.ndarray, rng: np.random.Generator, size: int = POINT_SQUARE,
                      tries: int = 50) -> np.ndarray | None:
    """A point square that touches no labelled pixel (for "no" answers), or None if none fits."""
    rows, cols = labelled.shape
    for _ in range(tries):
        r, c = int(rng.integers(rows)), int(rng.integers(cols))
        sq = point_square(labelled.shape, r, c, size)
        if not (sq & labelled).any():
            return sq
    return None
