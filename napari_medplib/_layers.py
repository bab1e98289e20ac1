"""Volume ⇄ napari layer data, keeping the file's geometry in layer metadata (no Qt here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medplib_runtime.imaging.io import Volume

GEOMETRY_KEY = "medplib_geometry"


# what a DICOM-SEG written from a layer needs of the series it was read from (its files and UIDs)
SERIES_KEYS = ("format", "dicom_series", "dicom_files", "dicom_sop_uids")


def geometry_metadata(volume: Volume) -> dict:
    series = {key: volume.metadata[key] for key in SERIES_KEYS if key in volume.metadata}
    return {GEOMETRY_KEY: {"spacing": list(volume.spacing), "origin": list(volume.origin),
                           "direction": list(volume.direction), "source": volume.source,
                           "shape": list(volume.shape), "series": series},
            **{key: volume.metadata[key] for key in ("modality", "body_part") if key in volume.metadata}}


def image_layer_data(volume: Volume, *, name: str | None = None) -> tuple:
    """A napari LayerDataTuple for an image volume (scale from spacing, translate from origin)."""
    name = name or Path(volume.source or "image").name.split(".")[0]
    kwargs = {"name": name, "scale": volume.napari_scale, "translate": volume.napari_translate,
              "metadata": geometry_metadata(volume), "colormap": "gray"}
    return (volume.array, kwargs, "image")


def labels_layer_data(volume: Volume, *, name: str, reference: bool = False) -> tuple:
    """A napari LayerDataTuple for a label volume; a ``reference`` (ground truth) is drawn as a cyan
    outline and marked so the docks never read it as a prompt nor write into it."""
    from .colours import reference_style
    from .layer_roles import REFERENCE, with_role

    meta = geometry_metadata(volume)
    kwargs = {"name": name, "scale": volume.napari_scale, "translate": volume.napari_translate,
              "metadata": with_role(meta, REFERENCE) if reference else meta,
              **(reference_style() if reference else {"opacity": 0.5})}
    return (np.asarray(volume.array).astype(np.uint16 if volume.array.max() > 255 else np.uint8), kwargs, "labels")


def volume_like(data: np.ndarray, meta: dict, scale, translate) -> Volume:
    """The geometry a layer should be written with: the file's, or else its scale/translate."""
    geo = (meta or {}).get(GEOMETRY_KEY)
    if geo and tuple(geo["shape"]) == tuple(np.shape(data)):
        return Volume(np.asarray(data), tuple(geo["spacing"]), tuple(geo["origin"]), tuple(geo["direction"]),
                      source=geo.get("source"), metadata=dict(geo.get("series", {})))
    ndim = np.ndim(data)
    identity = tuple(float(i == j) for i in range(ndim) for j in range(ndim))
    return Volume(np.asarray(data), tuple(float(s) for s in scale), tuple(float(t) for t in reversed(translate)),
                  identity)
