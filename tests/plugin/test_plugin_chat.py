"""The chat dock: transcript per image, history sent back, routing shown, masks to labels."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.schemas import AskResult, RoutingStats
from napari_medplib import runtime_factory
from napari_medplib._chat_widget import NO_REGION, ChatDock


@pytest.fixture(autouse=True)
def fresh_runtime():
    runtime_factory.set_runtime(None)
    yield
    runtime_factory.set_runtime(None)


class FakeAskRuntime:
    """Widget unit test only: echoes the question, returns two masks, records requests."""

    def __init__(self):
        self.requests = []

    def set_image(self, image, **kw):
        return "k"

    def ask(self, request, *, on_token=None):
        self.requests.append(request)
        for word in ("about: ", request.question):
            if on_token is not None:
                on_token(word)
        m1 = np.zeros((32, 40), np.uint8)
        m1[2:6, 2:6] = 1
        m2 = np.zeros((32, 40), np.uint8)
        m2[10:12, 10:20] = 1
        routing = RoutingStats(("grounding", "vision-language"), ("a", "b"), ((1.0, 0.0), (0.5, 0.5)))
        return AskResult(f"about: {request.question} <SEG> and <SEG>.", (m1, m2), routing, ("seg_projector",),
                         {"total": 5.0},
                         notes=("the region was not read",))

    def close(self):
        pass


def test_chat_transcript_history_routing_and_masks(make_napari_viewer, qtbot):
    fake = FakeAskRuntime()
    runtime_factory.set_runtime(fake)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((6, 32, 40)).astype(np.float32), name="ct")
    viewer.dims.set_point(0, 4)
    dock = ChatDock(viewer)
    dock.synchronous = True
    dock.question.setText("   ")
    dock.on_ask()
    assert not fake.requests, "an empty question is refused"
    dock.question.setText("Is <region> the lesion?")  # region: none
    dock.on_ask()
    assert not fake.requests and dock.question.text() == "Is <region> the lesion?", "refused, the question kept"
    dock.question.setText("What is <image>?")
    dock.on_ask()
    assert not fake.requests and dock.question.text() == "What is <image>?", "a reserved token: refused, kept"
    dock.question.setText("What is this?")
    dock.on_ask()
    dock.question.setText("And its size?")
    dock.on_ask()
    assert [r.slice.index for r in fake.requests] == [4, 4]
    assert fake.requests[1].history[0].question == "What is this?"
    assert fake.requests[1].history[0].answer == "about: What is this? <SEG> and <SEG>."
    assert dock._partial == "about: And its size?", "tokens were shown as they came"
    text = dock.transcript.toPlainText()
    assert "<SEG>" not in text, "the raw token is never shown"
    assert ("about: And its size?  mask 1 → add as 'chat mask 1'   → 3D  and  mask 2 → add as 'chat mask 2'   → 3D ."
            in text), "on a volume each mask also has its → 3D chip"
    assert "grounding 75% · vision-language 25% · 0.0 s" in text
    assert "untrained parts (seg_projector)" in text and "the region was not read" in text  # the runtime's note
    assert text.count("the region was not read") == 1, "a note both answers carry is said once, under the first"
    dock.on_add_masks()  # the newest answer's two masks, each under its own label, name and colour
    labels = viewer.layers["ct chat masks"]
    assert (labels.data[4] == 1).sum() == 16 and (labels.data[4] == 2).sum() == 20
    assert not np.delete(labels.data, 4, 0).any()
    assert labels.metadata["medplib_label_names"] == {1: "chat mask 1", 2: "chat mask 2"}
    colours = labels.metadata["medplib_colours"]
    assert colours[1] != colours[2]
    from qtpy.QtCore import QUrl

    dock.on_chip(QUrl("mask:0:1"))  # the first answer's second mask: a new label, never merged into 1 or 2
    assert (labels.data[4] == 3).sum() == 0 and (labels.data[4] == 2).sum() == 20, "others' voxels are kept"
    assert labels.metadata["medplib_label_names"][3] == "chat mask 2"
    assert "label 3 (chat mask 2)" in dock.transcript.toPlainText()
    labels.data[4, 11, 11:13] = 9  # the user paints over part of mask 2 after it was added
    dock.on_undo()  # label 3 (it wrote nothing new: its voxels were label 2's)
    dock.on_undo()  # mask 2 of the newest answer: back to 0, except the voxels painted since
    assert (labels.data[4] == 2).sum() == 0 and (labels.data[4, 11, 11:13] == 9).all()
    assert 2 not in labels.metadata["medplib_label_names"] and 2 not in labels.metadata["medplib_colours"]
    dock.on_undo()
    dock.on_undo()  # nothing left to undo: says so
    assert "ct chat masks" in viewer.layers, "the layer still holds the user's paint"
    dock.on_copy()
    from qtpy.QtWidgets import QApplication

    assert "Q (slice 4, region none): What is this?" in QApplication.clipboard().text()
    assert "[mask 1]" in QApplication.clipboard().text()
    assert QApplication.clipboard().text().count("Note: the region was not read") == 1
    dock.on_clear()
    assert dock.history.entries("ct") == [] and "about" not in dock.transcript.toPlainText()
    assert dock.region_combo.currentText() == NO_REGION


@pytest.mark.weights
def test_chat_real_runtime_answers_with_the_shipped_glue(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medplib", "brain1")
    viewer.dims.set_point(0, viewer.layers[0].data_to_world((16, 0, 0))[0])
    dock = ChatDock(viewer)
    dock.question.setText("What is shown in this image?")
    dock.on_ask()  # a real worker thread, real model
    qtbot.waitUntil(lambda: bool(dock.history.entries("brain1")), timeout=180_000)
    qtbot.waitUntil(lambda: dock.ask_button.text() == "Ask", timeout=10_000)
    entry = dock.history.entries("brain1")[0]
    assert entry.slice.index == 16 and "vision-language" in entry.routing and entry.answer.strip()
    assert "not grounded in the image yet" not in dock.transcript.toPlainText()  # the glue is trained


class SlowAskRuntime(FakeAskRuntime):
    """Widget unit test only: streams a long answer slowly, and records whether it was stopped."""

    def __init__(self):
        super().__init__()
        self.stopped = None

    def ask(self, request, *, on_token=None):
        import time

        from medplib_runtime.errors import Cancelled

        self.requests.append(request)
        try:
            for i in range(400):
                time.sleep(0.01)
                on_token(f"word{i} ")
        except Cancelled as exc:
            self.stopped = str(exc)
            raise
        return AskResult("the whole answer", (), None, (), {"total": 1.0})


def test_stop_ends_the_answer_and_keeps_nothing(make_napari_viewer, qtbot):
    """Ask turns into Stop while the model answers; a click on it stops generation at the next token,
    nothing reaches the transcript, the question stays, and the next Ask works."""
    from qtpy.QtCore import Qt

    slow = SlowAskRuntime()
    runtime_factory.set_runtime(slow)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((6, 32, 40)).astype(np.float32), name="ct")
    dock = ChatDock(viewer)
    dock.question.setText("Describe the image.")
    qtbot.mouseClick(dock.ask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "answering: word" in dock.status.text(), timeout=30_000)
    assert dock.ask_button.text() == "Stop"
    qtbot.mouseClick(dock.ask_button, Qt.MouseButton.LeftButton)
    assert dock.ask_button.text() == "Ask" and dock.status.text().startswith("stopped")
    qtbot.waitUntil(lambda: slow.stopped is not None, timeout=30_000)
    assert slow.stopped == "answer stopped: nothing was added"
    qtbot.wait(100)  # let any queued tokens and the worker's signals arrive: they must change nothing
    assert dock.history.entries("ct") == [] and dock.status.text().startswith("stopped")
    assert dock.question.text() == "Describe the image."
    runtime_factory.set_runtime(FakeAskRuntime())
    qtbot.mouseClick(dock.ask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(dock.history.entries("ct")), timeout=30_000)
    assert dock.history.entries("ct")[0].answer.startswith("about: Describe the image.")
