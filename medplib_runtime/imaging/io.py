"""Volume I/O with geometry: NIfTI, NRRD, MHA/MHD and DICOM series via SimpleITK.

Arrays are numpy ``(z, y, x)`` as ``sitk.GetArrayFromImage`` gives them; ``spacing`` is in
the same (array) order, in mm. ``origin`` and ``direction`` are ITK's (x, y, z, LPS; 3×3
row-major). Label volumes are written with exactly the reference geometry, atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

LABEL_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class Volume:
    """A scalar image with its geometry. ``array`` is ``(z, y, x)`` (3D) or ``(y, x)`` (2D)."""

    array: np.ndarray
    spacing: tuple[float, ...]  # array order, mm
    origin: tuple[float, ...]  # ITK order (x, y[, z]), mm, LPS
    direction: tuple[float, ...]  # ITK row-major (ndim × ndim)
    source: str | None = None
    metadata: dict = field(default_factory=dict, compare=False)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def spacing_xyz(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    @property
    def napari_scale(self) -> tuple[float, ...]:
        return self.spacing

    @property
    def napari_translate(self) -> tuple[float, ...]:
        """Origin in array order. With a non-identity direction napari cannot show the rotation;
        the direction stays in ``metadata``/the Volume and is written back unchanged."""
        return tuple(reversed(self.origin))

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def is_constant(self) -> bool:
        finite = self.array[np.isfinite(self.array)] if self.array.dtype.kind == "f" else self.array
        return finite.size == 0 or bool(finite.min() == finite.max())

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array if array is None else array)
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def _from_sitk(image: sitk.Image, source: str, *, allow_2d: bool, metadata: dict | None = None) -> Volume:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{source} has {image.GetNumberOfComponentsPerPixel()} channels per voxel (RGB/vector);"
                         " a single-channel volume is needed")
    dim = image.GetDimension()
    if dim == 4:
        raise InputError(f"{source} is 4D {image.GetSize()}; pick one 3D volume (e.g. one time point) first")
    if dim == 2 and not allow_2d:
        raise InputError(f"{source} is a 2D image; a 3D volume is needed here")
    array = sitk.GetArrayFromImage(image)
    if dim == 3 and array.shape[0] == 1 and allow_2d:
        pass  # a single-slice volume stays 3D: slice 0 along axis 0
    meta = dict(metadata or {})
    for key in image.GetMetaDataKeys():
        if key in ("0008|0060", "modality"):
            meta["modality"] = image.GetMetaData(key).strip()
    return Volume(array=array, spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
                  origin=tuple(float(o) for o in image.GetOrigin()),
                  direction=tuple(float(d) for d in image.GetDirection()), source=source, metadata=meta)


def read_volume(path: str | os.PathLike, *, allow_2d: bool = True) -> Volume:
    """Read a file (NIfTI/NRRD/MHA/...) or a DICOM series folder, keeping geometry."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if p.is_dir():
        return _read_dicom_series(p, allow_2d=allow_2d)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown format"
        raise InputError(f"{p} is not a readable image: {reason[:160]}") from None
    return _from_sitk(image, str(p), allow_2d=allow_2d)


def _read_dicom_series(folder: Path, *, allow_2d: bool) -> Volume:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series:
        raise InputError(f"{folder} holds no DICOM series")
    files_by_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    sid = max(files_by_series, key=lambda s: len(files_by_series[s]))  # the largest series
    reader.SetFileNames(files_by_series[sid])  # GDCM sorts by image position
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{folder}: DICOM series {sid} is not readable: {str(exc).strip()[:160]}") from None
    meta = {"dicom_series": sid, "files": len(files_by_series[sid])}
    if reader.HasMetaDataKey(0, "0008|0060"):
        meta["modality"] = reader.GetMetaData(0, "0008|0060").strip()
    return _from_sitk(image, str(folder), allow_2d=allow_2d, metadata=meta)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any model work) if ``path`` cannot take a label volume."""
    path = Path(path)
    if _suffix(path) not in LABEL_SUFFIXES:
        raise InputError(f"cannot write {path.name}: use one of {', '.join(LABEL_SUFFIXES)}")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"cannot write {path}: folder {path.parent} is not writable")
    return path


def _write_atomic(image: sitk.Image, path: Path) -> Path:
    suffix = _suffix(path)
    check_writable(path)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_labels(labels: np.ndarray, *, like: Volume, path: str | os.PathLike) -> Path:
    """Write a label array with ``like``'s exact geometry; uint8 (or uint16 past 255 labels)."""
    labels = np.asarray(labels)
    if labels.shape != like.array.shape:
        raise InputError(f"labels have shape {labels.shape}, but the image is {like.array.shape}")
    if labels.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise InputError("label ids must lie in 0..65535")
    dtype = np.uint8 if (labels.size == 0 or labels.max() <= 255) else np.uint16
    return _write_atomic(like.to_sitk(labels.astype(dtype)), Path(path))


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write an image volume with its geometry (atomically)."""
    return _write_atomic(volume.to_sitk(), Path(path))
