"""The MedPLIB segment dock: pick image, prompt and target layers, press Segment; Propagate it through
the volume, Measure it; Undo the last write.

Prompt choices are only layers a user draws in (Shapes, Points, scribbles; ``layer_roles``): a
reference label that came with a file is never read as the user's box. Widgets only wire signals to
``on_*`` methods. The runtime call runs in a napari worker thread (never on the Qt main thread; the
worker touches no layer); the mask is written in ``on_segmented`` on the main thread.
``synchronous = True`` (or MEDPLIB_SYNC_WORKERS=1) runs the call inline, for tests and debugging.
"""

from __future__ import annotations

import os

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QSizePolicy, QSpinBox, QVBoxLayout, QWidget)

from medplib_runtime.errors import Cancelled, MedplibError
from medplib_runtime.schemas import SegmentRequest

from ._runtime_line import RuntimeLine
from ._status_line import StatusLine
from ._workers import WorkerSlot, user_message
from .colours import outline_references
from .layer_roles import PREDICTION, SCRIBBLE, add_quietly, is_prompt_layer, is_target_layer, with_role
from .prompt_capture import capture, current_slice, grid_shape
from .runtime_factory import (SEGMENTATION_STEP, get_runtime, run_background, runtime_info, warm, warm_segmentation,
                              warm_status)
from .segment_session import SegmentSession, WriteContext
from .volume_actions import describe, measure_layer, plan_propagation, run_plan, unsure_note

NEW_LAYER = "(new labels layer)"
PREVIEW_LAYER = "MedPLIB preview"


