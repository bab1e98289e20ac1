"""The chat dock's state, without Qt (as ``segment_session`` is the segment dock's): the transcript per
image, the question being answered, the measured answers, and the undo stack of chat masks.

An :class:`AskContext` is fixed when the user presses Ask (image, slice, region, earlier turns), so
changing the dock's combos or moving the slider while the model answers does not move the answer.
The job it gives the worker stops at the next token once the user presses Stop. A request "in 3D" is
asked as the plain 2D request (the model reads single slices); the dock then propagates its mask
(chat_volume). A quantity asked with no labels layer picked measures the newest chat mask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from medplib_runtime.errors import Cancelled, InputError, MedplibError
from medplib_runtime.schemas import AskRequest, AskResult, Prompt, SliceRef, Turn
from medplib_runtime.validation import check_question

from .chat_masks import ChatWrite, add_chat_mask, undo_chat_mask
from .chat_state import NOTHING_TO_MEASURE, ChatEntry, ChatHistory, PlacedMask, VolumeMask
from .chat_view import mask_name, without_3d
from .chat_volume import VolumeContext, forget_volume_notes, plan_volume, write_volume_result
from .prompt_capture import capture, current_slice
from .runtime_factory import get_runtime, runtime_info
from .volume_actions import measure_layer

MAX_ANSWER_TOKENS = 48


@dataclass(frozen=True)
class AskContext:
    """One question as asked: fixed when Ask was pressed."""

    image: str  # the image layer's name
    question: str
    slice: SliceRef
    region: Prompt | None
    region_kind: str  # "none", "box", "points", "mask", ...
    modality: str
    turns: tuple[Turn, ...]  # the earlier turns about this image
    data: np.ndarray = field(compare=False, repr=False)  # the pixels, read on the main thread
    typed: str = ""  # the user's own words when the model reads another phrasing ("… in 3D"); "" = question
    three_d: bool = False  # the request asked for the whole volume: its mask is propagated once answered

    @property
    def shown(self) -> str:
        """The question as the transcript shows it: the user's words."""
        return self.typed or self.question

    def request(self, image_key: str) -> AskRequest:
        return AskRequest(image_key=image_key, slice=self.slice, question=self.question, region=self.region,
                          history=self.turns, max_new_tokens=MAX_ANSWER_TOKENS)


