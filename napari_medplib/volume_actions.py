"""Propagate and Measure for the docks, without Qt: seeds from layers, measurements of layers.

A layer's geometry is the file's (kept in metadata by our reader) or its scale/translate.
Measurements are stored in the labels layer's metadata under ``medplib_measurements``
(label id → the measurement as a dict), so they travel with the layer.
"""

from __future__ import annotations

import numpy as np

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import SliceRef

from ._layers import volume_like
from .label_writes import NAMES_KEY

MEASUREMENTS_KEY = "medplib_measurements"


def slice_of(data: np.ndarray, ref: SliceRef) -> np.ndarray:
    return np.moveaxis(np.asarray(data), ref.axis, 0)[ref.index]


def seed_from_layer(layer, ref: SliceRef, label: int) -> np.ndarray:
    """The label's mask on the current slice of ``layer``; InputError if it is empty there."""
    if np.ndim(layer.data) != 3:
        raise InputError("Propagate needs a 3D image and labels layer")
    seed = slice_of(layer.data, ref) == label
    if not seed.any():
        raise InputError(f"label {label} is empty on slice {ref.index} of {layer.name!r}: segment or paint it first")
    return seed


def measure_layer(labels_layer, image_layer=None, label_ids: tuple[int, ...] | None = None):
    """Measure ``labels_layer`` (in its image's geometry); stores the results in its metadata."""
    from medplib_runtime.volume.measure import measure_labels

    data = np.asarray(labels_layer.data)
    if data.ndim != 3:
        raise InputError(f"{labels_layer.name!r} is 2D: measurements need a 3D labels layer")
    source = image_layer if image_layer is not None and np.shape(image_layer.data) == data.shape else labels_layer
    geo = volume_like(data, source.metadata, source.scale, source.translate)
    names = {int(k): v for k, v in labels_layer.metadata.get(NAMES_KEY, {}).items()}
    image = None if source is labels_layer else np.asarray(image_layer.data)
    found = measure_labels(data, spacing=geo.spacing, origin=geo.origin, direction=geo.direction, image=image,
                           modality=(image_layer.metadata.get("modality", "auto") if image_layer is not None
                                     else "auto"), label_ids=label_ids, names=names)
    stored = labels_layer.metadata.setdefault(MEASUREMENTS_KEY, {})
    for m in found:
        stored[m.label] = m.as_dict()
    return found


def describe(m) -> str:
    """One line for a status bar or the chat."""
    who = f"{m.name} (label {m.label})" if m.name else f"label {m.label}"
    extra = f", mean {m.intensity.mean:.0f} {m.intensity.unit}" if m.intensity is not None else ""
    return (f"{who}: {m.volume_ml:.2f} mL, {m.voxels} voxels, Ø {m.largest_diameter_mm:.1f} mm, slices "
            f"{m.slices[0]}–{m.slices[1]}, {m.laterality}{extra}" + (" (touches the volume edge)" if m.touches_edge
                                                                      else ""))