class MedPLIBWidget(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.synchronous = os.environ.get("MEDPLIB_SYNC_WORKERS") == "1"
        self.session = SegmentSession(napari_viewer.layers)  # undo stack, preview, writes: no Qt there
        self.jobs = WorkerSlot(synchronous=lambda: self.synchronous)  # one runtime call at a time, cancellable
        self._relay = _ProgressRelay()
        self._relay.progress.connect(self.on_progress)

        self.runtime_line = RuntimeLine(napari_viewer)
        self.image_combo, self.prompt_combo, self.target_combo = QComboBox(), QComboBox(), QComboBox()
        for combo in (self.image_combo, self.prompt_combo, self.target_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(12)
        self.prompt_combo.setToolTip("the layer you draw your box, ellipse, polygon, points or scribble in")
        self.scribble_button = QPushButton("+ scribble")
        self.scribble_button.setToolTip("a new Labels layer to paint a free-form region in, used as the prompt")
        self.label_id = QSpinBox()
        self.label_id.setRange(1, 65535)
        self.label_name = QLineEdit("lesion")
        self.overwrite = QCheckBox("overwrite other labels")
        self.preview = QCheckBox("preview first")
        self.segment_button, self.undo_button = QPushButton("Segment"), QPushButton("Undo")
        self.cancel_button = QPushButton("Cancel")
        self.propagate_button, self.measure_button = QPushButton("Propagate"), QPushButton("Measure")
        self.accept_button, self.discard_button = QPushButton("Accept"), QPushButton("Discard")
        self.status = StatusLine("ready")
        self._layout()
        self._connect()
        self.on_layers_changed()
        # load the segmentation model and embed the shown slice now, off the main thread, so the first
        # click does not pay for it (the torch import itself briefly holds the GIL: ~0.3 s, once)
        if not self.synchronous:
            warm_segmentation()
            self.on_slice_changed()
            self._warm_timer = QTimer(self)
            self._warm_timer.setInterval(250)
            self._warm_timer.timeout.connect(self.on_warm_tick)
            self._warm_timer.start()

    @property
    def writes(self) -> list:
        """(layer, LabelWrite) of every write still undoable, newest last."""
        return self.session.writes

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow(self.runtime_line)
        form.addRow("image", self.image_combo)
        prompt_row = QHBoxLayout()
        prompt_row.addWidget(self.prompt_combo, 1)
        prompt_row.addWidget(self.scribble_button)
        form.addRow("prompt", prompt_row)
        form.addRow("write to", self.target_combo)
        label_row = QHBoxLayout()
        label_row.addWidget(self.label_id)
        label_row.addWidget(QLabel("name"))
        label_row.addWidget(self.label_name, 1)
        form.addRow("label", label_row)
        checks = QHBoxLayout()
        checks.addWidget(self.overwrite)
        checks.addWidget(self.preview)
        form.addRow(checks)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for row in ((self.segment_button, self.undo_button, self.cancel_button),
                    (self.propagate_button, self.measure_button, self.accept_button, self.discard_button)):
            buttons = QHBoxLayout()
            for b in row:
                buttons.addWidget(b)
            layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.cancel_button.setEnabled(False)
        self._enable_preview_buttons(False)

    def _connect(self) -> None:
        self.segment_button.clicked.connect(self.on_segment)
        self.undo_button.clicked.connect(self.on_undo)
        self.cancel_button.clicked.connect(self.on_cancel)
        self.propagate_button.clicked.connect(self.on_propagate)
        self.measure_button.clicked.connect(self.on_measure)
        self.accept_button.clicked.connect(self.on_accept_preview)
        self.discard_button.clicked.connect(self.on_discard_preview)
        self.scribble_button.clicked.connect(self.on_new_scribble)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self.on_layers_changed)
        self.viewer.layers.selection.events.active.connect(self.on_active_layer)
        self.viewer.dims.events.current_step.connect(self.on_slice_changed)

    # -- layer choices ---------------------------------------------------------------------------
    def on_layers_changed(self, event=None) -> None:
        outline_references(self.viewer.layers)
        def fill(combo: QComboBox, names: list[str], prefer: str | None = None) -> None:
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            combo.setCurrentText(current if current in names else (prefer if prefer in names else names[0]
                                                                     if names else ""))
            combo.blockSignals(False)

        layers = list(self.viewer.layers)
        fill(self.image_combo, [lay.name for lay in layers if isinstance(lay, Image)])
        prompts = [lay.name for lay in layers if is_prompt_layer(lay)]
        active = self.viewer.layers.selection.active
        fill(self.prompt_combo, prompts, prefer=active.name if active is not None and is_prompt_layer(active)
             else (prompts[-1] if prompts else None))
        fill(self.target_combo, [NEW_LAYER] + [lay.name for lay in layers if is_target_layer(lay)])

    def on_active_layer(self, event=None) -> None:
        """The prompt follows the layer the user selects to draw in."""
        active = self.viewer.layers.selection.active
        if active is not None and is_prompt_layer(active):
            self.prompt_combo.setCurrentText(active.name)

    def on_new_scribble(self) -> None:
        try:
            image = self._layer(self.image_combo, "image")
        except MedplibError as exc:
            show_error(str(exc))
            return
        layer = self.viewer.add_labels(np.zeros(grid_shape(image), np.uint8), name="scribble", scale=image.scale,
                                       translate=image.translate, metadata=with_role({}, SCRIBBLE))
        layer.mode = "paint"
        self.prompt_combo.setCurrentText(layer.name)

    def on_slice_changed(self, event=None) -> None:
        """Embed the slice the user looks at, and its neighbours, before they click; say so on the canvas
        when the last Propagate was unsure of this slice."""
        try:
            image = self._layer(self.image_combo, "image")
            ref = current_slice(self.viewer, image)
        except MedplibError:
            return
        self._show_unsure(image, ref)
        job = _Prefetch(np.asarray(image.data), ref, image.metadata.get("modality", "auto"))
        if not warm_status().seconds(SEGMENTATION_STEP) and not self.synchronous:
            warm(f"slice {ref.index}", lambda _runtime: job.run(wait=True))  # in line behind the model load
        else:
            self._background(job.run)

    def _show_unsure(self, image, ref) -> None:
        note = None
        if self.target_combo.currentText() in self.viewer.layers:
            target = self.viewer.layers[self.target_combo.currentText()]
            if np.shape(target.data) == grid_shape(image):
                note = unsure_note(target, int(self.label_id.value()), ref.index)
        # napari ≥ 0.9 keeps it on the canvas (viewer.text_overlay is deprecated there)
        overlay = self.viewer.canvas.overlays.text if hasattr(self.viewer, "canvas") else self.viewer.text_overlay
        if note is not None:
            overlay.text, overlay.color, overlay.visible = note, "orange", True
        elif overlay.text.startswith("MedPLIB is unsure"):
            overlay.visible, overlay.text = False, ""

    def on_warm_tick(self) -> None:
        """While the model loads in the background, say so (with the seconds it has taken) and stop after."""
        self.runtime_line.refresh()
        state = warm_status()
        if self.jobs.busy:
            return  # a click is running: its own status line is shown
        if state.loading is not None:
            self.status.busy(f"loading {state.loading}…")
        elif not state.busy:
            self._warm_timer.stop()
            if state.failed:
                self.status.done(f"not ready: {state.failed[0][1]}")
            elif self.status.is_busy:
                loaded = ", ".join(f"{step} {s:.1f} s" for step, s in state.loaded)
                self.status.done(f"ready: draw a box on the slice and press Segment (loaded {loaded})")

    def _layer(self, combo: QComboBox, what: str):
        name = combo.currentText()
        if not name or name not in self.viewer.layers:
            hint = "draw a box in a Shapes layer" if what == "prompt" else "add one"
            raise MedplibError(f"no {what} layer: {hint} and pick it in the MedPLIB dock")
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
            self.status.done(f"not segmented: {exc}")
            return
        job = _SegmentJob(np.asarray(image.data), captured, modality=image.metadata.get("modality", "auto"))
        context = WriteContext(target, captured.slice, int(self.label_id.value()), self.label_name.text().strip(),
                               self.overwrite.isChecked(), captured.prompt)
        ignored = f"; the newest shape here is used, {captured.ignored} other(s) not" if captured.ignored else ""
        self._start(job.run, lambda result: self.on_segmented(result, context),
                    f"segmenting slice {captured.slice.index} ({captured.prompt.kind}{ignored})…")

    def _target_layer(self, image):
        if self.target_combo.currentText() not in ("", NEW_LAYER):
            target = self.viewer.layers[self.target_combo.currentText()]
            if target.data.shape != grid_shape(image):
                raise MedplibError(f"target layer {target.name!r} has shape {target.data.shape}, "
                                   f"but the image is {grid_shape(image)}")
            return target
        return None  # created on success, so a failure leaves no empty layer behind

    def on_segmented(self, result, context: WriteContext) -> None:
        if self.preview.isChecked():
            self._show_preview(result, context)
            return
        self._commit(result, context)

    def _show_preview(self, result, context: WriteContext) -> None:
        self.on_discard_preview()
        ref = context.slice
        image = self.viewer.layers[self.image_combo.currentText()]
        data = np.zeros(grid_shape(image), np.uint8)
        (data if data.ndim == 2 else np.moveaxis(data, ref.axis, 0)[ref.index])[result.mask != 0] = 1
        add_quietly(self.viewer, lambda: self.viewer.add_labels(data, name=PREVIEW_LAYER, scale=image.scale,
                                                                translate=image.translate, opacity=0.6))
        self.session.hold(result, context)
        self._enable_preview_buttons(True)
        self.status.done(f"preview: {int(result.mask.sum())} voxels on slice {ref.index} — Accept or Discard")

    def on_accept_preview(self) -> None:
        pending = self.session.take_pending()
        if pending is None:
            return
        self.on_discard_preview()
        self._commit(*pending)

    def on_discard_preview(self) -> None:
        self.session.take_pending()
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_LAYER)
        self._enable_preview_buttons(False)

    def _enable_preview_buttons(self, enabled: bool) -> None:
        self.accept_button.setEnabled(enabled)
        self.discard_button.setEnabled(enabled)

    def _new_target(self):
        image = self.viewer.layers[self.image_combo.currentText()]
        target = add_quietly(self.viewer, lambda: self.viewer.add_labels(
            np.zeros(grid_shape(image), np.uint8), name=f"{image.name} MedPLIB", scale=image.scale,
            translate=image.translate, metadata=with_role(image.metadata, PREDICTION)))
        self.target_combo.setCurrentText(target.name)
        return target

    def _commit(self, result, context: WriteContext) -> None:
        target = context.target if context.target is not None else self._new_target()
        try:
            written = self.session.write_slice(target, result, context)
        except MedplibError as exc:
            show_error(str(exc))
            return
        total = result.timings_ms.get("total", 0) / 1e3
        embed = " (slice embedded first)" if not result.timings_ms.get("cached", 1.0) else ""
        self.status.done(f"{written.summary} in {total:.1f} s{embed}, score {result.score:.2f}")

    # -- volumes -----------------------------------------------------------------------------------
    def on_propagate(self) -> None:
        """Every slice of the target label is a seed: the structure through the volume (gaps interpolated,
        beyond walked), one undoable write. After a Propagate, only the slices corrected since are redone."""
        try:
            image = self._layer(self.image_combo, "image")
            target = self._target_layer(image)
            if target is None:
                raise MedplibError("pick the target labels layer that holds the seed (Segment writes one)")
            ref = current_slice(self.viewer, image)
            label = int(self.label_id.value())
            plan = plan_propagation(target, label, ref.axis, self.session.last_propagation(target, label))
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"not propagated: {exc}")
            return
        data, modality = np.asarray(image.data), image.metadata.get("modality", "auto")
        relay = self._relay

        def job(cancel):
            return run_plan(get_runtime(), data, plan, modality=modality, progress=relay.progress.emit, cancel=cancel)

        context = WriteContext(target, None, label, self.label_name.text().strip(), self.overwrite.isChecked())
        self._start(job, lambda result: self.on_propagated(result, context), plan.describe() + "…")

    def on_progress(self, done: int, total: int) -> None:
        self.status.progress(done, total, f"propagating… slice {done} of ~{total} "
                                          "(Cancel stops; nothing is written until the end)")

    def on_propagated(self, result, context: WriteContext) -> None:
        try:
            written = self.session.write_propagation(context.target, result, context)
        except MedplibError as exc:
            show_error(str(exc))
            return
        stops = ", ".join(f"{k}: {v}" for k, v in result.stopped.items())
        unsure = (f"; unsure on slice(s) {', '.join(map(str, result.unsure))}: check them"
                  if result.unsure else "")
        self.status.done(f"propagated label {context.label} over slices {result.slices[0]}–{result.slices[-1]}: "
                         f"{written.write.changed} voxels changed in {result.seconds:.1f} s (stopped {stops}){unsure}")
        self.on_slice_changed()

    def on_measure(self) -> None:
        try:
            image = self._layer(self.image_combo, "image")
            target = self._target_layer(image)
            if target is None:
                raise MedplibError("pick the target labels layer to measure")
            found = measure_layer(target, image, (int(self.label_id.value()),))
        except MedplibError as exc:
            show_error(str(exc))
            self.status.done(f"not measured: {exc}")
            return
        self.status.done(describe(found[0]))
        show_info(describe(found[0]))

    def on_undo(self) -> None:
        said = self.session.undo()
        if said is None:
            show_info("nothing to undo")
            return
        self.status.done(said)

    def on_cancel(self) -> None:
        if self.jobs.cancel():  # a propagation stops at its next slice; a segment's result is dropped
            self.status.done("cancelled: nothing was written")
            self._set_busy(False)

    # -- threading ---------------------------------------------------------------------------------
    def _start(self, fn, on_done, what: str) -> None:
        self._set_busy(True)
        state = warm_status()
        waiting = f" (waiting for {state.loading} to load)" if state.loading == SEGMENTATION_STEP else ""
        self.status.busy(what + waiting)
        self.jobs.start(fn, on_done, on_error=self.on_failed, on_finished=lambda: self._set_busy(False))

    def on_failed(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.status.done("cancelled: nothing was written")
            return
        self.status.done(f"failed, nothing written: {user_message(exc)}")

    def _background(self, fn) -> None:
        """Fire-and-forget runtime work (prefetch); failures only cost speed."""
        if not self.synchronous:
            run_background(fn)

    def _set_busy(self, busy: bool) -> None:
        for button in (self.propagate_button, self.measure_button, self.segment_button, self.undo_button):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if not busy and self.status.is_busy and not self.jobs.busy:
            self.status.done("ready")


class _ProgressRelay(QObject):
    """Carries (done, total) from the worker thread to the dock (a queued Qt signal: thread-safe)."""

    progress = Signal(int, int)


class _Prefetch:
    def __init__(self, data: np.ndarray, ref, modality: str) -> None:
        self.data, self.ref, self.modality = data, ref, modality

    def run(self, wait: bool = False) -> None:
        runtime = get_runtime()
        key = runtime.set_image(self.data, modality=self.modality)
        if wait and hasattr(runtime, "wait_prefetch"):
            # a warm-up step ends when the shown slice is embedded; its neighbours follow, not waited for
            runtime.prefetch(key, self.ref, radius=0)
            runtime.wait_prefetch()
        runtime.prefetch(key, self.ref)


class _SegmentJob:
    """The worker's whole job: plain data in, SegmentResult out; touches no widget or layer."""

    def __init__(self, data: np.ndarray, captured, *, modality: str) -> None:
        self.data, self.captured, self.modality = data, captured, modality

    def run(self, cancel=None):
        runtime = get_runtime()
        runtime_info(runtime)  # asked here, off the Qt thread, for the write's provenance
        key = runtime.set_image(self.data, modality=self.modality)
        return runtime.segment(SegmentRequest(image_key=key, slice=self.captured.slice, prompt=self.captured.prompt))
