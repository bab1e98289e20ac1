"""Chat masks into napari (no Qt): each added mask gets its own label id, name and colour in the image's
chat layer; never merged into another mask's label; undone like Segment's writes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chat_state import ChatEntry, PlacedMask
from .colours import forget_colour, give_colour
from .label_writes import NAMES_KEY, LabelWrite, undo_write, write_mask
from .layer_roles import PREDICTION, add_quietly, with_role
from .prompt_capture import grid_shape
from .provenance_log import record_write
from .runtime_factory import last_runtime_info


@dataclass(frozen=True)
class ChatWrite:
    """One added chat mask, or its propagation through the volume (``volume``): the write (for undo) and whether
    it created its layer."""

    image: str
    entry: int
    mask: int
    write: LabelWrite
    created_layer: bool
    volume: bool = False


def chat_layer_name(image_name: str) -> str:
    return f"{image_name} chat masks"


def next_label(layer) -> int:
    named = [int(k) for k in (layer.metadata.get(NAMES_KEY) or {})]
    return int(max([int(np.max(layer.data)) if np.size(layer.data) else 0, *named])) + 1


def add_chat_mask(viewer, image_layer, entry: ChatEntry, entry_index: int, mask: int, name: str) -> tuple[
        ChatWrite, PlacedMask]:
    """Write ``entry``'s mask number ``mask`` under a new label of the image's chat layer."""
    layer_name = chat_layer_name(image_layer.name)
    created = layer_name not in viewer.layers
    if created:
        add_quietly(viewer, lambda: viewer.add_labels(
            np.zeros(grid_shape(image_layer), np.uint8), name=layer_name, scale=image_layer.scale,
            translate=image_layer.translate, metadata=with_role(image_layer.metadata, PREDICTION)))
    layer = viewer.layers[layer_name]
    label = next_label(layer)
    write = write_mask(layer, entry.masks[mask], entry.slice, label=label, name=name)
    give_colour(viewer.layers, layer, label)
    layer.selected_label = label
    record_write(layer, runtime_info=last_runtime_info(), question=entry.question, answer=entry.answer)
    return (ChatWrite(image_layer.name, entry_index, mask, write, created),
            PlacedMask(layer_name, label, name))


def undo_chat_mask(viewer, chat_write: ChatWrite) -> None:
    """Take the mask back out; a chat layer that this write created and that is empty again goes too."""
    if chat_write.write.layer_name not in viewer.layers:
        return
    layer = viewer.layers[chat_write.write.layer_name]
    undo_write(layer, chat_write.write)
    if not (layer.data == chat_write.write.label).any():
        forget_colour(layer, chat_write.write.label)
    if chat_write.created_layer and not np.any(layer.data):
        viewer.layers.remove(layer)
