"""The MedPLIB dock: pick image, prompt and target layers, press Segment; Propagate it through the
volume, Measure it; Undo the last write.

Widgets only wire signals to ``on_*`` methods. The runtime call runs in a napari worker
thread (never on the Qt main thread; the worker touches no layer); the mask is written in
``on_segmented`` on the main thread. ``synchronous = True`` (or MEDPLIB_SYNC_WORKERS=1)
runs the call inline, for tests and debugging.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QSpinBox, QVBoxLayout, QWidget)

from medplib_runtime.errors import MedplibError
from medplib_runtime.volume.propagation import Cancelled
from medplib_runtime.schemas import SegmentRequest

from .label_writes import undo_write, write_mask, write_volume
from .prompt_capture import capture, current_slice
from ._workers import run_call, user_message
from .runtime_factory import get_runtime, run_background
from .volume_actions import describe, measure_layer, seed_from_layer


NEW_LAYER = "(new labels layer)"
PREVIEW_LAYER = "MedPLIB preview"


class MedPLIBWidget(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = os.environ.get("MEDPLIB_SYNC_WORKERS") == "1"
        self.writes: list = []
        self._worker = None
        self.image_combo, self.prompt_combo, self.target_combo = QComboBox(), QComboBox(), QComboBox()
        self.label_id = QSpinBox()
        self.label_id.setRange(1, 65535)
        self.label_name = QLineEdit("lesion")
        self.overwrite = QCheckBox("overwrite other labels")
        self.preview = QCheckBox("preview before writing")
        self.accept_button, self.discard_button = QPushButton("Accept preview"), QPushButton("Discard preview")
        self._pending = None  # (result, context) shown as a preview, not yet written
        self.segment_button, self.undo_button = QPushButton("Segment"), QPushButton("Undo")
        self.cancel_button = QPushButton("Cancel")
        self.propagate_button, self.measure_button = QPushButton("Propagate"), QPushButton("Measure")
        self._cancel_event: threading.Event | None = None
        self._relay = _ProgressRelay()
        self._relay.progress.connect(self.on_progress)
        self.status = QLabel("ready")

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("prompt", self.prompt_combo)
        form.addRow("target labels", self.target_combo)
        form.addRow("label id", self.label_id)
        form.addRow("label name", self.label_name)
        form.addRow(self.overwrite)
        form.addRow(self.preview)
        buttons = QHBoxLayout()
        for b in (self.segment_button, self.undo_button, self.cancel_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        volume_buttons = QHBoxLayout()
        volume_buttons.addWidget(self.propagate_button)
        volume_buttons.addWidget(self.measure_button)
        layout.addLayout(volume_buttons)
        previews = QHBoxLayout()
        previews.addWidget(self.accept_button)
        previews.addWidget(self.discard_button)
        layout.addLayout(previews)
        layout.addWidget(self.status)
        self.cancel_button.setEnabled(False)
        self._show_preview_buttons(False)

        self.segment_button.clicked.connect(self.on_segment)
        self.undo_button.clicked.connect(self.on_undo)
        self.cancel_button.clicked.connect(self.on_cancel)
        self.propagate_button.clicked.connect(self.on_propagate)
        self.measure_button.clicked.connect(self.on_measure)
        self.accept_button.clicked.connect(self.on_accept_preview)
        self.discard_button.clicked.connect(self.on_discard_preview)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.on_layers_changed)
        self.viewer.dims.events.current_step.connect(self.on_slice_changed)
        self.on_layers_changed()
        # import torch and load the segmentation model now, off the main thread, so the first
        # click does not pay for it (the import itself briefly holds the GIL: ~0.3 s, once)
        self._background(_warm_up)

    # -- layer choices ---------------------------------------------------------------------------
    def on_layers_changed(self, event=None) -> None:
        def fill(combo: QComboBox, kinds: tuple, first: tuple[str, ...] = ()) -> None:
            current = combo.currentText()
            combo.clear()
            names = list(first) + [layer.name for layer in self.viewer.layers if isinstance(layer, kinds)]
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)

        fill(self.image_combo, (Image,))
        fill(self.prompt_combo, (Shapes, Points, Labels))
        fill(self.target_combo, (Labels,), first=(NEW_LAYER,))

    def on_slice_changed(self, event=None) -> None:
        """Embed the slice the user looks at, and its neighbours, before they click."""
        try:
            image = self._layer(self.image_combo, "image")
            ref = current_slice(self.viewer, image)
        except MedplibError:
            return
        self._background(_Prefetch(np.asarray(image.data), ref, image.metadata.get("modality", "auto")).run)

    def _layer(self, combo: QComboBox, what: str):
        name = combo.currentText()
        if not name or name not in self.viewer.layers:
            raise MedplibError(f"no {what} layer: add one and pick it in the MedPLIB dock")
        return self.viewer.layers[name]

    # -- segment -----------------------------------------------------------------------------------
    def on_segment(self) -> None:
        try:
            image = self._layer(self.image_combo, "image")
            prompt_layer = self._layer(self.prompt_combo, "prompt")
            target = self._target_layer(image)
            captured = capture(self.viewer, image, prompt_layer)
        except MedplibError as exc:
            show_error(str(exc))
            return
        if captured.ignored:
            show_info(f"{captured.ignored} prompt(s) on other slices ignored")
        data = np.asarray(image.data)
        job = _SegmentJob(data, captured, modality=image.metadata.get("modality", "auto"))
        context = (target, captured.slice, int(self.label_id.value()), self.label_name.text().strip(),
                   self.overwrite.isChecked())
        self._start(job.run, lambda result: self.on_segmented(result, context))

    def _target_layer(self, image):
        if self.target_combo.currentText() not in ("", NEW_LAYER):
            target = self.viewer.layers[self.target_combo.currentText()]
            if target.data.shape != image.data.shape:
                raise MedplibError(f"target layer {target.name!r} has shape {target.data.shape}, "
                                   f"but the image is {image.data.shape}")
            return target
        return None  # created on success, so a failure leaves no empty layer behind

    def on_segmented(self, result, context) -> None:
        if self.preview.isChecked():
            self._show_preview(result, context)
            return
        self._commit(result, context)

    def _show_preview(self, result, context) -> None:
        self.on_discard_preview()
        ref = context[1]
        image = self.viewer.layers[self.image_combo.currentText()]
        data = np.zeros(image.data.shape, np.uint8)
        (data if data.ndim == 2 else np.moveaxis(data, ref.axis, 0)[ref.index])[result.mask != 0] = 1
        self.viewer.add_labels(data, name=PREVIEW_LAYER, scale=image.scale, translate=image.translate, opacity=0.6)
        self._pending = (result, context)
        self._show_preview_buttons(True)
        self.status.setText(f"preview: {int(result.mask.sum())} voxels on slice {ref.index} — accept or discard")

    def on_accept_preview(self) -> None:
        if self._pending is None:
            return
        result, context = self._pending
        self.on_discard_preview()
        self._commit(result, context)

    def on_discard_preview(self) -> None:
        self._pending = None
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_LAYER)
        self._show_preview_buttons(False)

    def _show_preview_buttons(self, visible: bool) -> None:
        self.accept_button.setVisible(visible)
        self.discard_button.setVisible(visible)

    def _commit(self, result, context) -> None:
        target, ref, label, name, overwrite = context
        image = self.viewer.layers[self.image_combo.currentText()]
        if target is None:
            target = self.viewer.add_labels(np.zeros(image.data.shape, np.uint8), name=f"{image.name} MedPLIB",
                                            scale=image.scale, translate=image.translate,
                                            metadata=dict(image.metadata))
            self.target_combo.setCurrentText(target.name)
        try:
            write = write_mask(target, result.mask, ref, label=label, name=name or None, overwrite=overwrite)
        except MedplibError as exc:
            show_error(str(exc))
            return
        self.writes.append((target, write))
        self.status.setText(f"{write.changed} voxels → label {label} on slice {ref.index} "
                            f"(score {result.score:.2f}, {result.timings_ms.get('total', 0):.0f} ms)")

    # -- volumes -----------------------------------------------------------------------------------
    def on_propagate(self) -> None:
        """The target label's mask on this slice → the structure through the volume, one undoable write."""
        try:
            image = self._layer(self.image_combo, "image")
            target = self._target_layer(image)
            if target is None:
                raise MedplibError("pick the target labels layer that holds the seed (Segment writes one)")
            ref = current_slice(self.viewer, image)
            label = int(self.label_id.value())
            seed = seed_from_layer(target, ref, label)
        except MedplibError as exc:
            show_error(str(exc))
            self.status.setText(f"not propagated: {exc}")
            return
        data, modality = np.asarray(image.data), image.metadata.get("modality", "auto")
        cancel = self._cancel_event = threading.Event()
        relay = self._relay

        def job():
            from medplib_runtime.volume.propagation import propagate

            return propagate(get_runtime(), data, axis=ref.axis, seed_index=ref.index, seed_mask=seed,
                             modality=modality, progress=relay.progress.emit, cancel=cancel)

        context = (target, label, self.label_name.text().strip(), self.overwrite.isChecked())
        self._start(job, lambda result: self.on_propagated(result, context))

    def on_progress(self, done: int, total: int) -> None:
        self.status.setText(f"propagating… slice {done} of ~{total} (Cancel stops; nothing is written until the end)")

    def on_propagated(self, result, context) -> None:
        target, label, name, overwrite = context
        try:
            write = write_volume(target, result.mask, label=label, name=name or None, overwrite=overwrite)
        except MedplibError as exc:
            show_error(str(exc))
            return
        self.writes.append((target, write))
        stops = ", ".join(f"{k}: {v}" for k, v in result.stopped.items())
        self.status.setText(f"propagated label {label} over slices {result.slices[0]}–{result.slices[-1]}: "
                            f"{write.changed} voxels added in {result.seconds:.1f} s (stopped {stops})")

    def on_measure(self) -> None:
        try:
            image = self._layer(self.image_combo, "image")
            target = self._target_layer(image)
            if target is None:
                raise MedplibError("pick the target labels layer to measure")
            found = measure_layer(target, image, (int(self.label_id.value()),))
        except MedplibError as exc:
            show_error(str(exc))
            self.status.setText(f"not measured: {exc}")
            return
        self.status.setText(describe(found[0]))
        show_info(describe(found[0]))

    def on_undo(self) -> None:
        if not self.writes:
            show_info("nothing to undo")
            return
        layer, write = self.writes.pop()
        undo_write(layer, write)
        where = f"slice {write.slice.index}" if hasattr(write, "slice") else f"{write.changed} voxels in 3D"
        self.status.setText(f"undid the write on {where}")

    def on_cancel(self) -> None:
        if self._cancel_event is not None:
            self._cancel_event.set()  # a propagation stops at its next slice
        if self._worker is not None:
            self._worker.quit()
            self.status.setText("cancelled: the result will be discarded")
            self._worker = None
            self._set_busy(False)

    # -- threading ---------------------------------------------------------------------------------
    def _start(self, fn, on_done) -> None:
        current: list = [None]  # the worker, known once started (results arrive via the event loop)
        self._set_busy(True)
        worker = run_call(fn, lambda r: self._deliver(current[0], r, on_done), synchronous=self.synchronous,
                          on_finished=lambda: self._set_busy(False), on_error=self.on_failed)
        current[0] = worker
        self._worker = worker

    def _deliver(self, worker, result, on_done) -> None:
        if worker is not None and self._worker is not worker:
            return  # cancelled meanwhile: the result is discarded, nothing is written
        self._worker = None
        on_done(result)

    def on_failed(self, exc: BaseException) -> None:
        self._worker = None
        if isinstance(exc, Cancelled):
            self.status.setText("cancelled: nothing was written")
            return
        self.status.setText(f"failed, nothing written: {user_message(exc)}")

    def _background(self, fn) -> None:
        """Fire-and-forget runtime work (warm-up, prefetch); failures only cost speed."""
        if not self.synchronous:
            run_background(fn)

    def _set_busy(self, busy: bool) -> None:
        self.propagate_button.setEnabled(not busy)
        self.measure_button.setEnabled(not busy)
        self.segment_button.setEnabled(not busy)
        self.undo_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.status.setText("working… (a new slice takes ~1.5 s for its embedding)")


def _warm_up() -> None:
    warm = getattr(get_runtime(), "warm_up", None)
    if warm is not None:
        warm()


class _ProgressRelay(QObject):
    """Carries (done, total) from the worker thread to the dock (a queued Qt signal: thread-safe)."""

    progress = Signal(int, int)


class _Prefetch:
    def __init__(self, data: np.ndarray, ref, modality: str) -> None:
        self.data, self.ref, self.modality = data, ref, modality

    def run(self) -> None:
        runtime = get_runtime()
        runtime.prefetch(runtime.set_image(self.data, modality=self.modality), self.ref)


class _SegmentJob:
    """The worker's whole job: plain data in, SegmentResult out; touches no widget or layer."""

    def __init__(self, data: np.ndarray, captured, *, modality: str) -> None:
        self.data, self.captured, self.modality = data, captured, modality

    def run(self):
        runtime = get_runtime()
        key = runtime.set_image(self.data, modality=self.modality)
        return runtime.segment(SegmentRequest(image_key=key, slice=self.captured.slice, prompt=self.captured.prompt))
