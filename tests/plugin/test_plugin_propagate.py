"""In napari: draw one box, Segment, Propagate → the structure in 3D as one undoable write; Cancel
leaves the layer unchanged; Measure stores mL/mm in the layer and says them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medplib import _workers, runtime_factory
from napari_medplib._widget import MedPLIBWidget
from napari_medplib.volume_actions import MEASUREMENTS_KEY

pytestmark = pytest.mark.weights
SCALE = (2.0, 0.8, 0.8)


@pytest.fixture(autouse=True)
def shared_runtime(local_runtime):
    runtime_factory.set_runtime(local_runtime)
    yield
    runtime_factory._state["runtime"] = None  # the session fixture closes it


def _phantom():
    z, y, x = np.ogrid[:21, :96, :112]
    inside = ((z - 10) / 7.5) ** 2 + ((y - 48) / 22) ** 2 + ((x - 60) / 30) ** 2 <= 1
    volume = np.random.default_rng(3).normal(100, 10, inside.shape).astype(np.float32)
    volume[inside] += 300
    return volume, inside


def _setup(make_napari_viewer, qtbot):
    """The user's way: a box on the middle slice, Segment (label 1 into 'target'), then Propagate."""
    viewer = make_napari_viewer()
    volume, truth = _phantom()
    image = viewer.add_image(volume, name="phantom", scale=SCALE)
    target = viewer.add_labels(np.zeros(volume.shape, np.uint8), name="target", scale=SCALE)
    target.data[0, 0:4, 0:4] = 7  # somebody else's label
    viewer.dims.set_point(0, image.data_to_world((10, 0, 0))[0])
    r, c = np.nonzero(truth[10])
    lo, hi = image.data_to_world((10, r.min() - 3, c.min() - 3)), image.data_to_world((10, r.max() + 3, c.max() + 3))
    viewer.add_shapes(np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])]), shape_type="rectangle",
                      name="prompt")
    widget = MedPLIBWidget(viewer)
    widget.image_combo.setCurrentText("phantom")
    widget.prompt_combo.setCurrentText("prompt")
    widget.target_combo.setCurrentText("target")
    widget.label_id.setValue(1)
    widget.on_segment()
    qtbot.waitUntil(lambda: len(widget.writes) == 1, timeout=120_000)
    qtbot.waitUntil(lambda: widget.propagate_button.isEnabled(), timeout=10_000)
    return viewer, widget, target, truth


def test_propagate_is_one_undoable_write_and_measure(make_napari_viewer, qtbot):
    viewer, widget, target, truth = _setup(make_napari_viewer, qtbot)
    before = target.data.copy()
    widget.on_propagate()  # a real worker thread, the real model
    qtbot.waitUntil(lambda: len(widget.writes) == 2, timeout=180_000)
    got = target.data == 1
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) >= 0.9
    assert (target.data[0, 0:4, 0:4] == 7).all(), "other labels untouched"
    assert "propagated label 1 over slices" in widget.status.text()
    widget.on_measure()
    m = target.metadata[MEASUREMENTS_KEY][1]
    assert m["voxels"] == int(got.sum()) and m["volume_ml"] == pytest.approx(got.sum() * 2.0 * 0.8 * 0.8 / 1000)
    assert "mL" in widget.status.text()
    widget.on_undo()
    assert np.array_equal(target.data, before), "one Undo restores the layer exactly"
    assert (target.data == 1).sum() == (before == 1).sum() > 0, "the Segment write is still there"


