"""The MedPLIB chat dock: ask about the current slice (optionally a drawn region), read the answer.

Each ``<SEG>`` of an answer is shown as a chip ("mask 1 → add as 'lesion'"): a click adds that mask
under a new label of the image's chat layer, in its own colour (or, once added, shows it); "Add masks"
adds the last answer's masks; Undo takes the last added one back. Routing and time are one quiet line.
History is kept per image and sent back as earlier turns (the runtime reads them only for a glue
trained on multi-turn answers, and notes it under the answer otherwise). Widgets only wire signals to
``on_*`` methods; the model runs in a worker thread.
"""

from __future__ import annotations

import os

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, QUrl, Signal
from qtpy.QtWidgets import (QApplication, QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QPushButton,
                            QSizePolicy, QTextBrowser, QVBoxLayout, QWidget)

from medplib_runtime.errors import InputError, MedplibError
from medplib_runtime.schemas import AskRequest
from medplib_runtime.validation import check_question

from ._status_line import StatusLine
from ._workers import run_call
from .chat_masks import ChatWrite, add_chat_mask, undo_chat_mask
from .chat_state import ChatHistory
from .colours import outline_references
from .chat_view import mask_name, parse_chip, transcript_html
from .layer_roles import is_prompt_layer
from .prompt_capture import capture, current_slice
from .runtime_factory import LANGUAGE_STEP, get_runtime, runtime_info, warm_language, warm_status
from .volume_actions import measure_layer

NO_REGION = "(no region)"
NO_LABELS = "(no labels)"


class _TokenRelay(QObject):
    """Carries answer tokens from the worker thread to the dock (a queued Qt signal: thread-safe)."""

    token = Signal(str)


