"""Volume I/O with exact geometry: NIfTI, NRRD, MHA/MHD and DICOM series (SimpleITK; nibabel fallback).

Arrays are numpy ``(z, y, x)`` (3D) or ``(y, x)`` (2D), as ``sitk.GetArrayFromImage`` gives them;
``spacing`` is in the same array order, in mm. ``origin`` and ``direction`` are ITK's: origin
``(x, y[, z])`` LPS mm, direction row-major ``ndim × ndim`` (3×3 for volumes, 2×2 for 2D images).
Writers put back exactly this geometry, atomically (temp file in the target folder + ``os.replace``).
Files ITK would read wrongly without a word (truncated NIfTI, NaN or zero spacing, a DICOM series with
a file left out or two slices at one position) are InputErrors: see integrity.py.

Precision of a round trip (measured in tests/runtime/test_imaging_io.py): MHA stores spacing, origin and
direction as separate full-precision numbers → bit-identical. NRRD stores spacing × direction
("space directions") → bit-identical for axis-aligned/flipped volumes, ~1e-13 for rotated ones,
and bit-identical from the second trip on. NIfTI stores float32 (pixdim, quaternion, sform)
→ ~1e-6 relative; stable (identical numbers) from the third trip on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .atomic import write_then_rename
from .geometry import identity_direction, is_identity, napari_affine, orthonormalize
from .integrity import check_dicom_series, check_nifti, check_nrrd, native_stderr, truncation_reason

if TYPE_CHECKING:
    from ..provenance import Provenance

# ITK prints its warnings (non-uniform DICOM spacing, odd NIfTI sforms) to stderr ahead of our own
# one-line error; the ones that matter are checked in integrity.py and raised as InputErrors instead
sitk.ProcessObject_SetGlobalWarningDisplay(False)

WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")  # single-file formats only: .mhd needs a .raw beside it
# labels may also go to a DICOM Segmentation (.dcm) of the DICOM series they were drawn on: dicom_seg.py
LABEL_SUFFIXES = WRITE_SUFFIXES + (".dcm", ".png")  # .png: the labels of a 2D image (pictures.py; no geometry)
_CHANNEL_NAMES = {2: "2 channels (complex/vector)", 3: "3 channels (RGB)", 4: "4 channels (RGBA)"}


@dataclass(frozen=True, eq=False)  # eq=False: comparing/hashing numpy arrays has no single answer
class Volume:
    """An image with its geometry. ``array`` is ``(z, y, x)`` (3D) or ``(y, x)`` (2D) grey, or ``(y, x, 3)``
    for a 2D RGB picture (:attr:`is_rgb`: the channels are the one axis the geometry does not cover).

    :attr:`shape` and :attr:`ndim` are the pixel grid's (an RGB picture's ``(y, x)``, 2): a label volume for
    this image has :attr:`shape`. RGB is 2D only (pictures and single-frame DICOM); a 2D image is one slice
    (axis 0, index 0). ``metadata["spacing_known"]`` False (pictures): the spacing is 1 per pixel, not mm,
    so sizes are in px (:attr:`unit`). ``metadata["notes"]``: what reading changed (alpha dropped, ...).

    Non-identity ``direction`` (rotated or flipped scans): napari's ``scale``/``translate`` cannot
    express a rotation, so :attr:`napari_translate` is simply the origin in array order (exact at
    voxel 0, the rest is shown axis-aligned); the direction is kept here, written back unchanged,
    and :attr:`napari_affine` gives the exact mapping for callers that want it.
    """

    array: np.ndarray
    spacing: tuple[float, ...]  # array order, mm
    origin: tuple[float, ...]  # ITK order (x, y[, z]), LPS mm
    direction: tuple[float, ...]  # ITK row-major (ndim × ndim)
    source: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # an RGB picture: (y, x, 3) under 2D geometry (the channel axis has no spacing)
        rgb = self.array.ndim == 3 and self.array.shape[-1] == 3 and len(self.spacing) == 2
        n = 2 if rgb else self.array.ndim
        if n not in (2, 3):
            raise InputError(f"a Volume is 2D or 3D, got an array of shape {self.array.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = tuple(float(d) for d in self.direction)
        if len(spacing) != n or len(origin) != n or len(direction) != n * n:
            raise InputError(f"geometry does not fit a {n}D array: spacing {len(spacing)}, origin {len(origin)},"
                             f" direction {len(direction)} values (want {n}, {n}, {n * n})")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"spacing must be positive, got {spacing}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    @classmethod
    def from_array(cls, array: np.ndarray, *, spacing: tuple[float, ...] | None = None,
                   origin: tuple[float, ...] | None = None, direction: tuple[float, ...] | None = None,
                   source: str | None = None, metadata: dict | None = None, rgb: bool = False) -> "Volume":
        """An array with default geometry: 1 mm spacing, origin 0, identity direction (``rgb``: a ``(y, x, 3)``
        picture, 2D geometry)."""
        array = np.asarray(array)
        n = 2 if rgb else array.ndim
        return cls(array, spacing if spacing is not None else (1.0,) * n, origin if origin is not None else (0.0,) * n,
                   direction if direction is not None else identity_direction(n), source, dict(metadata or {}))

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, another array of the same grid (e.g. a label volume; for an RGB image, ``(y, x)``)."""
        array = np.asarray(array)
        if array.shape not in (self.shape, self.shape + (3,)):
            raise InputError(f"array has shape {array.shape}, but the image is {self.array.shape}")
        return replace(self, array=array)

    @property
    def ndim(self) -> int:
        """Dimensions of the pixel grid (2 for an RGB picture)."""
        return len(self.spacing)

    @property
    def shape(self) -> tuple[int, ...]:
        """The pixel grid (an RGB picture's ``(y, x)``, without its channels)."""
        return self.array.shape[:self.ndim]

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == self.ndim + 1

    @property
    def spacing_known(self) -> bool:
        """False for pictures (PNG/JPEG/...): their spacing is 1 per pixel, not a size in mm."""
        return bool(self.metadata.get("spacing_known", True))

    @property
    def unit(self) -> str:
        """What one spacing step is: "mm", or "px" when the file does not say."""
        return "mm" if self.spacing_known else "px"

    @property
    def spacing_xyz(self) -> tuple[float, ...]:
        """Spacing in ITK order (x, y[, z])."""
        return tuple(reversed(self.spacing))

    @property
    def napari_scale(self) -> tuple[float, ...]:
        return self.spacing

    @property
    def napari_translate(self) -> tuple[float, ...]:
        """Origin in array order (z, y, x); exact when :attr:`is_axis_aligned` (see class doc)."""
        return tuple(reversed(self.origin))

    @property
    def napari_affine(self) -> np.ndarray:
        """Exact ``(ndim+1)²`` index (z, y, x) → world (z, y, x) affine, rotation included."""
        return napari_affine(spacing=self.spacing, origin=self.origin, direction=self.direction)

    @property
    def is_axis_aligned(self) -> bool:
        return is_identity(self.direction)

    @property
    def voxel_volume_ml(self) -> float:
        """One voxel's volume in ml (mm³ / 1000). 3D only."""
        if self.ndim != 3:
            raise InputError("a 2D image has no voxel volume (no slice thickness)")
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def is_constant(self) -> bool:
        """True when every finite value is the same (or there is none): nothing to segment."""
        arr = self.array
        if arr.dtype.kind in "fc":
            arr = arr[np.isfinite(arr)]
        return arr.size == 0 or bool(arr.min() == arr.max())

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of ``array`` (default: this volume's) with this geometry (RGB: a vector image)."""
        arr = np.asarray(self.array if array is None else array)
        if arr.shape not in (self.shape, self.shape + (3,)):
            raise InputError(f"array has shape {arr.shape}, but the image is {self.shape}")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        elif arr.dtype == np.float16:  # no float16 pixel type in ITK
            arr = arr.astype(np.float32)
        image = sitk.GetImageFromArray(arr, isVector=arr.ndim == self.ndim + 1)
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


# ----------------------------------------------------------------------------------------- reading

def read_volume(path: str | os.PathLike, *, allow_2d: bool = True) -> Volume:
    """Read an image file (NIfTI/NRRD/MHA/MHD/...) or a DICOM series folder, keeping geometry.

    2D files give a ``(y, x)`` Volume when ``allow_2d`` (else InputError). A 4D file with one time
    point is reduced to 3D; other 4D files and multi-channel (vector) volumes are InputErrors.
    Pictures (PNG/JPEG/TIFF/BMP/GIF: pictures.py) and single-frame DICOM may be RGB: a ``(y, x, 3)``
    Volume (see :class:`Volume`). Constant or all-NaN images are *not* errors here: see :attr:`Volume.is_constant`.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if p.is_dir():
        return _read_dicom_series(p, allow_2d=allow_2d)
    from .pictures import PICTURE_SUFFIXES, read_picture

    picture = read_picture(p) if _suffix(p) in PICTURE_SUFFIXES else None  # None: a TIFF z-stack, ITK's
    if picture is not None:
        if not allow_2d:
            raise InputError(f"{p} is a 2D image; a 3D volume is needed here")
        return Volume.from_array(picture.array, rgb=picture.is_rgb, source=picture.source, metadata=picture.metadata)
    from .dicom_seg import is_dicom_seg

    if is_dicom_seg(p):  # ITK would read its bit-packed frames as an image with a made-up geometry
        raise InputError(f"{p} is a DICOM Segmentation, not an image: it is read as the labels of the DICOM "
                         f"series it was drawn on")
    if _is_nifti(p):
        check_nifti(p)  # a truncated NIfTI reads without an error: its missing slices would be zeros
    elif _suffix(p) in (".nrrd", ".nhdr"):
        check_nrrd(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    _, failed, said = _itk(reader.ReadImageInformation)  # header only: reject RGB/4D before loading pixels
    if failed is not None:
        if _is_nifti(p):
            return _read_nifti_nibabel(p, allow_2d=allow_2d, sitk_error=_reason(failed, said))
        raise InputError(f"{p} is not a readable image: {_reason(failed, said)}") from None
    filter_key = "ITK_InputFilterName"  # which ITK ImageIO read it
    meta = {"format": reader.GetMetaData(filter_key) if reader.HasMetaDataKey(filter_key) else _suffix(p)}
    is_dicom = reader.HasMetaDataKey("0008|0016") or _suffix(p) == ".dcm"  # SOP Class UID: GDCM read it
    colour_dicom = reader.GetNumberOfComponents() == 3 and is_dicom
    if not colour_dicom:
        _check_header(str(p), reader.GetNumberOfComponents(), reader.GetDimension(), reader.GetSize(), allow_2d)
    image, failed, said = _itk(reader.Execute)
    if failed is not None:
        raise InputError(f"{p} is not a readable image: {_reason(failed, said)}") from None
    if colour_dicom:  # endoscopy, dermoscopy, secondary captures
        return _rgb_dicom(image, str(p), meta, lambda tag: reader.HasMetaDataKey(tag), allow_2d)
    for key in reader.GetMetaDataKeys():  # NRRD/MHA headers may carry a free-form modality field
        if key.lower() == "modality":
            meta["modality"] = reader.GetMetaData(key).strip()
    return _from_sitk(image, str(p), metadata=meta)


def _itk(call):
    """``call()`` with fd 2 collected (MetaIO and niftilib write their reasons there, not into the exception):
    ``(result, None, said)`` or ``(None, error, said)``. Output collected around a call that worked (another
    thread's, say) is written back, so nothing is lost."""
    with native_stderr() as said:
        try:
            result, failed = call(), None
        except RuntimeError as exc:
            result, failed = None, exc
    if failed is None and any(said) and sys.stderr is not None:
        sys.stderr.write("".join(said))
    return result, failed, said


def _reason(exc: BaseException, said: list[str] | None = None) -> str:
    """ITK's last meaningful line, short enough for a one-line message; "truncated: ..." when ITK
    (in the exception, or on fd 2: ``said``) says the voxel data ended early."""
    text = str(exc)
    truncated = truncation_reason(text, *(said or ()))
    if truncated:
        return truncated
    if "Refusing to change spacing" in text:  # ITK's words for a zero, NaN or unparsable spacing in the header
        return "its header gives a zero or unreadable voxel spacing"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown format")[:160]


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith((".nii", ".nii.gz"))


def _check_header(source: str, components: int, dim: int, size: tuple[int, ...], allow_2d: bool) -> None:
    if components != 1:
        what = _CHANNEL_NAMES.get(components, f"{components} channels (vector)")
        raise InputError(f"{source} has {what} per voxel; colour is read from 2D pictures (PNG/JPEG/TIFF) and "
                         f"single-frame DICOM, a volume must be single-channel (grayscale)")
    if dim > 4 or (dim == 4 and size[3] != 1):
        raise InputError(f"{source} is {dim}D {tuple(size)}; pick one 3D volume (e.g. one time point) first")
    if dim == 2 and not allow_2d:
        raise InputError(f"{source} is a 2D image; a 3D volume is needed here")


def _from_sitk(image: sitk.Image, source: str, *, metadata: dict) -> Volume:
    if image.GetDimension() == 4:  # one time point (checked in _check_header): drop the t axis
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    meta = dict(metadata)
    meta.setdefault("pixel_type", image.GetPixelIDTypeAsString())
    return Volume(sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing())), image.GetOrigin(),
                  image.GetDirection(), source, meta)


