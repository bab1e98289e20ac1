"""From the chat to 3D: a "→ 3D" chip (or "Segment the lesion in 3D.") propagates an answer's mask through the
volume as one undoable write; Stop writes nothing; "How big is it?" measures the newest chat mask and says
which mask and which slices; a 2D image never offers 3D."""

from __future__ import annotations

import time

import numpy as np
import pytest
from qtpy.QtCore import Qt, QUrl

from medplib_runtime.schemas import AskResult, SegmentResult
from napari_medplib import _workers, runtime_factory
from napari_medplib._chat_widget import ChatDock
from napari_medplib.chat_state import NOTHING_TO_MEASURE
from napari_medplib.chat_view import without_3d
from napari_medplib.volume_actions import CONFIDENCE_KEY, UNSURE_KEY

SCALE = (2.0, 0.8, 0.8)
SEED = 6


@pytest.fixture(autouse=True)
def fresh_runtime():
    runtime_factory.set_runtime(None)
    yield
    runtime_factory.set_runtime(None)


def _phantom():
    """A bright ellipsoid over slices 2–10 of a noisy volume: the truth a fake model segments exactly."""
    z, y, x = np.ogrid[:13, :48, :56]
    inside = ((z - 6) / 4.6) ** 2 + ((y - 24) / 12) ** 2 + ((x - 28) / 15) ** 2 <= 1
    volume = np.random.default_rng(3).normal(100, 10, inside.shape).astype(np.float32)
    volume[inside] += 300
    return volume, inside


class FakeRuntime:
    """Widget unit test only: a model that answers a request with the bright blob of the asked slice (or
    nothing, ``abstain``) and segments a box as the bright pixels inside it (``delay`` s per slice)."""

    def __init__(self, *, abstain: bool = False, delay: float = 0.0):
        self.requests, self.abstain, self.delay = [], abstain, delay
        self.images: dict[str, np.ndarray] = {}
        self.segments = 0

    def set_image(self, image, **kw):
        self.images["k"] = np.asarray(image)
        return "k"

    def prefetch(self, *a, **kw):
        pass

    def _plane(self, ref):
        image = self.images["k"]
        return image if image.ndim == 2 else np.take(image, ref.index, axis=ref.axis)

    def ask(self, request, *, on_token=None):
        self.requests.append(request)
        if self.abstain:
            return AskResult("I could not find the lesion with confidence on this slice.", (), None, (), {"total": 1.0})
        return AskResult("Sure, it is <SEG>.", ((self._plane(request.slice) > 250).astype(np.uint8),), None, (),
                         {"total": 2.0})

    def segment(self, request):
        time.sleep(self.delay)
        self.segments += 1
        plane = self._plane(request.slice)
        b = request.prompt.box.normalized()
        box = np.zeros(plane.shape, bool)
        box[int(b.r0):int(b.r1) + 1, int(b.c0):int(b.c1) + 1] = True
        return SegmentResult(((plane > 250) & box).astype(np.uint8), 0.95, "box")

    def close(self):
        pass


def _dock(make_napari_viewer, runtime, *, synchronous=True, image=None):
    runtime_factory.set_runtime(runtime)
    viewer = make_napari_viewer()
    volume, truth = _phantom() if image is None else (image, None)
    layer = viewer.add_image(volume, name="ct", scale=SCALE[-volume.ndim:])
    if volume.ndim == 3:
        viewer.dims.set_point(0, layer.data_to_world((SEED, 0, 0))[0])
    dock = ChatDock(viewer)
    dock.synchronous = synchronous
    return viewer, dock, truth


def _ask(qtbot, dock, question: str) -> None:
    n = len(dock.history.entries("ct"))
    dock.question.setText(question)
    qtbot.mouseClick(dock.ask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(dock.history.entries("ct")) == n + 1, timeout=30_000)
    qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=60_000)


@pytest.mark.parametrize("question, plain, asked", [
    ("Segment the lesion in 3D.", "Segment the lesion.", True),
    ("Segment the tumour through the volume.", "Segment the tumour.", True),
    ("Outline the lesion in all slices", "Outline the lesion", True),
    ("segment the lesion in the whole volume", "Segment the lesion", True),
    ("3D segment the lesion", "Segment the lesion", True),
    ("How big is it in 3D?", "How big is it in 3D?", False),
    ("Segment the lesion in this scan.", "Segment the lesion in this scan.", False),
    ("Segment the lesion.", "Segment the lesion.", False)])
def test_the_3d_words_are_read_off_a_request_for_a_mask(question, plain, asked):
    assert without_3d(question) == (plain, asked)


