"""#36's whole flow in napari on a real DICOM CT series (the lung2 crop written as 36 files): open the
series, draw boxes on three slices and Segment each, Propagate (the tumour in 3D, unsure slices kept
with the layer), erase the top slice as a correction, Propagate again, and save the labels as a
DICOM-SEG that highdicom reads back onto the series voxel for voxel, with its provenance beside it."""

from __future__ import annotations

import locale

import numpy as np
import pytest

from _dicom_series import write_ct_series
from medplib_runtime.imaging.io import read_labels, read_volume
from medplib_runtime.provenance import read_sidecar

pytestmark = pytest.mark.weights
hd = pytest.importorskip("highdicom")


def test_three_boxes_propagate_correct_and_save_a_dicom_seg(tmp_path, lung2_paths, make_napari_viewer, qtbot,
                                                            local_runtime):
    from napari_medplib import runtime_factory
    from napari_medplib._widget import MedPLIBWidget
    from napari_medplib.volume_actions import CONFIDENCE_KEY, UNSURE_KEY

    saved = locale.setlocale(locale.LC_ALL)
    try:
        write_ct_series(lung2_paths[0], tmp_path / "ct")
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    truth = read_volume(lung2_paths[1]).array > 0
    z = np.nonzero(truth.any(axis=(1, 2)))[0]
    picks = sorted({int(z.min() + (z.max() - z.min()) // 4), int((z.min() + z.max()) // 2),
                    int(z.max() - (z.max() - z.min()) // 4)})
    runtime_factory.set_runtime(local_runtime)
    try:
        viewer = make_napari_viewer()
        [image] = viewer.open(str(tmp_path / "ct"), plugin="napari-medplib")
        widget = MedPLIBWidget(viewer)
        for n, k in enumerate(picks, start=1):
            viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])
            r, c = np.nonzero(truth[k])
            lo, hi = image.data_to_world((k, r.min() - 3, c.min() - 3)), image.data_to_world((k, r.max() + 3, c.max() + 3))
            viewer.add_shapes(np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])]),
                              shape_type="rectangle", name=f"box {k}")
            assert widget.prompt_combo.currentText() == f"box {k}", "the newest drawn layer is the prompt"
            widget.segment_button.click()
            qtbot.waitUntil(lambda n=n: len(widget.writes) == n, timeout=120_000)
        target = widget.writes[0][0]
        widget.propagate_button.click()
        qtbot.waitUntil(lambda: len(widget.writes) == 4, timeout=600_000)
        got = np.asarray(target.data) == 1
        assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) >= 0.85
        assert set(target.metadata[CONFIDENCE_KEY][1]) >= set(picks) and UNSURE_KEY in target.metadata
        top = int(np.nonzero(got.any(axis=(1, 2)))[0].max())
        target.data[top][target.data[top] == 1] = 0  # the radiologist erases a slice the walk got wrong
        widget.propagate_button.click()
        qtbot.waitUntil(lambda: len(widget.writes) == 5, timeout=600_000)
        assert not (np.asarray(target.data)[top:] == 1).any()
        viewer.layers.selection = {target}
        out = tmp_path / "tumour.dcm"
        viewer.layers.save(str(out), selected=True, plugin="napari-medplib")
    finally:
        runtime_factory._state["runtime"] = None  # the session fixture closes it
    seg = hd.seg.segread(str(out))
    series = read_volume(tmp_path / "ct")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.metadata["dicom_series"]
    assert np.array_equal(read_labels(out, like=series).array, np.asarray(target.data))
    provenance = read_sidecar(out)
    assert [p.index for p in provenance.prompts[:3]] == picks and provenance.preset == "medplib-lite"
