"""Label volumes as DICOM Segmentation objects (highdicom), on the DICOM series they were drawn on.

A SEG is only meaningful on its source series: every frame references one source instance and takes that
instance's position, orientation and pixel spacing. So writing needs an io.Volume read from a DICOM
series folder (io.py keeps ``dicom_files`` and ``dicom_sop_uids`` in its metadata, file i = array slice i),
and reading puts the frames back onto that series' ``(z, y, x)`` grid by SOP Instance UID.

Segments: one per label id present, BINARY, numbered 1..n in id order; each segment's SegmentDescription
says ``label id N`` so that ids survive a round trip (a SEG from elsewhere keeps its segment numbers).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import InputError
from .atomic import write_then_rename

if TYPE_CHECKING:
    from ..provenance import Provenance


class SeriesVolume(Protocol):
    """What is used of io.Volume (not imported: io imports this module, and the import graph has no cycles)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def source(self) -> str | None: ...
    @property
    def metadata(self) -> dict: ...

NOT_DICOM = "DICOM-SEG needs an image read from a DICOM series; for FILE write .nii.gz, .nrrd or .mha"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_LABEL_ID = re.compile(r"label id (\d+)")
# segment names that say "abnormal": coded as a lesion, everything else as generic tissue
_LESION_WORDS = re.compile(r"lesion|tumou?r|nodule|mass|cancer|carcinoma|metasta|cyst|enhanc", re.I)


def _source(like: SeriesVolume) -> tuple[list[str], list[str]]:
    """The series' files and SOP Instance UIDs in array order, or the one-line refusal."""
    meta = like.metadata or {}
    files, uids = list(meta.get("dicom_files") or ()), list(meta.get("dicom_sop_uids") or ())
    if meta.get("format") != "DICOM":
        raise InputError(NOT_DICOM.replace("FILE", Path(like.source).name if like.source else "this image"))
    if like.ndim != 3 or len(files) != like.shape[0] or len(uids) != len(files) or not all(uids):
        raise InputError(f"{like.source}: a DICOM-SEG is written for a grey series of single-frame files, one per "
                         f"slice ({len(files)} files for {like.shape[0]} slices); write .nii.gz, .nrrd or .mha")
    return files, uids


def check_seg_target(path: str | os.PathLike, *, like: SeriesVolume) -> Path:
    """Fail before any model work when ``path`` (a .dcm) cannot take a SEG of ``like``: not a DICOM series,
    or a file of the series itself (never overwrite the source)."""
    files, _ = _source(like)
    path = Path(path)
    target = os.path.realpath(path)
    if any(os.path.realpath(f) == target for f in files):
        raise InputError(f"{path} is a file of the source DICOM series {like.source}: writing there would "
                         f"destroy it; pick another file")
    return path


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file holding a DICOM Segmentation (reads the header only)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            if f.read(132)[128:] != b"DICM":  # a Part 10 file's mark: keeps pydicom off NRRD, NIfTI, ...
                return False
    except OSError:
        return False
    try:
        import pydicom
    except ImportError:  # the base install (plugin + remote client) has no pydicom: ITK reads the file
        return False

    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # pydicom raises many types for non-DICOM files
        return False
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS


def _highdicom():
    try:
        import highdicom
    except ImportError:
        raise InputError("DICOM-SEG needs highdicom: pip install 'napari-medplib[local]' (or highdicom)") from None
    return highdicom


def _segment_codes(name: str):
    from pydicom.sr.codedict import codes

    if _LESION_WORDS.search(name):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    return codes.SCT.Tissue, codes.SCT.Tissue