def test_asking_in_3d_propagates_the_mask_and_how_big_measures_it(make_napari_viewer, qtbot):
    fake = FakeRuntime()
    viewer, dock, truth = _dock(make_napari_viewer, fake)
    _ask(qtbot, dock, "Segment the lesion in 3D.")
    assert [r.question for r in fake.requests] == ["Segment the lesion."], "the model reads the plain 2D request"
    assert dock.history.entries("ct")[0].question == "Segment the lesion in 3D.", "the transcript shows the user's"
    layer = viewer.layers["ct chat masks"]
    got = layer.data == 1
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.9 and got[SEED].sum() == truth[SEED].sum()
    assert np.count_nonzero(got.any(axis=(1, 2))) >= 7, "through the volume, not one slice"
    assert [w.volume for w in dock.session.writes] == [False, True], "the 2D mask, then ONE 3D write"
    assert 1 in layer.metadata[CONFIDENCE_KEY] and 1 in layer.metadata[UNSURE_KEY]
    assert "mask 1 propagated: label 1 of 'ct chat masks' over slices" in dock.status.text()
    text = dock.transcript.toPlainText()
    assert "3D: slices" in text and "mask 1 in 3D: label 1 of 'ct chat masks'" in text
    first, last = np.nonzero(got.any(axis=(1, 2)))[0][[0, -1]]

    _ask(qtbot, dock, "How big is it?")  # no labels layer picked under 'measure': the newest chat mask
    measured = dock.history.entries("ct")[1].measured
    ml = got.sum() * np.prod(SCALE) / 1000
    assert f"Size of 'lesion' (label 1): {ml:.2f} mL" in measured, measured
    assert f"chat mask 1 of answer 1 (label 1 of 'ct chat masks', slices {first}–{last}, propagated" in measured
    assert len(fake.requests) == 2 and len(dock.session.writes) == 2, "a measured question propagates nothing"

    qtbot.mouseClick(dock.undo_button, Qt.MouseButton.LeftButton)  # the 3D write back out: the 2D mask stays
    assert np.array_equal(layer.data == 1, np.isin(np.arange(13), [SEED])[:, None, None] & truth)
    assert 1 not in layer.metadata[UNSURE_KEY] and "→ 3D" in dock.transcript.toPlainText()
    _ask(qtbot, dock, "What is the volume of the lesion?")
    assert f"slices {SEED}–{SEED}, one slice, not propagated)" in dock.history.entries("ct")[2].measured
    qtbot.mouseClick(dock.undo_button, Qt.MouseButton.LeftButton)  # the 2D mask: the layer it made goes too
    assert "ct chat masks" not in viewer.layers
    _ask(qtbot, dock, "How big is it?")
    assert dock.history.entries("ct")[3].measured == NOTHING_TO_MEASURE
    assert dock.history.turns("ct")[3].answer == "Sure, it is <SEG>.", "a hint does not go back as the answer"


def test_the_3d_chip_adds_then_propagates_once(make_napari_viewer, qtbot):
    fake = FakeRuntime()
    viewer, dock, truth = _dock(make_napari_viewer, fake)
    _ask(qtbot, dock, "Segment the lesion.")
    assert "ct chat masks" not in viewer.layers, "a plain request adds nothing by itself"
    assert "mask 1 → add as 'lesion'   → 3D" in dock.transcript.toPlainText()
    dock.on_chip(QUrl("mask3d:0:0"))  # as the transcript's anchorClicked does
    layer = viewer.layers["ct chat masks"]
    assert [w.volume for w in dock.session.writes] == [False, True]
    assert np.count_nonzero((layer.data == 1).any(axis=(1, 2))) >= 7
    calls = fake.segments
    dock.on_chip(QUrl("mask3d:0:0"))  # propagated already: shows it, computes and writes nothing
    assert fake.segments == calls and len(dock.session.writes) == 2 and viewer.layers.selection.active is layer


