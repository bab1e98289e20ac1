"""A chat mask through the volume (no Qt): its label in the chat layer propagated from the answer's slice,
as the segment dock's Propagate does (volume_actions), and written back as one undoable write.

A :class:`VolumeContext` is fixed at the click (layer, label, the plan, the pixels), so what the user does
while it runs does not move the result; the worker only computes, the write happens on the main thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medplib_runtime.errors import InputError

from .chat_masks import ChatWrite
from .chat_state import ChatEntry, PlacedMask, VolumeMask
from .label_writes import write_volume
from .prompt_capture import grid_shape
from .runtime_factory import get_runtime
from .volume_actions import CONFIDENCE_KEY, UNSURE_KEY, PropagationPlan, plan_propagation, remember_confidence, run_plan


@dataclass(frozen=True)
class VolumeContext:
    """One chat mask to propagate, fixed at the click."""

    image: str
    entry: int
    mask: int
    layer: str  # the chat layer
    label: int
    name: str
    seed: int  # the answer's slice
    modality: str
    plan: PropagationPlan = field(compare=False, repr=False)
    data: np.ndarray = field(compare=False, repr=False)  # the image's pixels, read on the main thread


def volume_problem(image_layer, axis: int = 0) -> str | None:
    """Why this image's masks cannot go 3D, in one line (None: they can)."""
    shape = grid_shape(image_layer)
    if len(shape) != 3:
        return f"{image_layer.name!r} is one 2D image: 3D needs a volume"
    if shape[axis] < 2:
        return f"{image_layer.name!r} has one slice: 3D needs a volume"
    return None


def plan_volume(viewer, image_name: str, entry: ChatEntry, entry_index: int, mask: int,
                placed: PlacedMask) -> VolumeContext:
    """What propagating the added mask will do; InputError (one line) when it cannot."""
    layers = viewer.layers
    if image_name not in layers:
        raise InputError(f"image layer {image_name!r} is gone: nothing to propagate through")
    image = layers[image_name]
    problem = volume_problem(image, entry.slice.axis)
    if problem:
        raise InputError(problem)
    if placed.layer not in layers:
        raise InputError(f"the chat layer {placed.layer!r} is gone: add the mask again")
    plan = plan_propagation(layers[placed.layer], placed.label, entry.slice.axis)  # its seed: the mask's slice
    return VolumeContext(image_name, entry_index, mask, placed.layer, placed.label, placed.name, entry.slice.index,
                         image.metadata.get("modality", "auto"), plan, np.asarray(image.data))


def volume_job(context: VolumeContext, progress: Callable[[int, int], None]) -> Callable[[threading.Event], object]:
    """The worker's job (touches no layer): a SeededResult; stops with Cancelled at the next slice once
    ``cancel`` is set."""

    def run(cancel: threading.Event):
        return run_plan(get_runtime(), context.data, context.plan, modality=context.modality, progress=progress,
                        cancel=cancel)

    return run


def write_volume_result(viewer, context: VolumeContext, result) -> tuple[ChatWrite, VolumeMask]:
    """The propagated label as ONE write (the label becomes exactly the result; Undo gives the 2D mask back);
    per-slice confidence and unsure slices go into the layer's metadata as the segment dock's do."""
    if context.layer not in viewer.layers:
        raise InputError(f"the chat layer {context.layer!r} is gone: nothing written")
    layer = viewer.layers[context.layer]
    write = write_volume(layer, result.mask, label=context.label, name=context.name, replace=True)
    remember_confidence(layer, result)
    along = np.moveaxis(np.asarray(layer.data) == context.label, context.plan.axis, 0).any(axis=(1, 2))
    held = np.nonzero(along)[0]
    span = (int(held[0]), int(held[-1])) if held.size else (context.seed, context.seed)
    done = VolumeMask(context.layer, context.label, context.seed, span, tuple(int(i) for i in result.unsure),
                      float(result.seconds))
    return ChatWrite(context.image, context.entry, context.mask, write, False, volume=True), done


def forget_volume_notes(viewer, chat_write: ChatWrite) -> None:
    """After a propagation is undone the 2D mask is back: its per-slice confidence no longer applies."""
    if chat_write.volume and chat_write.write.layer_name in viewer.layers:
        metadata = viewer.layers[chat_write.write.layer_name].metadata
        for key in (CONFIDENCE_KEY, UNSURE_KEY):
            (metadata.get(key) or {}).pop(chat_write.write.label, None)
