"""DICOM-SEG on the paths a user takes: `medplib segment SERIES ... --out x.dcm` as a subprocess, then
`medplib measure SERIES x.dcm`; in napari, open the series, box, Segment, File → Save the labels as .dcm.
Each written file has a provenance sidecar naming the model and the prompt."""

from __future__ import annotations

import json
import locale
import subprocess
import sys

import numpy as np
import pytest

from _dicom_series import write_ct_series
from medplib_runtime.imaging.io import read_labels, read_volume
from medplib_runtime.provenance import read_sidecar

hd = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def series(tmp_path_factory, lung2_paths):
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale: not past this fixture
    try:
        folder = tmp_path_factory.mktemp("dicom") / "ct"
        write_ct_series(lung2_paths[0], folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    label = read_volume(lung2_paths[1]).array
    k = int(np.argmax((label > 0).sum(axis=(1, 2))))
    rows, cols = np.nonzero(label[k])
    return folder, label, k, (rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3)


def medplib(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medplib_runtime.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.weights
def test_cli_segment_writes_a_dicom_seg_that_measure_reads_back(series, tmp_path):
    folder, label, k, box = series
    out = tmp_path / "tumour.dcm"
    run = medplib("segment", str(folder), "--slice", str(k), "--box", ",".join(str(int(v)) for v in box),
                  "--out", str(out))
    assert run.returncode == 0, run.stderr
    seg = hd.seg.segread(str(out))
    assert seg.SeriesInstanceUID != read_volume(folder).metadata["dicom_series"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == read_volume(folder).metadata["dicom_series"]
    mask = read_labels(out, like=read_volume(folder)).array
    truth = label[k] > 0
    got = mask[k] > 0
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) >= 0.8
    assert not mask[np.arange(mask.shape[0]) != k].any(), "only the prompted slice holds the mask"
    assert json.loads(run.stdout)["voxels"] == int(got.sum())
    provenance = read_sidecar(out)
    assert provenance.preset == "medplib-lite" and provenance.weights_id
    assert provenance.prompts[0].index == k and provenance.prompts[0].kind == "box"
    measured = medplib("measure", str(folder), str(out))
    assert measured.returncode == 0, measured.stderr
    assert json.loads(measured.stdout)[0]["voxels"] == int(got.sum())


def test_cli_refuses_a_dicom_seg_for_a_file_that_is_not_dicom_before_loading_the_model(lung2_paths, tmp_path):
    run = medplib("segment", str(lung2_paths[0]), "--slice", "10", "--box", "100,100,140,140",
                  "--out", str(tmp_path / "x.dcm"))
    assert run.returncode == 2 and not (tmp_path / "x.dcm").exists()
    assert run.stderr.count("\n") == 1 and "DICOM-SEG needs an image read from a DICOM series" in run.stderr
    assert ".nii.gz" in run.stderr


@pytest.mark.weights
def test_napari_saves_a_segment_as_dicom_seg_with_provenance(series, tmp_path, make_napari_viewer, qtbot,
                                                             local_runtime):
    from napari_medplib import runtime_factory
    from napari_medplib._widget import MedPLIBWidget

    folder, label, k, box = series
    runtime_factory.set_runtime(local_runtime)
    try:
        viewer = make_napari_viewer()
        [image] = viewer.open(str(folder), plugin="napari-medplib")
        viewer.dims.set_point(0, image.data_to_world((k, 0, 0))[0])
        lo, hi = image.data_to_world((k, box[0], box[1])), image.data_to_world((k, box[2], box[3]))
        viewer.add_shapes(np.array([lo, (lo[0], lo[1], hi[2]), hi, (lo[0], hi[1], lo[2])]), shape_type="rectangle",
                          name="box")
        widget = MedPLIBWidget(viewer)
        assert widget.prompt_combo.currentText() == "box", "the only Shapes layer is the prompt"
        widget.segment_button.click()
        qtbot.waitUntil(lambda: len(widget.writes) == 1, timeout=120_000)
        target = widget.writes[0][0]
        viewer.layers.selection = {target}
        out = tmp_path / "from_napari.dcm"
        viewer.layers.save(str(out), selected=True, plugin="napari-medplib")
    finally:
        runtime_factory._state["runtime"] = None  # the session fixture closes it
    back = read_labels(out, like=read_volume(folder)).array
    assert np.array_equal(back, np.asarray(target.data)), "the SEG holds the layer voxel for voxel"
    provenance = read_sidecar(out)
    assert provenance.preset == "medplib-lite" and provenance.prompts[0].kind == "box"
    assert provenance.prompts[0].index == k
