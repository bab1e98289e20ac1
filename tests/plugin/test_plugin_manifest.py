"""The plugin's manifest, sample data, reader and writer — in a real (headless) napari."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medplib_runtime.imaging.io import read_volume


def test_manifest_is_valid_and_installed():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-medplib")
    assert manifest.display_name == "MedPLIB"
    keys = {s.key for s in manifest.contributions.sample_data}
    assert {"brain1", "lung2"} <= keys
    assert manifest.contributions.readers and manifest.contributions.writers


def test_sample_data_opens_with_scale_from_spacing(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medplib", "brain1")
    image, labels = viewer.layers
    assert image.data.shape == (25, 256, 256)
    np.testing.assert_allclose(image.scale, (6.5, 0.78125, 0.78125), rtol=1e-6)
    np.testing.assert_allclose(labels.scale, image.scale)
    assert labels.data.max() == 1 and labels.data.shape == image.data.shape
    viewer.open_sample("napari-medplib", "lung2")
    ct = viewer.layers["lung2"]
    assert ct.data.shape == (36, 256, 256) and ct.data.min() < -500  # HU kept
    np.testing.assert_allclose(ct.scale, (5.0, 0.6269531, 0.6269531), rtol=1e-6)


def test_reader_and_writer_round_trip_geometry_exactly(make_napari_viewer, tmp_path, brain1_paths):
    viewer = make_napari_viewer()
    layers = viewer.open(str(brain1_paths[0]), plugin="napari-medplib")
    image = layers[0]
    ref = sitk.ReadImage(str(brain1_paths[0]))
    assert image.metadata["medplib_geometry"]["direction"] == list(ref.GetDirection())
    np.testing.assert_allclose(image.translate, tuple(reversed(ref.GetOrigin())))
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), scale=image.scale, translate=image.translate,
                               metadata=dict(image.metadata), name="mine")
    labels.data[12, 100:120, 150:170] = 2
    out = tmp_path / "mine.nrrd"
    labels.save(str(out), plugin="napari-medplib")
    back = read_volume(out)
    assert np.array_equal(back.array, labels.data)
    assert back.spacing == pytest.approx(tuple(reversed(ref.GetSpacing())), abs=0)
    assert back.origin == ref.GetOrigin() and back.direction == ref.GetDirection()


def test_reader_declines_other_files_and_reports_bad_ones(tmp_path):
    from napari_medplib._reader import get_reader

    assert get_reader(str(tmp_path / "notes.txt")) is None
    bad = tmp_path / "broken.nrrd"
    bad.write_text("nope")
    reader = get_reader(str(bad))
    assert reader is not None and reader(str(bad)) == []  # a notification, no layer


def test_mni152_sample_with_tissue_labels(make_napari_viewer):
    pytest.importorskip("nilearn")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medplib", "mni152")
    image, labels = viewer.layers
    assert image.data.shape == (95, 117, 99) and tuple(image.scale) == (2.0, 2.0, 2.0)
    assert set(np.unique(labels.data)) == {0, 1, 2, 3}
    assert labels.metadata["medplib_label_names"][2] == "grey matter"


def test_docks_open_from_the_manifest(make_napari_viewer):
    from napari_medplib import runtime_factory

    viewer = make_napari_viewer()
    try:
        _, segment = viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB segment")
        _, chat = viewer.window.add_plugin_dock_widget("napari-medplib", "MedPLIB chat")
        assert type(segment).__name__ == "MedPLIBWidget" and type(chat).__name__ == "ChatDock"
    finally:
        runtime_factory.set_runtime(None)  # the dock started a background warm-up


def test_the_packages_hold_no_symlinks_so_a_windows_checkout_installs():
    """The manifest, icons and sample data live in napari_medplib/; the top-level names point into it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for package in ("napari_medplib", "medplib_runtime"):
        links = [str(p.relative_to(root)) for p in (root / package).rglob("*") if p.is_symlink()]
        assert links == [], links
    for name in ("napari.yaml", "icons", "sample_data"):
        assert (root / name).resolve() == (root / "napari_medplib" / name).resolve()
