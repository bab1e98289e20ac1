"""RGB pictures in napari: the reader gives an RGB layer; the segment and chat docks take it and write Labels of
the picture's (h, w). Real image: skimage's immunohistochemistry photograph (ihc.png, 512×512 RGB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medplib_runtime.schemas import AskResult, RuntimeInfo, SegmentResult
from napari_medplib import runtime_factory
from napari_medplib._chat_widget import ChatDock
from napari_medplib._reader import get_reader
from napari_medplib._widget import MedPLIBWidget
from napari_medplib.prompt_capture import capture, grid_shape

IHC = Path(__import__("skimage").__file__).parent / "data" / "ihc.png"
BOX = (150.0, 180.0, 300.0, 330.0)  # r0, c0, r1, c1 in pixels


@pytest.fixture(autouse=True)
def fresh_runtime():
    runtime_factory.set_runtime(None)
    yield
    runtime_factory.set_runtime(None)


class RecordingRuntime:
    """Widget test only: records the image it was given; the mask is the prompt's box."""

    def __init__(self):
        self.images = []

    def set_image(self, image, **kw):
        self.images.append(np.asarray(image))
        return "k"

    def _box_mask(self, box):
        mask = np.zeros(self.images[-1].shape[:2], np.uint8)
        mask[int(box.r0):int(box.r1) + 1, int(box.c0):int(box.c1) + 1] = 1
        return mask

    def segment(self, request):
        return SegmentResult(self._box_mask(request.prompt.box), 0.9, "box", {"total": 1.0})

    def ask(self, request, *, on_token=None):
        return AskResult("It is <SEG>.", (self._box_mask(request.region.box),), None, (), {"total": 1.0})

    def info(self):
        return RuntimeInfo(preset="medplib-lite", device="cpu", parts=(), versions={}, transport="fake")

    def close(self):
        pass


def _rgb_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(IHC), plugin="napari-medplib")
    image = layers[0]
    shapes = viewer.add_shapes(np.array([[BOX[0], BOX[1]], [BOX[0], BOX[3]], [BOX[2], BOX[3]], [BOX[2], BOX[1]]]),
                               shape_type="rectangle", name="box")
    return viewer, image, shapes


def test_reader_gives_an_rgb_layer(tmp_path):
    data, kwargs, kind = get_reader(str(IHC))(str(IHC))[0]
    assert kind == "image" and kwargs["rgb"] is True and "colormap" not in kwargs
    assert data.shape == (512, 512, 3) and len(kwargs["scale"]) == 2
    assert kwargs["metadata"]["medplib_geometry"]["shape"] == [512, 512]
    grey = np.repeat(np.asarray(Image.open(IHC).convert("L"))[..., None], 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey_as_rgb.png")
    data, kwargs, _ = get_reader(str(tmp_path / "grey_as_rgb.png"))(str(tmp_path / "grey_as_rgb.png"))[0]
    assert data.shape == (512, 512) and "rgb" not in kwargs and kwargs["colormap"] == "gray"
    from pydicom.data import get_testdata_file

    dcm = get_testdata_file("SC_rgb_rle.dcm")  # a colour DICOM is an image on its own, not a series' slice
    data, kwargs, _ = get_reader(dcm)(dcm)[0]
    assert data.shape == (100, 100, 3) and kwargs["rgb"] is True
    Image.fromarray(np.zeros((1, 40), np.uint8)).save(tmp_path / "line.png")
    assert get_reader(str(tmp_path / "line.png"))(str(tmp_path / "line.png")) == []  # a notification, no layer


def test_segment_dock_on_an_rgb_layer_writes_yx_labels(make_napari_viewer):
    viewer, image, shapes = _rgb_viewer(make_napari_viewer)
    assert image.rgb and grid_shape(image) == (512, 512)
    got = capture(viewer, image, shapes)
    assert (got.slice.axis, got.slice.index) == (0, 0)
    assert (got.prompt.box.r0, got.prompt.box.c0, got.prompt.box.r1, got.prompt.box.c1) == pytest.approx(BOX)
    scribble = viewer.add_labels(np.zeros((512, 512), np.uint8), name="scribble")
    scribble.data[200:210, 200:220] = 1
    assert capture(viewer, image, scribble).prompt.mask.sum() == 200
    fake = RecordingRuntime()
    runtime_factory.set_runtime(fake)
    widget = MedPLIBWidget(viewer)
    widget.synchronous = True
    widget.image_combo.setCurrentText(image.name)
    widget.prompt_combo.setCurrentText("box")
    widget.on_segment()
    assert fake.images[-1].shape == (512, 512, 3)  # the colour pixels went to the runtime
    target = viewer.layers[f"{image.name} MedPLIB"]
    assert target.data.shape == (512, 512) and target.data[200, 200] == 1 and target.data.sum() == 151 * 151
    np.testing.assert_allclose(target.scale, image.scale)


def test_chat_dock_on_an_rgb_layer_adds_yx_masks(make_napari_viewer):
    viewer, image, _ = _rgb_viewer(make_napari_viewer)
    runtime_factory.set_runtime(RecordingRuntime())
    dock = ChatDock(viewer)
    dock.synchronous = True
    dock.image_combo.setCurrentText(image.name)
    dock.region_combo.setCurrentText("box")
    dock.question.setText("What is in <region>?")
    dock.on_ask()
    dock.on_add_masks()
    labels = next(layer for layer in viewer.layers if layer.name.endswith("chat masks"))
    assert labels.data.shape == (512, 512) and (labels.data == 1).sum() == 151 * 151


@pytest.mark.weights
def test_real_segment_on_an_rgb_picture(make_napari_viewer, qtbot):
    from medplib_runtime.local import LocalRuntime

    runtime = LocalRuntime()
    runtime_factory.set_runtime(runtime)
    viewer, image, _ = _rgb_viewer(make_napari_viewer)
    widget = MedPLIBWidget(viewer)
    widget.synchronous = True
    widget.image_combo.setCurrentText(image.name)
    widget.prompt_combo.setCurrentText("box")
    widget.on_segment()
    target = viewer.layers[f"{image.name} MedPLIB"]
    inside = np.zeros((512, 512), bool)
    inside[150:301, 180:331] = True
    assert target.data.shape == (512, 512) and target.data.any()
    assert not (target.data.astype(bool) & ~inside).any(), "the mask stays in the box"
