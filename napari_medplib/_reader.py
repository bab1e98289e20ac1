"""napari reader: NIfTI / NRRD / MHA / DICOM folder, and 2D PNG/JPEG/TIFF/BMP/GIF pictures → an image layer
(an RGB layer, ``rgb=True``, for a colour picture), and nothing on failure."""

from __future__ import annotations

from pathlib import Path

from medplib_runtime.errors import InputError
from medplib_runtime.imaging.io import read_volume
from medplib_runtime.imaging.pictures import PICTURE_SUFFIXES

from ._layers import image_layer_data

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm") + PICTURE_SUFFIXES


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not (p.is_dir() or p.name.lower().endswith(SUFFIXES)):
        return None
    if p.suffix.lower() == ".dcm" and not _single_colour_dicom(p):
        p = p.parent  # a DICOM file stands for its series
    return lambda _path: _read(p)


def _single_colour_dicom(p: Path) -> bool:
    """A colour DICOM (endoscopy, dermoscopy, a secondary capture) is an image on its own, not a series' slice."""
    try:
        import pydicom

        return pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SamplesPerPixel"]).get(
            "SamplesPerPixel", 1) == 3
    except Exception:  # noqa: BLE001 — not readable as DICOM here: read_volume says why, on the series path
        return False


def _read(path: Path) -> list[tuple]:
    from napari.utils.notifications import show_error, show_warning

    try:
        volume = read_volume(path)
    except InputError as exc:
        show_error(str(exc))
        return []
    for note in volume.metadata.get("notes", ()):
        show_warning(f"{path.name}: {note}")  # e.g. an alpha channel dropped: the user should know
    data, kwargs, kind = image_layer_data(volume)
    if volume.is_rgb:
        kwargs = {k: v for k, v in kwargs.items() if k != "colormap"}  # colour: shown as it is
        kwargs["rgb"] = True
    return [(data, kwargs, kind)]