def write_dicom_seg(labels: np.ndarray, *, like: SeriesVolume, path: str | os.PathLike,
                    segment_names: dict[int, str] | None = None, provenance: Provenance | None = None) -> Path:
    """Write ``labels`` (``like``'s shape, integer ids) as a BINARY DICOM-SEG referencing ``like``'s series.

    ``segment_names`` maps label id → segment label (default ``label N``). With ``provenance`` the segments are
    SEMIAUTOMATIC with an AlgorithmIdentificationSequence (napari-medplib, version, preset and weights id as
    parameters); without it they are MANUAL (nothing says a model made them). Temp file + rename.
    """
    from .. import __version__

    files, uids = _source(like)
    hd = _highdicom()
    import pydicom  # highdicom's own dependency
    from pydicom.sr.codedict import codes

    path = check_seg_target(path, like=like)
    labels = np.asarray(labels)
    if labels.shape != like.shape:
        raise InputError(f"labels have shape {labels.shape}, but the image is {like.shape}")
    if labels.dtype.kind not in "biu" or (labels.size and (labels.min() < 0 or labels.max() > 65535)):
        raise InputError("labels must be integer ids in 0..65535")
    try:
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as exc:  # a file replaced or removed since the series was read
        raise InputError(f"{like.source}: cannot read the source series again ({exc})") from None
    if [str(ds.SOPInstanceUID) for ds in sources] != uids:
        raise InputError(f"{like.source}: the series changed on disk since it was read; read it again")

    ids = [int(i) for i in np.unique(labels) if i != 0] or [1]  # an empty result still gets its one segment
    lut = np.zeros(max(ids) + 1, dtype=np.uint16 if len(ids) > 255 else np.uint8)
    lut[ids] = np.arange(1, len(ids) + 1)
    segments = lut[labels]  # segment numbers 1..n, frame i = slice i = files[i] (no int64 copy of a big CT)

    names = segment_names or {}
    algorithm = None
    if provenance is not None:
        params = {k: v for k, v in (("preset", provenance.preset), ("weights_id", provenance.weights_id)) if v}
        algorithm = hd.AlgorithmIdentificationSequence(
            name=provenance.tool, family=codes.cid7162.ArtificialIntelligence, version=provenance.version,
            source="MedPLIB", parameters=params or None)
    descriptions = []
    for number, label_id in enumerate(ids, start=1):
        name = str(names.get(label_id) or f"label {label_id}")[:64]
        category, kind = _segment_codes(name)
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type="SEMIAUTOMATIC" if algorithm else "MANUAL",
            algorithm_identification=algorithm)
        desc.SegmentDescription = f"label id {label_id}"  # (0062,0006): lets read_dicom_seg give ids back
        descriptions.append(desc)

    for ds in sources:  # highdicom copies it into the SEG; ITK's writer leaves it out: slices touch, so spacing
        if ds.get("SliceThickness") in (None, ""):
            ds.SliceThickness = f"{float(like.spacing[0]):.6g}"  # in memory only: sources are never written
    preset = f" {provenance.preset}" if provenance and provenance.preset else ""
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=segments, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-medplib",
            manufacturer_model_name=f"MedPLIB{preset}"[:64], software_versions=f"napari-medplib {__version__}",
            device_serial_number="none", content_label="MEDPLIB",
            content_description=(provenance.short_text() if provenance else "napari-medplib labels"),
            series_description=f"medplib SEG{preset}"[:64])
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's word on sources it cannot reference
        raise InputError(f"cannot make a DICOM-SEG for {like.source}: {str(exc).splitlines()[0][:200]}") from None

    return write_then_rename(path, seg.save_as, suffix=".dcm")


def read_dicom_seg(path: str | os.PathLike, *, like: SeriesVolume) -> np.ndarray:
    """The SEG's segments as one label array on ``like``'s ``(z, y, x)`` grid (``like`` = the series it was drawn
    on, as read_volume gives it). Label ids from ``label id N`` descriptions, else segment numbers."""
    files, uids = _source(like)
    hd = _highdicom()
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # pydicom/highdicom raise many types for files that are not a SEG
        raise InputError(f"{path} is not a readable DICOM Segmentation ({str(exc).splitlines()[0][:160]})") from None
    refs = seg.get_source_image_uids()  # (study, series, instance) per referenced source instance
    series_uid = str(like.metadata.get("dicom_series", ""))
    theirs = {str(s) for _, s, _ in refs}
    if series_uid not in theirs:
        raise InputError(f"{path} segments another series ({', '.join(sorted(theirs)) or 'none named'}), not "
                         f"{like.source} ({series_uid}): give the image it was drawn on")
    missing = {str(i) for _, _, i in refs} - set(uids)
    if missing:
        raise InputError(f"{path} references {len(missing)} instance(s) that {like.source} does not hold: "
                         f"the series on disk is not the one it was drawn on")
    numbers = [int(n) for n in seg.get_segment_numbers()]
    if not numbers:
        return np.zeros(like.shape, dtype=np.uint8)
    label_of = {}
    for n in numbers:
        found = _LABEL_ID.search(str(getattr(seg.get_segment_description(n), "SegmentDescription", "")))
        label_of[n] = int(found.group(1)) if found else n
    try:
        planes = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, combine_segments=True,
                                                   relabel=False, assert_missing_frames_are_empty=True)
    except (ValueError, RuntimeError, KeyError) as exc:  # overlapping or fractional segments, odd frames
        raise InputError(f"{path}: its segments cannot be read as one label volume "
                         f"({str(exc).splitlines()[0][:160]})") from None
    if planes.shape != like.shape:
        raise InputError(f"{path} has frames of {planes.shape[1:]}, the series {like.shape[1:]}")
    top = max(label_of.values())
    lut = np.zeros(max(numbers) + 1, dtype=np.uint8 if top <= 255 else np.uint16)
    for n, label_id in label_of.items():
        lut[n] = label_id
    return lut[planes]


__all__ = ["NOT_DICOM", "check_seg_target", "is_dicom_seg", "read_dicom_seg", "write_dicom_seg"]
