"""The MedPLIB chat dock: ask about the current slice (optionally a drawn region), read the answer.

Each ``<SEG>`` of an answer is shown as a chip ("mask 1 → add as 'lesion'"): a click adds that mask
under a new label of the image's chat layer, in its own colour (or, once added, shows it); "Add masks"
adds the last answer's masks; Undo takes the last added one back. On a volume a "→ 3D" chip propagates
the mask through the volume (as Propagate does, from its slice) in the dock's worker, Stop cancels it,
and the result is one undoable write; "Segment the lesion in 3D." does the same for a one-mask answer. Routing and time are one quiet line.
History is kept per image and sent back as earlier turns (the runtime reads them only for a glue
trained on multi-turn answers, and notes it under the answer otherwise). The state lives in a Qt-free
``ChatSession``; widgets only wire signals to ``on_*`` methods; the model answers in a worker, and Ask
turns into Stop while it does.
"""

from __future__ import annotations

import os

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, QUrl, Signal
from qtpy.QtWidgets import (QApplication, QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QPushButton,
                            QSizePolicy, QTextBrowser, QVBoxLayout, QWidget)

from medplib_runtime.errors import MedplibError

from ._status_line import StatusLine
from ._workers import WorkerSlot, user_message
from .chat_session import ChatSession
from .colours import outline_references
from .chat_view import VOLUME_CHIP_PREFIX, parse_chip, transcript_html
from .chat_volume import volume_job, volume_problem
from .layer_roles import is_prompt_layer
from .runtime_factory import LANGUAGE_STEP, warm_language, warm_status

NO_REGION = "(no region)"
NO_LABELS = "(no labels)"


class _TokenRelay(QObject):
    """Carries answer tokens and propagation progress from the worker thread to the dock (queued Qt signals:
    thread-safe)."""

    token = Signal(str)
    progress = Signal(int, int)


