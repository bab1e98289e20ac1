"""The MedPLIB chat dock: ask about the current slice (optionally a drawn region), read the answer.

History is kept per image and sent back as earlier turns (the runtime reads them only for a glue
trained on multi-turn answers, and notes it under the answer otherwise). Each answer shows which region it
referred to, how many masks came back and how the experts were routed; "Add masks" writes
the last answer's masks (one label per ``<SEG>``) into a Labels layer. While the glue is
untrained every answer carries a warning.
"""

from __future__ import annotations

import html
import os

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QApplication, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QTextBrowser, QVBoxLayout, QWidget)

from medplib_runtime.errors import InputError, MedplibError
from medplib_runtime.schemas import AskRequest
from medplib_runtime.validation import check_question

from ._workers import run_call
from .chat_state import ChatHistory
from .label_writes import write_mask
from .prompt_capture import capture, current_slice
from .runtime_factory import get_runtime
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
        self.image_combo, self.region_combo, self.measure_combo = QComboBox(), QComboBox(), QComboBox()
        self.measure_combo.setToolTip("questions about size, volume, diameter, position, side or intensity are "
                                      "answered by measuring this labels layer")
        self.transcript = QTextBrowser()
        self.question = QLineEdit()
        self.question.setPlaceholderText("Ask about this slice, e.g. Is <region> the lesion?")
        # the region goes where the question says <region>, else after the question; the default glue
        # was trained on both forms (docs/closed_answers.md)
        self.question.setToolTip("the region layer's shape goes where you write <region>, else after the question")
        self.ask_button, self.masks_button = QPushButton("Ask"), QPushButton("Add masks")
        self.copy_button, self.clear_button = QPushButton("Copy"), QPushButton("Clear")
        self.status = QLabel("")

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("region", self.region_combo)
        form.addRow("measure", self.measure_combo)
        row = QHBoxLayout()
        row.addWidget(self.question)
        row.addWidget(self.ask_button)
        actions = QHBoxLayout()
        for b in (self.masks_button, self.copy_button, self.clear_button):
            actions.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.transcript)
        layout.addLayout(row)
        layout.addLayout(actions)
        layout.addWidget(self.status)

        self.ask_button.clicked.connect(self.on_ask)
        self.question.returnPressed.connect(self.on_ask)
        self.masks_button.clicked.connect(self.on_add_masks)
        self.copy_button.clicked.connect(self.on_copy)
        self.clear_button.clicked.connect(self.on_clear)
        self.image_combo.currentTextChanged.connect(lambda _: self.render())
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.on_layers_changed)
        self.on_layers_changed()

    def on_layers_changed(self, event=None) -> None:
        for combo, kinds, first in ((self.image_combo, (Image,), ()),
                                    (self.region_combo, (Shapes, Points, Labels), (NO_REGION,)),
                                    (self.measure_combo, (Labels,), (NO_LABELS,))):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            names = list(first) + [layer.name for layer in self.viewer.layers if isinstance(layer, kinds)]
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self.render()

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
            return
        data, turns = np.asarray(image.data), self.history.turns(name)
        modality = image.metadata.get("modality", "auto")

        relay = _TokenRelay()
        relay.token.connect(self.on_token)
        self._relay, self._partial = relay, ""  # kept alive while the worker runs

        def job():
            runtime = get_runtime()
            key = runtime.set_image(data, modality=modality)
            return runtime.ask(AskRequest(image_key=key, slice=ref, question=question, region=region,
                                          history=turns, max_new_tokens=48), on_token=relay.token.emit)

        self.ask_button.setEnabled(False)
        self.status.setText("thinking… (the first question loads the language model)")
        run_call(job, lambda result: self.on_answered(name, question, result, ref, region_kind),
                 synchronous=self.synchronous, on_finished=lambda: self.ask_button.setEnabled(True))

    def on_token(self, text: str) -> None:
        """The answer so far, shown while it is generated (the transcript gets the whole answer)."""
        self._partial += text
        self.status.setText(f"answering: {self._partial.strip()[-200:]}…")

    def on_answered(self, image_name, question, result, ref, region_kind) -> None:
        measured = self.measured_answer(image_name, question, result.text)
        self.history.add(image_name, question, result, ref, region_kind, measured)
        self.question.clear()
        self.status.setText(f"answered in {result.timings_ms.get('total', 0) / 1e3:.1f} s")
        if image_name != self.image_combo.currentText():
            self.image_combo.setCurrentText(image_name)
        self.render()

    def measured_answer(self, image_name: str, question: str, model_text: str) -> str:
        """The measured answer from the 'measure' labels layer, if the question asks a quantity."""
        from medplib_runtime.volume.measured_answers import measured_answer, quantity_asked

        name = self.measure_combo.currentText()
        if quantity_asked(question) is None or name in ("", NO_LABELS) or name not in self.viewer.layers:
            return ""
        try:
            image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
            found = measure_layer(self.viewer.layers[name], image)
        except MedplibError as exc:
            return f"could not measure {name!r}: {exc}"
        answer = measured_answer(question, found, source=f"labels layer {name!r}")
        return "" if answer is None else answer.text

    def render(self) -> None:
        parts = []
        image = self.image_combo.currentText()
        for e, notes in zip(self.history.entries(image), self.history.new_notes(image)):
            parts.append(f"<p><b>You</b> <i>(slice {e.slice.index}, region: {e.region_kind})</i><br>"
                         f"{html.escape(e.question)}</p>")
            answer = html.escape(e.answer) if e.answer.strip() else "<i>(no answer text)</i>"
            if e.measured:
                parts.append(f"<p><b>Measured</b><br><span style='color:#60c060'>{html.escape(e.measured)}</span></p>")
            parts.append(f"<p><b>MedPLIB</b><br>{answer}<br><small>{len(e.masks)} mask(s) · {e.routing}</small>")
            for note in notes:  # each note once per transcript
                parts.append(f"<br><small style='color:#a0a0e0'>{html.escape(note)}</small>")
            if e.untrained:
                parts.append("<br><span style='color:#e0a030'>untrained parts (" + ", ".join(e.untrained)
                             + "): this answer is not grounded in the image yet</span>")
            parts.append("</p>")
        self.transcript.setHtml("".join(parts))

    def on_add_masks(self) -> None:
        name = self.image_combo.currentText()
        entries = [e for e in self.history.entries(name) if e.masks]
        if not entries:
            show_info("the answers so far returned no masks")
            return
        entry, image = entries[-1], self.viewer.layers[name]
        target_name = f"{name} MedPLIB chat"
        if target_name not in self.viewer.layers:
            self.viewer.add_labels(np.zeros(image.data.shape, np.uint8), name=target_name, scale=image.scale,
                                   translate=image.translate, metadata=dict(image.metadata))
        target = self.viewer.layers[target_name]
        for i, mask in enumerate(entry.masks, start=1):
            write_mask(target, mask, entry.slice, label=i, name=f"{entry.question[:40]} #{i}")
        self.status.setText(f"{len(entry.masks)} mask(s) written to {target_name!r}")

    def on_copy(self) -> None:
        QApplication.clipboard().setText(self.history.as_text(self.image_combo.currentText()))

    def on_clear(self) -> None:
        self.history.clear(self.image_combo.currentText())
        self.render()