def test_stop_during_the_propagation_writes_nothing(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.setattr(_workers, "show_error", lambda message: None)
    slow = FakeRuntime(delay=0.4)
    viewer, dock, _ = _dock(make_napari_viewer, slow, synchronous=False)  # real worker threads
    _ask(qtbot, dock, "Segment the lesion.")
    dock.on_chip(QUrl("mask:0:0"))  # added as a 2D mask first
    layer = viewer.layers["ct chat masks"]
    before = layer.data.copy()
    dock.on_chip(QUrl("mask3d:0:0"))
    qtbot.waitUntil(lambda: "propagating mask 1 through the volume… slice" in dock.status.text(), timeout=30_000)
    assert dock.ask_button.text() == "Stop"
    qtbot.mouseClick(dock.ask_button, Qt.MouseButton.LeftButton)
    assert dock.ask_button.text() == "Ask" and dock.status.text().startswith("stopped: nothing was propagated")
    calls = slow.segments
    qtbot.wait(2500)  # the worker's last decodes of this slice and its signals arrive: they must change nothing
    stopped = slow.segments
    qtbot.wait(1000)
    assert slow.segments == stopped <= calls + 4, "the walk stopped at its next slice"
    assert np.array_equal(layer.data, before) and len(dock.session.writes) == 1
    assert dock.history.volume("ct", 0, 0) is None and "→ 3D" in dock.transcript.toPlainText()
    assert "propagated" not in dock.status.text()


def test_a_2d_image_offers_no_3d_and_an_abstention_does_nothing(make_napari_viewer, qtbot):
    picture, _ = _phantom()
    fake = FakeRuntime()
    viewer, dock, _ = _dock(make_napari_viewer, fake, image=picture[SEED])
    _ask(qtbot, dock, "Segment the lesion in 3D.")
    assert fake.requests[0].question == "Segment the lesion."
    assert "→ 3D" not in dock.transcript.toPlainText() and "one 2D image: 3D needs a volume" in dock.status.text()
    assert "ct chat masks" not in viewer.layers
    dock.on_chip(QUrl("mask3d:0:0"))  # a stale chip: one line, never a crash
    assert dock.status.text() == "not propagated: 'ct' is one 2D image: 3D needs a volume"
    assert not dock.session.writes
    qtbot.mouseClick(dock.undo_button, Qt.MouseButton.LeftButton)  # nothing to undo: says so, no crash

    runtime_factory.set_runtime(FakeRuntime(abstain=True))
    viewer2, dock2, _ = _dock(make_napari_viewer, FakeRuntime(abstain=True))
    _ask(qtbot, dock2, "Segment the lesion in 3D.")
    assert "no mask in the answer: nothing to propagate in 3D" in dock2.status.text()
    assert "no mask in the answer" in dock2.transcript.toPlainText()
    assert "ct chat masks" not in viewer2.layers and not dock2.session.writes


REAL_SLICE = 15  # brain1's lesion spans slices 11–17; the shipped model's mask on 16 walks only 16–17 (see below)


def _dice(a, b) -> float:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.mark.weights
def test_real_segment_in_3d_then_how_big_on_brain1(make_napari_viewer, qtbot):
    """The real model and propagation on the brain1 sample: a box over the lesion on slice 15, "Segment the
    lesion in 3D." → its mask through the volume; "How big is it?" measures that 3D mask, within 35 % of the
    reference label's volume. (From slice 16 the same flow gives a 2-slice mask, −72 % volume: the walk
    stops as unsure after one slice each way; measured 2026-12-07.)"""
    import re

    from medplib_runtime.imaging.io import read_volume
    from medplib_runtime.volume.measure import measure_labels
    from napari_medplib._chat_widget import NO_LABELS, NO_REGION

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medplib", "brain1")
    image, reference = viewer.layers
    truth = np.asarray(reference.data) != 0
    k = REAL_SLICE
    viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])
    r, c = np.nonzero(truth[k])  # the box: the reference lesion's bounding box on this slice, 3 voxels wider
    lo, hi = image.data_to_world((k, r.min() - 3, c.min() - 3)), image.data_to_world((k, r.max() + 3, c.max() + 3))
    viewer.add_shapes(np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])]), shape_type="rectangle",
                      name="lesion box")
    dock = ChatDock(viewer)
    dock.region_combo.setCurrentText("lesion box")
    assert dock.measure_combo.currentText() == NO_LABELS
    dock.question.setText("Segment the lesion in 3D.")
    t0 = time.perf_counter()
    qtbot.mouseClick(dock.ask_button, Qt.MouseButton.LeftButton)  # a real worker thread, the real model
    qtbot.waitUntil(lambda: dock.history.volume(image.name, 0, 0) is not None, timeout=600_000)
    seconds = time.perf_counter() - t0
    qtbot.waitUntil(lambda: dock.ask_button.text() == "Ask", timeout=10_000)
    entry = dock.history.entries(image.name)[0]
    done = dock.history.volume(image.name, 0, 0)
    layer = viewer.layers[f"{image.name} chat masks"]
    got = layer.data == done.label
    slice_dice, dice3d = _dice(entry.masks[0], truth[k]), _dice(got, truth)
    assert [w.volume for w in dock.session.writes] == [False, True]

    dock.region_combo.setCurrentText(NO_REGION)
    dock.question.setText("How big is it?")
    qtbot.mouseClick(dock.ask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(dock.history.entries(image.name)) == 2, timeout=300_000)
    measured = dock.history.entries(image.name)[1].measured
    ref_image = read_volume("sample_data/brain1_image.nrrd")
    (m,) = measure_labels(read_volume("sample_data/brain1_label.nrrd").array, spacing=ref_image.spacing,
                          origin=ref_image.origin, direction=ref_image.direction)
    found = re.search(r"Size of 'lesion' \(label (\d+)\): ([\d.]+) mL", measured)
    print(f"\nchat 3D on brain1 slice {k}: answer {entry.answer!r}, slice Dice {slice_dice:.3f}, 3D Dice {dice3d:.3f}, "
          f"{found and found.group(2)} mL vs truth {m.volume_ml:.2f} mL, slices {done.slices}, unsure {done.unsure}, "
          f"ask + propagate {seconds:.1f} s\n{measured}")
    assert found and int(found.group(1)) == done.label, measured
    assert (f"chat mask 1 of answer 1 (label {done.label} of '{layer.name}', slices {done.slices[0]}–{done.slices[1]}, "
            "propagated") in measured
    assert abs(float(found.group(2)) / m.volume_ml - 1) <= 0.35, measured
    assert dice3d >= 0.5 and done.slices[1] > done.slices[0]
