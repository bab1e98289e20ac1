"""First use, as the README says: `medplib-napari` (only napari's event loop stubbed), driven with real
Qt mouse and keyboard events. Nothing is set by hand that a user would not set: the dropdowns are as
the app opens them. MEDPLIB_SCREENSHOT=PATH saves the README screenshot from this run.
"""

from __future__ import annotations

import os

import napari
import numpy as np
import pytest

from napari_medplib import launch, runtime_factory
from napari_medplib._driving import click, dock, draw_box, settle, type_and_enter

pytestmark = pytest.mark.weights
K = 16  # the slice the app opens on: through brain1's lesion


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _inside(where, box, pad: int = 1) -> bool:
    r0, c0, r1, c1 = box
    rows, cols = where[-2], where[-1]
    return bool(((rows >= r0 - pad) & (rows <= r1 + pad) & (cols >= c0 - pad) & (cols <= c1 + pad)).all())


@pytest.fixture()
def launched(monkeypatch):
    runtime_factory.set_runtime(None)
    got = {}
    monkeypatch.setattr(napari, "run", lambda *a, **k: got.setdefault("viewer", napari.current_viewer()))
    assert launch.main([]) == 0
    viewer = got["viewer"]
    viewer.window._qt_window.resize(1280, 800)  # a laptop screen
    viewer.window._qt_window.show()
    settle(30)
    yield viewer
    viewer.close()
    runtime_factory.set_runtime(None)


def test_first_use_as_the_readme_says(launched, qtbot):
    viewer = launched
    seg, chat = dock(viewer, "MedPLIB segment"), dock(viewer, "MedPLIB chat")
    image, reference = viewer.layers["brain1"], viewer.layers["brain1 lesion (reference)"]

    # what the user sees at launch: both docks, room to read answers, the reference out of the way
    assert seg.isVisible() and chat.isVisible() and chat.transcript.height() >= 150
    prompts = [seg.prompt_combo.itemText(i) for i in range(seg.prompt_combo.count())]
    assert prompts == ["prompt"], "only layers a user draws in are prompt choices"
    targets = [seg.target_combo.itemText(i) for i in range(seg.target_combo.count())]
    assert reference.name not in targets, "nothing is written into the reference"
    assert reference.contour > 0, "the reference is an outline"
    width = seg.width()
    runtime_factory.wait_background()  # the user reads the screen while the models load
    qtbot.waitUntil(lambda: not runtime_factory.warm_status().busy, timeout=240_000)

    # a box on the lesion, Segment: the mask comes from the box
    truth = reference.data[K] == 1
    rows, cols = np.nonzero(truth)
    box = (rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3)
    draw_box(viewer, image, K, *box)
    assert len(viewer.layers["prompt"].data) == 1, "the drag drew one rectangle"
    click(seg.segment_button)
    qtbot.waitUntil(lambda: len(seg.writes) == 1, timeout=60_000)
    written = viewer.layers["brain1 MedPLIB"].data == 1
    assert not np.delete(written, K, 0).any(), "the mask is on the shown slice only"
    assert _dice(written[K], truth) >= 0.80
    assert _inside(seg.writes[-1][1].where, box)

    # a box somewhere else: the mask follows the box, not the lesion
    other = (box[0], 255 - box[3], box[2], 255 - box[1])  # the mirror image, the other hemisphere
    draw_box(viewer, image, K, *other)
    click(seg.segment_button)
    qtbot.waitUntil(lambda: len(seg.writes) == 2, timeout=60_000)
    layer, write = seg.writes[-1]
    assert write.changed > 0 and _inside(write.where, other)
    click(seg.undo_button)
    assert (viewer.layers["brain1 MedPLIB"].data == 1).sum() == written.sum(), "undo took back the second mask"
    assert seg.width() == width, "the layout did not move"

    # the chat: a grounding question, typed and sent with Enter; the mask as a chip, then added
    type_and_enter(chat.question, "Segment the lesion.")
    qtbot.waitUntil(lambda: bool(chat.history.entries("brain1")), timeout=120_000)
    entry = chat.history.entries("brain1")[0]
    text = chat.transcript.toPlainText()
    assert "<SEG>" not in text and len(entry.masks) == 1 and "mask 1 → add as 'lesion'" in text
    click(chat.masks_button)
    chat_layer = viewer.layers["brain1 chat masks"]
    chat_mask = chat_layer.data[K] == 1
    assert chat_layer.metadata["medplib_label_names"] == {1: "lesion"}
    assert "mask 1 → layer 'brain1 chat masks', label 1 (lesion)" in chat.transcript.toPlainText()
    assert _dice(chat_mask, truth) >= 0.5
    seg_colour = viewer.layers["brain1 MedPLIB"].metadata["medplib_colours"][1]
    assert chat_layer.metadata["medplib_colours"][1] != seg_colour, "each written mask has its own colour"
    if os.environ.get("MEDPLIB_SCREENSHOT"):
        viewer.layers.selection.active = viewer.layers["prompt"]
        settle(20)
        viewer.screenshot(os.environ["MEDPLIB_SCREENSHOT"], canvas_only=False)
    click(chat.undo_button)
    assert "brain1 chat masks" not in viewer.layers, "undo took the chat mask (and its new layer) back"

    # Measure the segmented lesion
    click(seg.measure_button)
    assert "mL" in seg.status.text() and "lesion (label 1)" in seg.status.text()
