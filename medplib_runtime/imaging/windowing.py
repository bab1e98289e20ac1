"""Intensity windows that fit the modality: CT in Hounsfield units, MR by percentiles.

The window is computed once per *volume*, so neighbouring slices look alike to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

CT_SOFT_TISSUE = (-160.0, 240.0)  # level 40, width 400 HU (MedSAM's CT preprocessing uses the same idea)
MR_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityWindow:
    lo: float
    hi: float
    modality: str

    def describe(self) -> str:
        return f"{self.modality} window [{self.lo:g}, {self.hi:g}]"


def finite_sample(array: np.ndarray, max_values: int = 2_000_000) -> np.ndarray:
    """The finite values of ``array`` (float64), strided down to at most ``max_values``."""
    flat = np.asarray(array).ravel()
    if flat.size > max_values:  # a strided sample keeps percentiles stable and fast
        flat = flat[:: flat.size // max_values + 1]
    flat = flat.astype(np.float64, copy=False)
    return flat[np.isfinite(flat)]


def guess_modality(array: np.ndarray) -> str:
    """'CT' when the values look like Hounsfield units (air near -1000), else 'MR'."""
    values = finite_sample(array)
    if values.size == 0:
        return "other"
    return "CT" if np.percentile(values, 1) < -500 and values.max() > 0 else "MR"


def window_for(array: np.ndarray, modality: str = "auto") -> IntensityWindow:
    """The window for a whole image; NaN-only or constant images → InputError."""
    values, vmin, vmax = _finite_range(array, "every voxel")
    modality = guess_modality(array) if modality == "auto" else modality
    if modality == "CT":
        return IntensityWindow(*CT_SOFT_TISSUE, modality="CT")
    lo, hi = np.percentile(values, MR_PERCENTILES)
    if hi - lo <= 0:
        lo, hi = vmin, vmax
    return IntensityWindow(float(lo), float(hi), modality=modality if modality in ("MR", "other") else "MR")


def rgb_window(array: np.ndarray) -> IntensityWindow:
    """An RGB picture's window: min-max over all its channels together, as MedSAM/LiteMedSAM normalise a
    colour image (no CT/MR windowing: its values are already display values). NaN-only/constant → InputError."""
    _, vmin, vmax = _finite_range(array, "every pixel", " in every channel")
    return IntensityWindow(vmin, vmax, modality="RGB")


def _finite_range(array: np.ndarray, what: str, where: str = "") -> tuple[np.ndarray, float, float]:
    """A sample of the finite values and their min/max; NaN-only or constant images → InputError."""
    values = finite_sample(array)
    if values.size == 0:
        raise InputError("image has no finite values (all NaN/inf): nothing to segment")
    vmin, vmax = float(values.min()), float(values.max())
    if vmax - vmin <= 1e-6 * max(1.0, abs(vmax)):
        raise InputError(f"image is constant ({what} = {vmin:g}{where}): nothing to segment")
    return values, vmin, vmax


def apply_window(array: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """→ float32 in [0, 1], the same shape (an RGB ``(y, x, 3)`` keeps its channels); NaNs become 0."""
    x = (np.asarray(array, dtype=np.float32) - window.lo) / (window.hi - window.lo)
    return np.nan_to_num(np.clip(x, 0.0, 1.0), nan=0.0)