class ChatSession:
    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.history = ChatHistory()
        self.writes: list[ChatWrite] = []  # chat masks added, newest last (Undo takes them back)

    # -- asking ------------------------------------------------------------------------------------
    def prepare(self, image_name: str, question: str, region_name: str | None) -> AskContext:
        """The question about the shown slice of ``image_name`` (and the newest shape of ``region_name``), or a
        one-line MedplibError naming what is missing."""
        check_question(question, region=region_name is not None)
        asked, three_d = without_3d(question)
        if not image_name or image_name not in self.viewer.layers:
            raise InputError("no image layer: open a volume first")
        image = self.viewer.layers[image_name]
        if region_name is None:
            ref, region, kind = current_slice(self.viewer, image), None, "none"
        else:
            got = capture(self.viewer, image, self.viewer.layers[region_name])
            ref, region, kind = got.slice, got.prompt, got.prompt.kind
        return AskContext(image_name, asked, ref, region, kind, image.metadata.get("modality", "auto"),
                          self.history.turns(image_name), np.asarray(image.data), question if three_d else "",
                          three_d)

    @staticmethod
    def job(context: AskContext, on_token: Callable[[str], None]) -> Callable[[threading.Event], AskResult]:
        """The worker's whole job (touches no layer): the answer, streamed to ``on_token``; stops with Cancelled
        at the next token once ``cancel`` is set."""

        def run(cancel: threading.Event) -> AskResult:
            def token(text: str) -> None:
                if cancel.is_set():
                    raise Cancelled("answer stopped: nothing was added")
                on_token(text)

            runtime = get_runtime()
            runtime_info(runtime)  # asked here, off the Qt thread: a chat mask's provenance names the model
            key = runtime.set_image(context.data, modality=context.modality)
            return runtime.ask(context.request(key), on_token=token)

        return run

    def answered(self, context: AskContext, result: AskResult, measure_name: str | None) -> ChatEntry:
        measured = self.measured_answer(context.image, context.shown, result.text, measure_name)
        return self.history.add(context.image, context.shown, result, context.slice, context.region_kind,
                                measured)

    def measured_answer(self, image_name: str, question: str, model_text: str, measure_name: str | None) -> str:
        """The measured answer from the labels layer ``measure_name``, if the question asks a quantity; else the
        image file's own answer to a modality question (its header, else its Hounsfield units); else, for a
        quantity with no layer picked, the newest chat mask of the image measured (or a hint); else ""."""
        from medplib_runtime.volume.file_facts import file_fact
        from medplib_runtime.volume.measured_answers import measured_answer, quantity_asked

        layers = self.viewer.layers
        image = layers[image_name] if image_name in layers else None
        if quantity_asked(question) is None or measure_name is None or measure_name not in layers:
            data = None if image is None else (image.data[-1] if image.multiscale else image.data)
            fact = None if image is None else file_fact(question, image.metadata, data, model_text=model_text)
            if fact is not None:
                return fact.statement
            if quantity_asked(question) is not None and measure_name is None:
                return self.measure_chat_mask(image_name, question)
            return ""
        try:
            found = measure_layer(layers[measure_name], image)
        except MedplibError as exc:
            return f"could not measure {measure_name!r}: {exc}"
        answer = measured_answer(question, found, source=f"labels layer {measure_name!r}")
        return "" if answer is None else answer.text

    def newest_mask(self, image_name: str) -> ChatWrite | None:
        """The newest chat write of ``image_name`` still in place (a 3D one when the newest mask was propagated)."""
        return next((w for w in reversed(self.writes) if w.image == image_name), None)

    def measure_chat_mask(self, image_name: str, question: str) -> str:
        """``question`` answered by measuring the newest chat mask of the image (propagated if it was), naming
        which mask, label, layer and slices it measured; NOTHING_TO_MEASURE when no mask was added yet."""
        from medplib_runtime.volume.measured_answers import measured_answer

        newest = self.newest_mask(image_name)
        placed = None if newest is None else self.history.placed(image_name, newest.entry, newest.mask)
        if placed is None or placed.layer not in self.viewer.layers:
            return NOTHING_TO_MEASURE
        layer = self.viewer.layers[placed.layer]
        try:
            found = measure_layer(layer, self.viewer.layers[image_name], (placed.label,))
        except MedplibError as exc:
            return f"could not measure chat mask {newest.mask + 1}: {exc}"
        if not found:
            return NOTHING_TO_MEASURE
        volume = self.history.volume(image_name, newest.entry, newest.mask)
        first, last = volume.slices if volume is not None else found[0].slices
        how = "propagated" if volume is not None else "one slice, not propagated"
        unsure = f"; unsure: {', '.join(map(str, volume.unsure))}" if volume is not None and volume.unsure else ""
        source = (f"chat mask {newest.mask + 1} of answer {newest.entry + 1} (label {placed.label} of "
                  f"{placed.layer!r}, slices {first}–{last}, {how}{unsure})")
        answer = measured_answer(question, found, source=source)
        return NOTHING_TO_MEASURE if answer is None else answer.text

    # -- masks -------------------------------------------------------------------------------------
    def add_mask(self, image_name: str, entry_index: int, mask: int) -> tuple[ChatWrite, PlacedMask]:
        """Mask ``mask`` of answer ``entry_index`` under a new label of the image's chat layer (MedplibError: none)."""
        entry = self.history.entries(image_name)[entry_index]
        if image_name not in self.viewer.layers:
            raise InputError(f"image layer {image_name!r} is gone: the mask has nowhere to go")
        chat_write, placed = add_chat_mask(self.viewer, self.viewer.layers[image_name], entry, entry_index, mask,
                                           mask_name(entry, mask))
        self.writes.append(chat_write)
        self.history.place(image_name, entry_index, mask, placed)
        return chat_write, placed

    def masks_to_add(self, image_name: str) -> list[tuple[int, int]]:
        """(entry, mask) of the newest answer with masks that were not added yet."""
        entries = [(i, e) for i, e in enumerate(self.history.entries(image_name)) if e.masks]
        if not entries:
            return []
        i, entry = entries[-1]
        return [(i, m) for m in range(len(entry.masks)) if self.history.placed(image_name, i, m) is None]

    def plan_volume(self, image_name: str, entry_index: int, mask: int) -> VolumeContext:
        """Propagating an added mask through the volume, fixed now (InputError: it cannot)."""
        placed = self.history.placed(image_name, entry_index, mask)
        if placed is None:
            raise InputError(f"mask {mask + 1} is not added yet")
        entry = self.history.entries(image_name)[entry_index]
        return plan_volume(self.viewer, image_name, entry, entry_index, mask, placed)

    def add_volume(self, context: VolumeContext, result) -> tuple[ChatWrite, VolumeMask]:
        """The propagation written as one undoable write (MedplibError: nowhere to write it)."""
        chat_write, done = write_volume_result(self.viewer, context, result)
        self.writes.append(chat_write)
        self.history.set_volume(context.image, context.entry, context.mask, done)
        return chat_write, done

    def undo(self) -> ChatWrite | None:
        """Take the newest chat write back out of its layer (a propagation: the 2D mask stays); None: none."""
        if not self.writes:
            return None
        chat_write = self.writes.pop()
        undo_chat_mask(self.viewer, chat_write)
        forget_volume_notes(self.viewer, chat_write)
        if chat_write.volume:
            self.history.set_volume(chat_write.image, chat_write.entry, chat_write.mask, None)
        else:
            self.history.place(chat_write.image, chat_write.entry, chat_write.mask, None)
        return chat_write