class ChatDock(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = os.environ.get("MEDPLIB_SYNC_WORKERS") == "1"
        self.history = ChatHistory()
        self.chat_writes: list[ChatWrite] = []
        self._asking = False
        self.image_combo, self.region_combo, self.measure_combo = QComboBox(), QComboBox(), QComboBox()
        for combo in (self.image_combo, self.region_combo, self.measure_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        self.region_combo.setToolTip("a drawn region the question is about (it goes where you write <region>)")
        self.measure_combo.setToolTip("questions about size, volume, diameter, position, side or intensity are "
                                      "answered by measuring this labels layer")
        self.transcript = QTextBrowser()
        self.transcript.setOpenLinks(False)  # chips are handled here, never opened as URLs
        self.transcript.setMinimumHeight(160)
        self.transcript.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.question = QLineEdit()
        self.question.setPlaceholderText("Ask about this slice, e.g. Segment the lesion.")
        self.question.setToolTip("the region layer's shape goes where you write <region>, else after the question")
        self.ask_button, self.masks_button = QPushButton("Ask"), QPushButton("Add masks")
        self.undo_button = QPushButton("Undo")
        self.copy_button, self.clear_button = QPushButton("Copy"), QPushButton("Clear")
        self.status = StatusLine("")
        self._layout()
        self._connect()
        self.on_layers_changed()
        if not self.synchronous:  # the language model loads after the segmentation model, in the background
            warm_language()
            self._warm_timer = QTimer(self)
            self._warm_timer.setInterval(250)
            self._warm_timer.timeout.connect(self.on_warm_tick)
            self._warm_timer.start()

    def _layout(self) -> None:
        form = QFormLayout()
        top = QHBoxLayout()
        top.addWidget(self.image_combo, 1)
        top.addWidget(self.region_combo, 1)
        form.addRow("image, region", top)
        form.addRow("measure", self.measure_combo)
        row = QHBoxLayout()
        row.addWidget(self.question, 1)
        row.addWidget(self.ask_button)
        actions = QHBoxLayout()
        for b in (self.masks_button, self.undo_button, self.copy_button, self.clear_button):
            actions.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.transcript, 1)
        layout.addLayout(row)
        layout.addLayout(actions)
        layout.addWidget(self.status)

    def _connect(self) -> None:
        self.ask_button.clicked.connect(self.on_ask)
        self.question.returnPressed.connect(self.on_ask)
        self.masks_button.clicked.connect(self.on_add_masks)
        self.undo_button.clicked.connect(self.on_undo)
        self.copy_button.clicked.connect(self.on_copy)
        self.clear_button.clicked.connect(self.on_clear)
        self.transcript.anchorClicked.connect(self.on_chip)
        self.image_combo.currentTextChanged.connect(lambda _: self.render())
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.on_layers_changed)

    def on_layers_changed(self, event=None) -> None:
        outline_references(self.viewer.layers)
        layers = list(self.viewer.layers)
        for combo, names, first in ((self.image_combo, [lay.name for lay in layers if isinstance(lay, Image)], ()),
                                    (self.region_combo, [lay.name for lay in layers if is_prompt_layer(lay)],
                                     (NO_REGION,)),
                                    (self.measure_combo, [lay.name for lay in layers if isinstance(lay, Labels)],
                                     (NO_LABELS,))):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(list(first) + names)
            if current in first or current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self.render()

    def on_warm_tick(self) -> None:
        state = warm_status()
        if self._asking:
            return
        if state.loading is not None and LANGUAGE_STEP in (state.loading, *state.queued):
            where = "now" if state.loading == LANGUAGE_STEP else f"after {state.loading}"
            self.status.busy(f"loading {LANGUAGE_STEP} ({where}); you can ask, the answer waits for it…")
        elif not state.busy:
            self._warm_timer.stop()
            failed = dict(state.failed).get(LANGUAGE_STEP)
            if failed:
                self.status.done(f"not ready: {failed}")
                return
            seconds = state.seconds(LANGUAGE_STEP)
            self.status.done(f"ready to answer (language model loaded in {seconds:.1f} s)" if seconds else "")

    # -- asking ------------------------------------------------------------------------------------
    def on_ask(self) -> None:
        question = self.question.text().strip()
        try:
            check_question(question, region=self.region_combo.currentText() not in ("", NO_REGION))
            name = self.image_combo.currentText()
            if not name:
                raise InputError("no image layer: open a volume first")
            image = self.viewer.layers[name]
            if self.region_combo.currentText() in ("", NO_REGION):
                ref, region, region_kind = current_slice(self.viewer, image), None, "none"
            else:
                got = capture(self.viewer, image, self.viewer.layers[self.region_combo.currentText()])
                ref, region, region_kind = got.slice, got.prompt, got.prompt.kind
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"not asked: {exc}")
            return
        data, turns = np.asarray(image.data), self.history.turns(name)
        modality = image.metadata.get("modality", "auto")

        relay = _TokenRelay()
        relay.token.connect(self.on_token)
        self._relay, self._partial = relay, ""  # kept alive while the worker runs

        def job():
            runtime = get_runtime()
            runtime_info(runtime)  # asked here, off the Qt thread: a chat mask's provenance names the model
            key = runtime.set_image(data, modality=modality)
            return runtime.ask(AskRequest(image_key=key, slice=ref, question=question, region=region,
                                          history=turns, max_new_tokens=48), on_token=relay.token.emit)

        self.ask_button.setEnabled(False)
        self._asking = True
        state = warm_status()
        waiting = LANGUAGE_STEP in ((state.loading,) + state.queued) or state.seconds(LANGUAGE_STEP) is None
        self.status.busy(f"reading the question on slice {ref.index}"
                         + (f" (waiting for {LANGUAGE_STEP} to load)…" if waiting else "…"))
        run_call(job, lambda result: self.on_answered(name, question, result, ref, region_kind),
                 synchronous=self.synchronous, on_finished=self._asked)

    def _asked(self) -> None:
        self._asking = False
        self.ask_button.setEnabled(True)
        if self.status.is_busy:
            self.status.done("")

    def on_token(self, text: str) -> None:
        """The answer so far, shown while it is generated (the transcript gets the whole answer)."""
        self._partial += text
        self.status.busy(f"answering: {self._partial.strip()[-120:].replace('<SEG>', '[mask]')}…")

    def on_answered(self, image_name, question, result, ref, region_kind) -> None:
        measured = self.measured_answer(image_name, question, result.text)
        entry = self.history.add(image_name, question, result, ref, region_kind, measured)
        self.question.clear()
        masks = f", {len(entry.masks)} mask(s): click a chip to add one" if entry.masks else ""
        self.status.done(f"answered in {entry.seconds:.1f} s{masks}")
        if image_name != self.image_combo.currentText():
            self.image_combo.setCurrentText(image_name)
        self.render()

    def measured_answer(self, image_name: str, question: str, model_text: str) -> str:
        """The measured answer from the 'measure' labels layer, if the question asks a quantity; else the
        image file's own answer to a modality question (its header, else its Hounsfield units)."""
        from medplib_runtime.volume.file_facts import file_fact
        from medplib_runtime.volume.measured_answers import measured_answer, quantity_asked

        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        name = self.measure_combo.currentText()
        if quantity_asked(question) is None or name in ("", NO_LABELS) or name not in self.viewer.layers:
            data = None if image is None else (image.data[-1] if image.multiscale else image.data)
            fact = None if image is None else file_fact(question, image.metadata, data, model_text=model_text)
            return "" if fact is None else fact.statement
        try:
            found = measure_layer(self.viewer.layers[name], image)
        except MedplibError as exc:
            return f"could not measure {name!r}: {exc}"
        answer = measured_answer(question, found, source=f"labels layer {name!r}")
        return "" if answer is None else answer.text

    def render(self) -> None:
        bar = self.transcript.verticalScrollBar()
        self.transcript.setHtml(transcript_html(self.history, self.image_combo.currentText()))
        bar.setValue(bar.maximum())  # the newest answer in view

    # -- masks ---------------------------------------------------------------------------------------
    def on_chip(self, url: QUrl) -> None:
        chip = parse_chip(url.toString())
        if chip is None:
            return
        image_name = self.image_combo.currentText()
        placed = self.history.placed(image_name, *chip)
        if placed is None:
            self.add_mask(image_name, *chip)
        elif placed.layer in self.viewer.layers:
            self.show_mask(image_name, chip[0], placed)

    def add_mask(self, image_name: str, entry_index: int, mask: int) -> None:
        entry = self.history.entries(image_name)[entry_index]
        if image_name not in self.viewer.layers:
            show_error(f"image layer {image_name!r} is gone: the mask has nowhere to go")
            return
        try:
            chat_write, placed = add_chat_mask(self.viewer, self.viewer.layers[image_name], entry, entry_index,
                                               mask, mask_name(entry, mask))
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"mask not added: {exc}")
            return
        self.chat_writes.append(chat_write)
        self.history.place(image_name, entry_index, mask, placed)
        self.status.done(f"mask {mask + 1} → {placed.layer!r}, label {placed.label} ({placed.name}): "
                         f"{chat_write.write.changed} voxels on slice {entry.slice.index}")
        self.render()

    def show_mask(self, image_name: str, entry_index: int, placed) -> None:
        layer, image = self.viewer.layers[placed.layer], self.viewer.layers[image_name]
        self.viewer.layers.selection.active = layer
        layer.selected_label = placed.label
        ref = self.history.entries(image_name)[entry_index].slice
        if image.ndim == 3:
            point = [0.0] * 3
            point[ref.axis] = ref.index
            world = image.data_to_world(point)[ref.axis]
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3 + ref.axis, world)

    def on_add_masks(self) -> None:
        """Add every mask of the newest answer that has masks (those not added yet)."""
        name = self.image_combo.currentText()
        entries = [(i, e) for i, e in enumerate(self.history.entries(name)) if e.masks]
        if not entries:
            show_info("the answers so far returned no masks")
            return
        i, entry = entries[-1]
        for m in range(len(entry.masks)):
            if self.history.placed(name, i, m) is None:
                self.add_mask(name, i, m)

    def on_undo(self) -> None:
        if not self.chat_writes:
            show_info("no chat mask to undo")
            return
        chat_write = self.chat_writes.pop()
        undo_chat_mask(self.viewer, chat_write)
        self.history.place(chat_write.image, chat_write.entry, chat_write.mask, None)
        self.status.done(f"mask {chat_write.mask + 1} taken back out of {chat_write.write.layer_name!r}")
        self.render()

    def on_copy(self) -> None:
        QApplication.clipboard().setText(self.history.as_text(self.image_combo.currentText()))

    def on_clear(self) -> None:
        self.history.clear(self.image_combo.currentText())
        self.render()
