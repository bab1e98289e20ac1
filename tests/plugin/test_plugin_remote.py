"""The plugin pointed at a real `medplib serve` on another port does what it does locally:
connect from the runtime dock, Segment the brain1 lesion (same mask as in-process), ask in the
chat; and a server killed mid-request writes nothing to any layer."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medplib_runtime.remote import RemoteRuntime
from medplib_runtime.schemas import Box, Prompt, SegmentRequest, SliceRef
from napari_medplib import _workers, runtime_factory
from napari_medplib._chat_widget import ChatDock
from napari_medplib._runtime_widget import RuntimeDock
from napari_medplib._widget import MedPLIBWidget

pytestmark = pytest.mark.weights
K = 16  # a slice through the brain1 lesion


@pytest.fixture(autouse=True)
def fresh_runtime():
    runtime_factory.set_runtime(None)
    yield
    runtime_factory.set_runtime(None)


def _brain1_with_box(viewer):
    viewer.open_sample("napari-medplib", "brain1")
    image, reference = viewer.layers
    viewer.dims.set_point(0, image.data_to_world((K, 0, 0))[0])
    r, c = np.nonzero(reference.data[K] == 1)
    lo, hi = image.data_to_world((K, r.min() - 3, c.min() - 3)), image.data_to_world((K, r.max() + 3, c.max() + 3))
    viewer.add_shapes(np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])]), shape_type="rectangle",
                      name="prompt")
    box = Box(r.min() - 3, c.min() - 3, r.max() + 3, c.max() + 3)
    return image, reference, box


def test_runtime_dock_connects_and_refuses_bad_servers(make_napari_viewer, remote_server, monkeypatch):
    monkeypatch.setattr(_workers, "show_error", lambda message: None)
    dock = RuntimeDock(make_napari_viewer())
    dock.synchronous = True
    assert "local" in dock.status.text()
    dock.url.setText("http://127.0.0.1:9")  # nothing listens there
    dock.on_connect()
    assert "not connected" in dock.status.text() and "cannot reach" in dock.status.text()
    assert runtime_factory.current_runtime() is None, "a failed connect replaced nothing"
    dock.url.setText("ftp://example")
    dock.on_connect()
    assert "must start with http" in dock.status.text()
    dock.url.setText(remote_server.url)
    dock.on_connect()
    runtime = runtime_factory.current_runtime()
    assert isinstance(runtime, RemoteRuntime) and runtime.url == remote_server.url
    assert dock.status.text().startswith(f"remote: {remote_server.url} — medplib-lite on cpu")
    dock.on_use_local()
    assert runtime_factory.current_runtime() is None


def test_segment_and_chat_through_the_server(make_napari_viewer, qtbot, remote_server, local_runtime, monkeypatch):
    """A torch-free install with $MEDPLIB_REMOTE_URL set: the docks use the server without being told."""
    runtime_factory.set_runtime(None)
    monkeypatch.setattr(runtime_factory, "local_model_installed", lambda: False)
    monkeypatch.setenv(runtime_factory.URL_ENV, remote_server.url)
    viewer = make_napari_viewer()
    image, reference, box = _brain1_with_box(viewer)
    widget = MedPLIBWidget(viewer)
    widget.prompt_combo.setCurrentText("prompt")
    widget.image_combo.setCurrentText(image.name)
    widget.on_segment()  # a real worker thread, a real HTTP round trip
    qtbot.waitUntil(lambda: bool(widget.writes), timeout=120_000)
    target = widget.writes[-1][0]
    written = target.data == 1
    assert written[K].any() and not np.delete(written, K, 0).any()
    key = local_runtime.set_image(np.asarray(image.data))
    local = local_runtime.segment(SegmentRequest(key, SliceRef(0, K), Prompt(box=box))).mask
    assert np.array_equal(written[K], local != 0), "the server's mask is the in-process mask"
    truth = reference.data[K] == 1
    assert 2 * (written[K] & truth).sum() / (written[K].sum() + truth.sum()) >= 0.8

    dock = ChatDock(viewer)
    dock.question.setText("What is shown in this image?")
    dock.on_ask()
    qtbot.waitUntil(lambda: bool(dock.history.entries("brain1")), timeout=180_000)
    entry = dock.history.entries("brain1")[0]
    assert entry.slice.index == K and entry.answer.strip()
    assert "not grounded in the image yet" not in dock.transcript.toPlainText()  # the server's glue is trained
    assert len(dock._partial) >= 1, "answer tokens streamed from the server into the dock"
    assert isinstance(runtime_factory.current_runtime(), RemoteRuntime)
    assert runtime_factory.current_runtime().url == remote_server.url


def test_server_killed_mid_segment_writes_nothing(make_napari_viewer, qtbot, monkeypatch):
    from _server import ServerProcess

    errors: list[str] = []
    monkeypatch.setattr(_workers, "show_error", errors.append)
    server = ServerProcess(["--preload", "segment"]).start()
    try:
        runtime_factory.set_runtime(RemoteRuntime(server.url, retries=0))
        viewer = make_napari_viewer()
        image, _, _ = _brain1_with_box(viewer)
        target = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="target", scale=image.scale,
                                   translate=image.translate)
        target.data[K, 0:5, 0:5] = 3
        before = target.data.copy()
        widget = MedPLIBWidget(viewer)
        widget.prompt_combo.setCurrentText("prompt")
        widget.target_combo.setCurrentText("target")
        widget.image_combo.setCurrentText(image.name)
        widget.on_segment()  # the server embeds the slice (~1 s) ...
        time.sleep(0.3)
        server.kill()  # ... and dies
        qtbot.waitUntil(lambda: widget.segment_button.isEnabled(), timeout=60_000)
        assert np.array_equal(target.data, before) and not widget.writes, "nothing half-written"
        assert len(errors) == 1 and "\n" not in errors[0]
        assert "medplib server" in errors[0] and widget.status.text().startswith("failed, nothing written")

        server.start()  # back: the same dock works again
        widget.on_segment()
        qtbot.waitUntil(lambda: bool(widget.writes), timeout=120_000)
        assert (target.data[K] == 1).any() and (target.data[K, 0:5, 0:5] == 3).all()
    finally:
        runtime_factory.set_runtime(None)
        server.stop()
