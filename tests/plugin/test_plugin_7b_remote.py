"""The napari docks on medplib-7b over `--remote`, unchanged: a real `medplib serve --preset medplib-7b` on the
reference checkpoint (built with MedPLIB's own code), connected with the runtime dock's Connect button; a box and
Segment write the served SAM-Med2D mask, and the chat's answer is the in-process one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef
from napari_medplib import runtime_factory
from napari_medplib._chat_widget import ChatDock
from napari_medplib._runtime_widget import RuntimeDock
from napari_medplib._widget import MedPLIBWidget
from tests._server import ServerProcess

WEIGHTS = Path(__file__).parents[1] / "modeling" / "fixtures" / "medplib7b_tiny" / "checkpoint"
K = 12
BOX = Box(60, 60, 180, 200)


@pytest.fixture(autouse=True)
def fresh_runtime():
    runtime_factory.set_runtime(None)
    yield
    runtime_factory.set_runtime(None)


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess(args=["--preset", "medplib-7b", "--weights", str(WEIGHTS), "--allow-cpu"]).start()
    yield proc
    proc.stop()


def test_docks_use_the_served_7b_unchanged(make_napari_viewer, qtbot, server):
    from medplib_runtime.local import LocalRuntime

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medplib", "brain1")
    image = viewer.layers["brain1"]
    viewer.dims.set_point(0, image.data_to_world((K, 0, 0))[0])
    lo, hi = image.data_to_world((K, BOX.r0, BOX.c0)), image.data_to_world((K, BOX.r1, BOX.c1))
    viewer.add_shapes(np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])]), shape_type="rectangle",
                      name="prompt")

    runtime_dock = RuntimeDock(viewer)
    runtime_dock.url.setText(server.url)
    qtbot.mouseClick(runtime_dock.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: runtime_dock.status.text().startswith("remote:"), timeout=60_000)
    assert f"remote: {server.url} — medplib-7b on cpu" in runtime_dock.status.text()

    widget = MedPLIBWidget(viewer)
    widget.prompt_combo.setCurrentText("prompt")
    widget.image_combo.setCurrentText("brain1")
    qtbot.mouseClick(widget.segment_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(widget.writes), timeout=120_000)
    written = widget.writes[-1][0].data == 1

    chat = ChatDock(viewer)
    chat.question.setText("what is in the image ?")
    qtbot.mouseClick(chat.ask_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(chat.history.entries("brain1")), timeout=120_000)
    answer = chat.history.entries("brain1")[0].answer

    local = LocalRuntime("medplib-7b", weights=WEIGHTS, allow_cpu=True)
    try:
        key = local.set_image(np.asarray(image.data))
        mask = local.segment(SegmentRequest(key, SliceRef(0, K), Prompt(box=BOX))).mask
        text = local.ask(AskRequest(key, SliceRef(0, K), "what is in the image ?", max_new_tokens=48)).text
    finally:
        local.close()
    assert written[K].any() and not np.delete(written, K, 0).any()
    assert np.array_equal(written[K], mask != 0), "the dock wrote the served SAM-Med2D mask, as computed in process"
    assert answer == text and answer.strip()