def test_cancel_leaves_the_layer_unchanged(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.setattr(_workers, "show_error", lambda message: None)
    viewer, widget, target, _ = _setup(make_napari_viewer, qtbot)
    before = target.data.copy()
    widget.on_propagate()
    qtbot.waitUntil(lambda: "propagating" in widget.status.text(), timeout=120_000)
    widget.on_cancel()
    qtbot.waitUntil(lambda: widget.status.text() == "cancelled: nothing was written", timeout=60_000)
    assert np.array_equal(target.data, before) and len(widget.writes) == 1


def test_bad_seeds_are_refused(make_napari_viewer, qtbot, monkeypatch):
    errors: list[str] = []
    import napari_medplib._widget as widget_module

    monkeypatch.setattr(widget_module, "show_error", errors.append)
    viewer, widget, target, _ = _setup(make_napari_viewer, qtbot)
    widget.label_id.setValue(2)  # nothing of label 2 on this slice
    widget.on_propagate()
    widget.target_combo.setCurrentIndex(0)  # "(new labels layer)": nothing to seed from
    widget.on_propagate()
    assert "label 2 is empty in 'target'" in errors[0] and "target labels layer" in errors[1]
    assert len(widget.writes) == 1


def test_chat_answers_the_volume_by_measuring(make_napari_viewer, qtbot):
    from medplib_runtime.imaging.io import read_volume
    from medplib_runtime.volume.measure import measure_labels
    from napari_medplib._chat_widget import ChatDock

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medplib", "brain1")
    image, labels = viewer.layers
    viewer.dims.set_point(0, image.data_to_world((16, 0, 0))[0])
    dock = ChatDock(viewer)
    dock.measure_combo.setCurrentText(labels.name)
    dock.question.setText("What is the volume of the lesion?")
    dock.on_ask()  # the real model answers; the number is measured
    qtbot.waitUntil(lambda: bool(dock.history.entries(image.name)), timeout=180_000)
    ref_image = read_volume("sample_data/brain1_image.nrrd")
    (m,) = measure_labels(read_volume("sample_data/brain1_label.nrrd").array, spacing=ref_image.spacing,
                          origin=ref_image.origin, direction=ref_image.direction)
    entry = dock.history.entries(image.name)[0]
    assert f"{m.volume_ml:.2f} mL ({m.voxels} voxels)" in entry.measured
    assert f"labels layer {labels.name!r}" in entry.measured and "Measured" in dock.transcript.toPlainText()
    assert dock.history.turns(image.name)[0].answer.startswith("Volume of label 1:")


def _box_on(viewer, image, truth, k: int, name: str):
    r, c = np.nonzero(truth[k])
    lo, hi = image.data_to_world((k, r.min() - 3, c.min() - 3)), image.data_to_world((k, r.max() + 3, c.max() + 3))
    return viewer.add_shapes(np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])]), shape_type="rectangle",
                             name=name)


def test_seeds_on_three_slices_then_a_correction_redoes_only_what_lies_beyond(make_napari_viewer, qtbot):
    """Segment on slices 5, 10 and 15 (three boxes), Propagate: the label holds every seed as drawn and the
    slices between and beyond; the per-slice confidence is kept with the layer. Then a correction on
    the top slice (erased: the structure ends below it) + Propagate redoes only the slices past 17, and
    one Undo takes that second Propagate back (the user's own erase stays)."""
    viewer, widget, target, truth = _setup(make_napari_viewer, qtbot)  # slice 10 segmented
    image = viewer.layers["phantom"]
    for k in (5, 15):
        viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])
        widget.prompt_combo.setCurrentText(_box_on(viewer, image, truth, k, f"box {k}").name)
        widget.on_segment()
        qtbot.waitUntil(lambda: len(widget.writes) == (2 if k == 5 else 3), timeout=120_000)
    seeds = {k: (target.data[k] == 1).copy() for k in (5, 10, 15)}
    widget.on_propagate()
    qtbot.waitUntil(lambda: len(widget.writes) == 4, timeout=300_000)
    got = target.data == 1
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) >= 0.9
    assert all(np.array_equal(got[k], seeds[k]) for k in seeds), "seeds kept as drawn"
    confidence = target.metadata["medplib_slice_confidence"][1]
    assert confidence[5] == confidence[10] == confidence[15] == 1.0 and set(confidence) == set(np.nonzero(got.any(axis=(1, 2)))[0])
    first = target.data.copy()
    top = int(np.nonzero(got.any(axis=(1, 2)))[0].max())
    target.data[top][target.data[top] == 1] = 0  # the user erases the top slice: the structure ends below it
    widget.on_propagate()
    qtbot.waitUntil(lambda: len(widget.writes) == 5 or "not propagated" in widget.status.text()
                    or "failed" in widget.status.text(), timeout=300_000)
    assert len(widget.writes) == 5, widget.status.text()
    assert not (target.data[top:] == 1).any(), "nothing of label 1 from the corrected slice up"
    assert np.array_equal(target.data[:top], first[:top]), "the slices below the correction untouched"
    erased = first.copy()
    erased[top][erased[top] == 1] = 0
    widget.on_undo()
    assert np.array_equal(target.data, erased), "one Undo: the second Propagate gone, the user's erase kept"