class ChatDock(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = os.environ.get("MEDPLIB_SYNC_WORKERS") == "1"
        self.session = ChatSession(napari_viewer)
        self.jobs = WorkerSlot(synchronous=lambda: self.synchronous)  # one answer at a time; Stop cancels it
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
        self._running = "answer"  # what the worker runs: "answer" or "propagation" (what Stop stops)
        self._then: tuple[str, int, int] | None = None  # a mask to propagate once the answer's call has finished
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
        if self.jobs.busy:
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
    @property
    def history(self):
        return self.session.history

    def on_ask(self) -> None:
        """Ask about the shown slice; while an answer is being written the button says Stop and stops it."""
        if self.jobs.busy:
            self.on_stop()
            return
        region = self.region_combo.currentText()
        try:
            context = self.session.prepare(self.image_combo.currentText(), self.question.text().strip(),
                                           None if region in ("", NO_REGION) else region)
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"not asked: {exc}")
            return
        relay = _TokenRelay()
        relay.token.connect(self.on_token)
        self._relay, self._partial, self._running, self._then = relay, "", "answer", None  # kept while it runs
        self.ask_button.setText("Stop")
        self.ask_button.setToolTip("stop the answer (nothing is added)")
        state = warm_status()
        waiting = LANGUAGE_STEP in ((state.loading,) + state.queued) or state.seconds(LANGUAGE_STEP) is None
        self.status.busy(f"reading the question on slice {context.slice.index}"
                         + (f" (waiting for {LANGUAGE_STEP} to load)…" if waiting else "…"))
        self.jobs.start(self.session.job(context, relay.token.emit), lambda result: self.on_answered(context, result),
                        on_error=self.on_failed, on_finished=self._asked)

    def on_stop(self) -> None:
        if self.jobs.cancel():  # the answer stops at its next token, a propagation at its next slice; dropped
            self.status.done("stopped: the answer was not kept, the question is still there to ask again"
                             if self._running == "answer" else
                             "stopped: nothing was propagated (the mask on its slice is kept; Undo takes it back)")
            self._then = None
            self._asked()

    def on_failed(self, exc: BaseException) -> None:
        what = "not answered" if self._running == "answer" else "not propagated, nothing written"
        self.status.done(f"{what}: {user_message(exc)}")

    def _asked(self) -> None:
        self.ask_button.setText("Ask")
        self.ask_button.setToolTip("")
        if self.status.is_busy:
            self.status.done("")
        then, self._then = self._then, None
        if then is not None:  # "… in 3D": the answer's call is over, its mask goes through the volume now
            self.propagate_mask(*then)

    def on_token(self, text: str) -> None:
        """The answer so far, shown while it is generated (the transcript gets the whole answer)."""
        if not self.jobs.busy:
            return  # a stopped answer's last tokens
        self._partial += text
        self.status.busy(f"answering: {self._partial.strip()[-120:].replace('<SEG>', '[mask]')}…")

    def on_answered(self, context, result) -> None:
        measure = self.measure_combo.currentText()
        entry = self.session.answered(context, result, None if measure in ("", NO_LABELS) else measure)
        self.question.clear()
        masks = f", {len(entry.masks)} mask(s): click a chip to add one" if entry.masks else ""
        self.status.done(f"answered in {entry.seconds:.1f} s{masks}")
        if context.image != self.image_combo.currentText():
            self.image_combo.setCurrentText(context.image)
        if context.three_d:
            self._after_3d_request(context, entry)
        self.render()

    def _after_3d_request(self, context, entry) -> None:
        """A request "in 3D": one mask goes through the volume (after this call finishes); else say why not."""
        index = len(self.history.entries(context.image)) - 1
        image = self.viewer.layers[context.image] if context.image in self.viewer.layers else None
        problem = None if image is None else volume_problem(image, context.slice.axis)
        if not entry.masks:
            why = "no mask in the answer: nothing to propagate in 3D"
        elif len(entry.masks) > 1:
            why = f"{len(entry.masks)} masks: pick one with its → 3D chip"
        elif problem:
            why = f"not propagated: {problem}"
        else:
            self._then = (context.image, index, 0)
            return
        self.history.set_remark(context.image, index, why)
        self.status.done(f"answered in {entry.seconds:.1f} s; {why}")

    def render(self) -> None:
        bar = self.transcript.verticalScrollBar()
        name = self.image_combo.currentText()
        image = self.viewer.layers[name] if name in self.viewer.layers else None
        volume = image is not None and volume_problem(image) is None
        self.transcript.setHtml(transcript_html(self.history, name, volume))
        bar.setValue(bar.maximum())  # the newest answer in view

    # -- masks ---------------------------------------------------------------------------------------
    def on_chip(self, url: QUrl) -> None:
        image_name = self.image_combo.currentText()
        volume_chip = parse_chip(url.toString(), VOLUME_CHIP_PREFIX)
        if volume_chip is not None:
            self.propagate_mask(image_name, *volume_chip)
            return
        chip = parse_chip(url.toString())
        if chip is None:
            return
        placed = self.history.placed(image_name, *chip)
        if placed is None:
            self.add_mask(image_name, *chip)
        elif placed.layer in self.viewer.layers:
            self.show_mask(image_name, chip[0], placed)

    def add_mask(self, image_name: str, entry_index: int, mask: int) -> bool:
        try:
            chat_write, placed = self.session.add_mask(image_name, entry_index, mask)
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"mask not added: {exc}")
            return False
        ref = self.history.entries(image_name)[entry_index].slice
        self.status.done(f"mask {mask + 1} → {placed.layer!r}, label {placed.label} ({placed.name}): "
                         f"{chat_write.write.changed} voxels on slice {ref.index}")
        self.render()
        return True

    # -- 3D ------------------------------------------------------------------------------------------
    def propagate_mask(self, image_name: str, entry_index: int, mask: int) -> None:
        """The "→ 3D" chip: add the mask if it is not yet, then propagate its label from its slice through the
        volume in the worker (Stop cancels, nothing written); a propagated mask is shown instead."""
        if self.jobs.busy:
            show_info("MedPLIB is busy: Stop it first, or wait")
            return
        entries = self.history.entries(image_name)
        if entry_index >= len(entries) or mask >= len(entries[entry_index].masks):
            self.status.done("not propagated: that answer is no longer in the transcript")
            return
        if self.history.volume(image_name, entry_index, mask) is not None:
            placed = self.history.placed(image_name, entry_index, mask)
            if placed is not None and placed.layer in self.viewer.layers:
                self.show_mask(image_name, entry_index, placed)
            return
        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        problem = None if image is None else volume_problem(image)
        if problem:
            self.status.done(f"not propagated: {problem}")
            return
        if self.history.placed(image_name, entry_index, mask) is None and not self.add_mask(image_name, entry_index,
                                                                                              mask):
            return
        try:
            context = self.session.plan_volume(image_name, entry_index, mask)
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"not propagated: {exc}")
            return
        relay = _TokenRelay()
        relay.progress.connect(lambda done, total: self.on_progress(context, done, total))
        self._relay, self._running = relay, "propagation"
        self.ask_button.setText("Stop")
        self.ask_button.setToolTip("stop the propagation (nothing is written)")
        self.status.busy(f"propagating mask {mask + 1} ({context.name!r}) through the volume from slice "
                         f"{context.seed}…")
        self.jobs.start(volume_job(context, relay.progress.emit), lambda result: self.on_propagated(context, result),
                        on_error=self.on_failed, on_finished=self._asked)

    def on_progress(self, context, done: int, total: int) -> None:
        if self.jobs.busy and self._running == "propagation":
            self.status.progress(done, total, f"propagating mask {context.mask + 1} through the volume… slice {done} "
                                              f"of ~{total} (Stop stops; nothing is written until the end)")

    def on_propagated(self, context, result) -> None:
        try:
            chat_write, done = self.session.add_volume(context, result)
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"not written: {exc}")
            return
        unsure = f"; unsure on slice(s) {', '.join(map(str, done.unsure))}: check them" if done.unsure else ""
        self.status.done(f"mask {context.mask + 1} propagated: label {done.label} of {done.layer!r} over slices "
                         f"{done.slices[0]}–{done.slices[1]}, {chat_write.write.changed} voxels changed in "
                         f"{done.seconds:.1f} s{unsure}")
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
        todo = self.session.masks_to_add(name)
        if not todo:
            show_info("no answer mask left to add")
            return
        for entry_index, mask in todo:
            self.add_mask(name, entry_index, mask)

    def on_undo(self) -> None:
        if self.jobs.busy and self._running == "propagation":
            self.on_stop()  # the mask it propagates may be the one taken back
        chat_write = self.session.undo()
        if chat_write is None:
            show_info("no chat mask to undo")
            return
        what = "its propagation through the volume (the mask on its slice is kept)" if chat_write.volume else ""
        self.status.done(f"mask {chat_write.mask + 1}: {what} taken back out of {chat_write.write.layer_name!r}"
                         if what else f"mask {chat_write.mask + 1} taken back out of {chat_write.write.layer_name!r}")
        self.render()

    def on_copy(self) -> None:
        QApplication.clipboard().setText(self.history.as_text(self.image_combo.currentText()))

    def on_clear(self) -> None:
        if self.jobs.busy and self._running == "propagation":
            self.on_stop()  # its answer leaves the transcript: nothing of it is written
        self.history.clear(self.image_combo.currentText())
        self.render()
