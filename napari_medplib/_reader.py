"""napari reader: NIfTI / NRRD / MHA / DICOM folder → an image layer (and nothing on failure)."""

from __future__ import annotations

from pathlib import Path

from medplib_runtime.errors import InputError
from medplib_runtime.imaging.io import read_volume

from ._layers import image_layer_data

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm")


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if not (p.is_dir() or p.name.lower().endswith(SUFFIXES)):
        return None
    if p.suffix.lower() == ".dcm":
        p = p.parent  # a DICOM file stands for its series
    return lambda _path: _read(p)


def _read(path: Path) -> list[tuple]:
    try:
        volume = read_volume(path)
    except InputError as exc:
        from napari.utils.notifications import show_error

        show_error(str(exc))
        return []
    return [image_layer_data(volume)]
