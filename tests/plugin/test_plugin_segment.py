"""The MedPLIB dock in a real napari: prompt capture in world coordinates, Segment, protected undoable writes."""

from __future__ import annotations

import numpy as np
import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import SegmentResult
from napari_medplib import runtime_factory
from napari_medplib.label_writes import undo_write, write_mask
from napari_medplib.prompt_capture import capture
from napari_medplib._widget import MedPLIBWidget

SCALE = (6.5, 0.78, 0.78)


@pytest.fixture(autouse=True)
def fresh_runtime():
    """Each test starts without a runtime and closes the one it used (no threads left running)."""
    runtime_factory.set_runtime(None)
    yield
    runtime_factory.set_runtime(None)
TRANSLATE = (10.0, -40.0, 25.0)


@pytest.fixture()
def viewer_with_image(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((25, 64, 80)).astype(np.float32), name="img",
                             scale=SCALE, translate=TRANSLATE)
    return viewer, image


def world(z, r, c):
    """Image data index → world coordinates."""
    return (TRANSLATE[0] + z * SCALE[0], TRANSLATE[1] + r * SCALE[1], TRANSLATE[2] + c * SCALE[2])


def test_rectangle_with_other_scale_maps_to_image_voxels(viewer_with_image):
    viewer, image = viewer_with_image
    viewer.dims.set_point(0, world(12, 0, 0)[0])
    # the prompt layer has its own scale: data coords differ from the image's, world coords agree
    shapes = viewer.add_shapes(ndim=3, scale=(6.5, 1.56, 1.56), translate=TRANSLATE, name="box")
    corners = np.array([world(12, 10, 20), world(12, 30, 50)])
    data = (corners - np.array(TRANSLATE)) / np.array((6.5, 1.56, 1.56))
    shapes.add_rectangles(np.array([[data[0][0], data[0][1], data[0][2]], [data[0][0], data[0][1], data[1][2]],
                                    [data[0][0], data[1][1], data[1][2]], [data[0][0], data[1][1], data[0][2]]]))
    got = capture(viewer, image, shapes)
    assert (got.slice.axis, got.slice.index) == (0, 12)
    b = got.prompt.box
    assert (b.r0, b.c0, b.r1, b.c1) == pytest.approx((10, 20, 30, 50), abs=1e-6)


def test_points_polygon_scribble_and_other_slices(viewer_with_image):
    viewer, image = viewer_with_image
    viewer.dims.set_point(0, world(5, 0, 0)[0])
    pts = viewer.add_points(np.array([world(5, 7, 9), world(5, 20, 30), world(8, 1, 1)]), features={"label": [1, 0, 1]})
    pts.scale = (1, 1, 1)  # points given in world units
    got = capture(viewer, image, pts)
    assert [(round(p.row), round(p.col), p.label) for p in got.prompt.points] == [(7, 9, 1), (20, 30, 0)]
    assert got.ignored == 1
    poly = viewer.add_shapes(np.array([world(5, 10, 10), world(5, 10, 30), world(5, 30, 30)]), shape_type="polygon")
    got = capture(viewer, image, poly)
    assert got.prompt.mask.shape == (64, 80) and got.prompt.mask[15, 25] and not got.prompt.mask[29, 11]
    scribble = viewer.add_labels(np.zeros((25, 64, 80), np.uint8), scale=SCALE, translate=TRANSLATE)
    scribble.data[5, 40:44, 50:60] = 1
    assert capture(viewer, image, scribble).prompt.mask.sum() == 40
    viewer.dims.set_point(0, world(6, 0, 0)[0])
    with pytest.raises(InputError, match="nothing painted"):
        capture(viewer, image, scribble)
    with pytest.raises(InputError, match="no shapes .* on the current slice"):
        capture(viewer, image, poly)


def test_non_default_displayed_axis(viewer_with_image):
    viewer, image = viewer_with_image
    viewer.dims.order = (1, 0, 2)  # show (z, x); slice along y
    viewer.dims.set_point(1, world(0, 33, 0)[1])
    shapes = viewer.add_shapes(ndim=3, scale=SCALE, translate=TRANSLATE)
    shapes.add_rectangles(np.array([[2, 33, 5], [2, 33, 40], [9, 33, 40], [9, 33, 5]], float))
    got = capture(viewer, image, shapes)
    assert (got.slice.axis, got.slice.index) == (1, 33)
    assert (got.prompt.box.r0, got.prompt.box.c0, got.prompt.box.r1, got.prompt.box.c1) == pytest.approx((2, 5, 9, 40))


def test_writes_protect_other_labels_and_undo_exactly(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((4, 10, 10), np.uint8))
    labels.data[2, 0:5, 0:5] = 7  # somebody else's label
    before = labels.data.copy()
    from medplib_runtime.schemas import SliceRef

    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 2:8] = 1
    write = write_mask(labels, mask, SliceRef(0, 2), label=3, name="lesion")
    assert (labels.data[2][labels.data[2] == 7].size) == 25, "label 7 untouched"
    assert (labels.data[2] == 3).sum() == 36 - 9 and labels.metadata["medplib_label_names"][3] == "lesion"
    assert np.array_equal(np.delete(labels.data, 2, 0), np.delete(before, 2, 0))
    undo_write(labels, write)
    assert np.array_equal(labels.data, before)
    write_mask(labels, mask, SliceRef(0, 2), label=3, overwrite=True)
    assert (labels.data[2] == 3).sum() == 36


class FakeRuntime:
    """Widget unit tests only: returns the prompt's box as the mask; or fails."""

    def __init__(self, fail=False):
        self.fail = fail

    def set_image(self, image, **kw):
        return "k"

    def segment(self, request):
        if self.fail:
            raise InputError("runtime exploded")
        b = request.prompt.box
        mask = np.zeros((64, 80), np.uint8)
        mask[int(b.r0):int(b.r1) + 1, int(b.c0):int(b.c1) + 1] = 1
        return SegmentResult(mask, 0.9, "box", {"total": 1.0})

    def close(self):
        pass