def _read_dicom_series(folder: Path, *, allow_2d: bool) -> Volume:
    """The folder's largest DICOM series, slices ordered by position (GDCM sorts by IPP); refused
    when a file of it could not be read, two slices share a position, or a slice is missing."""
    reader = sitk.ImageSeriesReader()
    series = _itk(lambda: reader.GetGDCMSeriesIDs(str(folder)))[0] or ()
    files_by_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    if not series:
        raise InputError(f"{folder} holds no DICOM series")
    sid = max(files_by_series, key=lambda s: len(files_by_series[s]))
    reader.SetFileNames(files_by_series[sid])
    reader.MetaDataDictionaryArrayUpdateOn()
    image, failed, said = _itk(reader.Execute)
    if failed is not None:
        raise InputError(f"{folder}: DICOM series {sid} is not readable: {_reason(failed, said)}") from None
    if image.GetNumberOfComponentsPerPixel() == 3:
        meta = {"format": "DICOM", "dicom_series": sid, "files": len(files_by_series[sid])}
        return _rgb_dicom(image, str(folder), meta, lambda tag: reader.HasMetaDataKey(0, tag), allow_2d)
    _check_header(str(folder), image.GetNumberOfComponentsPerPixel(), image.GetDimension(), image.GetSize(), allow_2d)
    listed = {os.path.abspath(f) for files in files_by_series.values() for f in files}
    check_dicom_series(folder, files_by_series[sid], listed, sid,
                       lambda i, tag: reader.GetMetaData(i, tag) if reader.HasMetaDataKey(i, tag) else None)
    meta = {"format": "DICOM", "dicom_series": sid, "files": len(files_by_series[sid]), "series_in_folder": len(series)}
    for tag, key in (("0008|0060", "modality"), ("0008|103e", "series_description"), ("0018|0015", "body_part")):
        if reader.HasMetaDataKey(0, tag):
            meta[key] = reader.GetMetaData(0, tag).strip()
    # file i is array slice i: a DICOM-SEG written for this volume references these instances (dicom_seg.py)
    meta["dicom_files"] = [os.path.abspath(f) for f in files_by_series[sid]]
    meta["dicom_sop_uids"] = [reader.GetMetaData(i, "0008|0018").strip(" \x00") if reader.HasMetaDataKey(i, "0008|0018")
                              else "" for i in range(len(files_by_series[sid]))]
    return _from_sitk(image, str(folder), metadata=meta)


