"""Propagate and Measure for the docks, without Qt: seeds from layers, measurements of layers.

A layer's geometry is the file's (kept in metadata by our reader) or its scale/translate.
Measurements are stored in the labels layer's metadata under ``medplib_measurements``
(label id → the measurement as a dict), so they travel with the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import SliceRef

from ._layers import volume_like
from .label_writes import NAMES_KEY

MEASUREMENTS_KEY = "medplib_measurements"


def slice_of(data: np.ndarray, ref: SliceRef) -> np.ndarray:
    return np.moveaxis(np.asarray(data), ref.axis, 0)[ref.index]


CONFIDENCE_KEY = "medplib_slice_confidence"  # label → {slice index: confidence} of its last Propagate
UNSURE_KEY = "medplib_unsure_slices"  # label → slices to check


@dataclass(frozen=True)
class PropagationPlan:
    """What Propagate will do, fixed when the button is pressed: fill from ``seeds`` (every slice of the
    layer that holds the label is a seed), or, after a Propagate of the same label, redo only what the
    ``corrections`` (slices the user changed since) affect."""

    label: int
    axis: int
    seeds: np.ndarray | None = None  # label volume for propagate_from_seeds
    previous: object | None = None  # the last SeededResult of this label in this layer
    corrections: tuple[tuple[int, np.ndarray], ...] = ()

    def describe(self) -> str:
        if self.previous is not None:
            return "re-propagating from corrected slice(s) " + ", ".join(str(i) for i, _ in self.corrections)
        slices = np.nonzero(np.moveaxis(self.seeds != 0, self.axis, 0).any(axis=(1, 2)))[0]
        return f"propagating from {len(slices)} seed slice(s) ({', '.join(map(str, slices[:6]))})"


def plan_propagation(layer, label: int, axis: int, previous=None) -> PropagationPlan:
    """The plan for ``label`` of ``layer`` along ``axis``; InputError (one line) when there is nothing to do."""
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise InputError("Propagate needs a 3D image and labels layer")
    holds = data == label
    if not holds.any():
        raise InputError(f"label {label} is empty in {layer.name!r}: segment or paint it on a slice first")
    if previous is not None and previous.axis == axis and previous.mask.shape == data.shape:
        now, then = np.moveaxis(holds, axis, 0), np.moveaxis(previous.mask != 0, axis, 0)
        changed = [i for i in range(now.shape[0]) if not np.array_equal(now[i], then[i])]
        if not changed:
            raise InputError(f"label {label} is as the last Propagate left it: correct a slice (a box and Segment, "
                             "or paint) and press Propagate again")
        return PropagationPlan(label, axis, previous=previous,
                               corrections=tuple((i, now[i].copy()) for i in changed))
    return PropagationPlan(label, axis, seeds=np.where(holds, label, 0).astype(np.uint16))


def run_plan(runtime, volume: np.ndarray, plan: PropagationPlan, *, modality: str, progress=None, cancel=None):
    """The plan carried out (a worker calls this): a SeededResult."""
    from medplib_runtime.volume.seeded import correct_and_continue, propagate_from_seeds

    if plan.previous is None:
        return propagate_from_seeds(runtime, volume, plan.seeds, label=plan.label, axis=plan.axis, modality=modality,
                                    progress=progress, cancel=cancel)
    result = plan.previous
    for index, mask in plan.corrections:
        result = correct_and_continue(runtime, volume, result, index, mask, modality=modality, progress=progress,
                                      cancel=cancel)
    return result


def remember_confidence(layer, result) -> None:
    """Per-slice confidence and the unsure slices of ``result`` in the layer's metadata (they travel with it)."""
    layer.metadata.setdefault(CONFIDENCE_KEY, {})[result.label] = {int(i): round(float(c), 3)
                                                                    for i, c in result.confidence.items()}
    layer.metadata.setdefault(UNSURE_KEY, {})[result.label] = [int(i) for i in result.unsure]


def unsure_note(layer, label: int, index: int) -> str | None:
    """A line to show when the user looks at a slice the last Propagate was unsure of (None otherwise)."""
    if index not in (layer.metadata.get(UNSURE_KEY) or {}).get(label, ()):
        return None
    confidence = (layer.metadata.get(CONFIDENCE_KEY) or {}).get(label, {}).get(index)
    said = f"confidence {confidence:.2f}" if confidence is not None else "nothing written here"
    return (f"MedPLIB is unsure of label {label} on slice {index} ({said}): check it; a box + Segment or "
            "paint corrects it, then Propagate redoes the slices beyond")


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