def test_widget_bad_input_changes_nothing(viewer_with_image, qtbot):
    viewer, image = viewer_with_image
    runtime_factory.set_runtime(FakeRuntime(fail=True))
    widget = MedPLIBWidget(viewer)
    widget.synchronous = True
    n_layers = len(viewer.layers)
    widget.on_segment()  # no prompt layer
    shapes = viewer.add_shapes(ndim=3, scale=SCALE, translate=TRANSLATE, name="box")
    shapes.add_rectangles(np.array([[3, 10, 10], [3, 10, 20], [3, 20, 20], [3, 20, 10]], float))  # slice 3
    viewer.dims.set_point(0, world(12, 0, 0)[0])
    widget.prompt_combo.setCurrentText("box")
    widget.on_segment()  # prompt on another slice
    viewer.dims.set_point(0, world(3, 0, 0)[0])
    widget.on_segment()  # runtime fails
    assert len(viewer.layers) == n_layers + 1, "only the shapes layer was added: no half-made labels layer"
    wrong = viewer.add_labels(np.zeros((5, 5, 5), np.uint8), name="wrong")
    widget.target_combo.setCurrentText("wrong")
    runtime_factory.set_runtime(FakeRuntime())
    widget.on_segment()
    assert not wrong.data.any()


@pytest.mark.weights
def test_segment_lesion_on_brain1_end_to_end(make_napari_viewer, qtbot):
    from medplib_runtime.local import LocalRuntime
    from medplib_runtime.schemas import Box, Prompt, SegmentRequest, SliceRef

    runtime = LocalRuntime()
    runtime_factory.set_runtime(runtime)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medplib", "brain1")
    image, reference = viewer.layers
    # the dock warms the runtime up in the background when it opens; here: load it on another slice
    warm = runtime.set_image(np.asarray(image.data))
    runtime.segment(SegmentRequest(warm, SliceRef(0, 3), Prompt(box=Box(10, 10, 50, 50))))
    truth = reference.data == 1
    k = 16
    viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])
    target = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="target", scale=image.scale,
                               translate=image.translate)
    target.data[10, 0:10, 0:10] = 5  # another label elsewhere
    target.data[k, 100:104, 185:189] = 5  # and one inside the lesion on this slice
    before = target.data.copy()
    r, c = np.nonzero(truth[k])
    lo = image.data_to_world((k, r.min() - 3, c.min() - 3))
    hi = image.data_to_world((k, r.max() + 3, c.max() + 3))
    corners = np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])])  # world units
    shapes = viewer.add_shapes(corners, shape_type="rectangle", name="prompt")
    widget = MedPLIBWidget(viewer)
    widget.prompt_combo.setCurrentText("prompt")
    widget.target_combo.setCurrentText("target")
    widget.image_combo.setCurrentText(image.name)
    widget.label_id.setValue(1)
    # a heartbeat on the Qt main thread while the model runs (an uncached slice: encoder + decoder)
    import time

    from qtpy.QtCore import QTimer

    beats: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start(10)
    widget.on_segment()  # a real worker thread
    assert not widget.segment_button.isEnabled(), "controls disabled during the call"
    qtbot.waitUntil(lambda: bool(widget.writes), timeout=120_000)
    qtbot.waitUntil(lambda: widget.segment_button.isEnabled(), timeout=10_000)
    timer.stop()
    worst_gap_ms = max(np.diff(beats)) * 1e3
    print(f"worst main-thread gap during a real segment call: {worst_gap_ms:.0f} ms over {len(beats)} beats")
    assert worst_gap_ms < 250, "the UI froze during the model call"
    written = target.data == 1
    assert written[k].any() and not np.delete(written, k, 0).any(), "mask on slice k only"
    dice = 2 * (written[k] & truth[k]).sum() / (written[k].sum() + truth[k].sum())
    assert dice >= 0.80
    assert (target.data[k, 100:104, 185:189] == 5).all() and (target.data[10, 0:10, 0:10] == 5).all()
    widget.on_undo()
    assert np.array_equal(target.data, before)
    del shapes


def test_preview_can_be_discarded_or_accepted(viewer_with_image, qtbot):
    viewer, image = viewer_with_image
    runtime_factory.set_runtime(FakeRuntime())
    viewer.dims.set_point(0, world(3, 0, 0)[0])
    shapes = viewer.add_shapes(ndim=3, scale=SCALE, translate=TRANSLATE, name="box")
    shapes.add_rectangles(np.array([[3, 10, 10], [3, 10, 20], [3, 20, 20], [3, 20, 10]], float))
    target = viewer.add_labels(np.zeros((25, 64, 80), np.uint8), name="t", scale=SCALE, translate=TRANSLATE)
    widget = MedPLIBWidget(viewer)
    widget.synchronous = True
    widget.prompt_combo.setCurrentText("box")
    widget.target_combo.setCurrentText("t")
    widget.preview.setChecked(True)
    widget.on_segment()
    assert "MedPLIB preview" in viewer.layers and not target.data.any(), "a preview writes nothing"
    widget.on_discard_preview()
    assert "MedPLIB preview" not in viewer.layers and not target.data.any()
    widget.on_segment()
    previewed = viewer.layers["MedPLIB preview"].data.copy()
    assert previewed[3].sum() > 0
    widget.on_accept_preview()
    assert "MedPLIB preview" not in viewer.layers
    assert np.array_equal(target.data == 1, previewed == 1), "what was previewed is what gets written"