def _rgb_dicom(image: sitk.Image, source: str, meta: dict, has_tag, allow_2d: bool) -> Volume:
    """A single-frame colour DICOM → a 2D Volume, RGB ``(y, x, 3)`` (grey when its channels are equal);
    the spacing is known when the file gives Pixel Spacing (or Imager Pixel Spacing)."""
    from .pictures import as_picture

    size = image.GetSize()
    if image.GetDimension() == 3 and size[2] != 1:
        raise InputError(f"{source} is a colour DICOM of {size[2]} frames; one 2D colour image is supported")
    if not allow_2d:
        raise InputError(f"{source} is a 2D image; a 3D volume is needed here")
    if image.GetDimension() == 3:
        image = sitk.Extract(image, [size[0], size[1], 0], [0, 0, 0])
    meta = {**meta, "pixel_type": image.GetPixelIDTypeAsString(),
            "spacing_known": bool(has_tag("0028|0030") or has_tag("0018|1164"))}
    picture = as_picture(sitk.GetArrayFromImage(image), source)
    return Volume(picture, tuple(reversed(image.GetSpacing())), image.GetOrigin(), image.GetDirection(), source,
                  {**meta, "colour": "RGB" if picture.ndim == 3 else "grey"})


def _read_nifti_nibabel(p: Path, *, allow_2d: bool, sitk_error: str) -> Volume:
    """Fallback for NIfTI files ITK refuses (typically a sheared, non-orthonormal sform).

    nibabel's affine maps (i, j, k) to RAS; ITK/LPS negates x and y. The direction is made
    orthonormal (nearest rotation) because ITK cannot represent shear; ``metadata`` says so.
    """
    import nibabel as nib  # only on this rare path

    from nibabel.imageglobals import LoggingOutputSuppressor

    try:
        with LoggingOutputSuppressor():  # nibabel logs header fixes to stderr: the error line says enough
            img = nib.load(str(p))
            data = np.asanyarray(img.dataobj)
    except Exception:  # nibabel raises many types for junk files
        raise InputError(f"{p} is not a readable image: {sitk_error}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    _check_header(str(p), 1, data.ndim, data.shape, allow_2d)  # nibabel's shape is already (x, y, z)
    n = data.ndim
    lps = np.diag([-1.0, -1.0, 1.0])
    linear = (lps @ img.affine[:3, :3])[:n, :n]
    spacing_xyz = np.linalg.norm(linear, axis=0)
    raw_direction = linear / spacing_xyz
    direction = orthonormalize(raw_direction)
    meta = {"format": "nibabel", "pixel_type": str(data.dtype), "itk_error": sitk_error,
            "direction_orthonormalized": bool(not np.allclose(direction, raw_direction, atol=1e-6))}
    origin = (lps @ img.affine[:3, 3])[:n]
    return Volume(np.ascontiguousarray(data.T), tuple(spacing_xyz[::-1]), tuple(origin),
                  tuple(direction.ravel()), str(p), meta)


# ----------------------------------------------------------------------------------------- writing

def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def check_writable(path: str | os.PathLike, *, suffixes: tuple[str, ...] = LABEL_SUFFIXES) -> Path:
    """Fail early (before any model work) if ``path`` cannot take a label volume (``suffixes``: an image
    volume, WRITE_SUFFIXES): suffix, folder, rights. A .dcm also needs a DICOM image: dicom_seg.check_seg_target."""
    path = Path(path)
    if _suffix(path) not in suffixes:
        raise InputError(f"cannot write {path.name}: use one of {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"cannot write {path}: folder {path.parent} is not writable")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    return path


def _write_atomic(image: sitk.Image, path: Path) -> Path:
    """Write to a hidden temp file beside ``path`` and rename it over, so readers never see half a file."""
    path = check_writable(path, suffixes=WRITE_SUFFIXES)
    return write_then_rename(path, lambda tmp: sitk.WriteImage(image, str(tmp), True), suffix=_suffix(path),
                             reason=_reason)


def write_labels(labels: np.ndarray, *, like: Volume, path: str | os.PathLike,
                 provenance: Provenance | None = None, segment_names: dict[int, str] | None = None) -> Path:
    """Write an integer label array ``(z, y, x)``/``(y, x)`` with ``like``'s exact geometry.

    Stored as uint8, or uint16 when a label id exceeds 255. Suffix picks the format
    (.nii, .nii.gz, .nrrd, .mha; .dcm: a DICOM-SEG of ``like``'s DICOM series, segments named by
    ``segment_names``). With ``provenance``, ``OUT.provenance.json`` is written beside it (provenance.py);
    without, a sidecar left by an earlier write to ``path`` is removed: it would describe other labels.
    Returns the written path.
    """
    labels = np.asarray(labels)
    if labels.shape != like.shape:  # the pixel grid: an RGB picture's labels are (y, x)
        raise InputError(f"labels have shape {labels.shape}, but the image is {like.shape}")
    if labels.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got {labels.dtype}")
    if _suffix(Path(path)) == ".png" and labels.ndim != 2:
        volume_suffixes = ", ".join(s for s in LABEL_SUFFIXES if s != ".png")
        raise InputError(f"cannot write {Path(path).name}: use one of {volume_suffixes} (a PNG holds the labels of "
                         f"one 2D image)")
    check_writable(path)
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise InputError(f"label ids must lie in 0..65535, got {labels.min()}..{labels.max()}")
    if _suffix(Path(path)) == ".dcm":
        from .dicom_seg import write_dicom_seg

        written = write_dicom_seg(labels, like=like, path=path, segment_names=segment_names, provenance=provenance)
    elif _suffix(Path(path)) == ".png":
        from .pictures import write_label_picture

        written = write_label_picture(labels, Path(path))
    else:
        dtype = np.uint8 if (labels.size == 0 or labels.max() <= 255) else np.uint16
        written = _write_atomic(like.to_sitk(labels.astype(dtype, copy=False)), Path(path))
    from ..provenance import sidecar_path, write_sidecar

    if provenance is not None:
        write_sidecar(provenance, written)
    else:
        sidecar_path(written).unlink(missing_ok=True)
    return written


def read_labels(path: str | os.PathLike, *, like: Volume) -> Volume:
    """A label volume for the image ``like``: a DICOM-SEG (.dcm) is put onto ``like``'s series grid (it must
    reference that series), any other file is read by :func:`read_volume` (callers check its geometry)."""
    from .dicom_seg import is_dicom_seg, read_dicom_seg

    if is_dicom_seg(path):
        return Volume(read_dicom_seg(path, like=like), like.spacing, like.origin, like.direction, str(path),
                      {"format": "DICOM-SEG", "dicom_series": like.metadata.get("dicom_series")})
    return read_volume(path)


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write an image volume with its dtype and geometry (atomically). Returns the written path."""
    return _write_atomic(volume.to_sitk(), Path(path))
