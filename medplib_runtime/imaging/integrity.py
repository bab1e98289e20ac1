"""Checks that a file or a DICOM series holds what its header promises, before a voxel is trusted.

ITK reads some damaged files without an error or a warning (measured with SimpleITK 2.5.7, ITK 5.4):

* a truncated NIfTI (``.nii`` or ``.nii.gz``): the missing slices come back as zeros;
* a NIfTI whose ``pixdim`` is NaN, 0 or negative: 1 mm (or the absolute value) is used;
* an NRRD with ``spacings: nan`` (NRRD's "unknown"): 1 mm;
* a DICOM folder with a truncated file: GDCM leaves the file out of the series, so a slice is
  missing (a gap, or one slice fewer at an end); two files at one position: stacked as two slices;
  ``PixelSpacing`` 0: 1 mm, negative: its absolute value.

Truncated NRRD and MHA files do fail, but MetaIO writes its reason straight to the process's stderr
(fd 2) and the exception then says "No such file or directory": :func:`native_stderr` collects
that text so the one-line error can say "truncated" instead.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError

_CHUNK = 1 << 20
_HEADER_BYTES = 1 << 16  # NRRD headers and DICOM meta headers fit well within this
_TRUNCATION_PATTERNS = (  # what ITK's readers say (in the exception or on fd 2) when the data ends early:
    # (pattern, unit, whether the first number is what the file holds)
    (re.compile(r"data not read completely\s+ideal = (\d+) : actual = (\d+)"), "bytes", False),  # MetaIO
    (re.compile(r"expected (\d+) bytes but received (\d+)"), "bytes", False),  # NRRD, gzip encoding
    (re.compile(r"fread got only (\d+) .*?not (\d+)"), "samples", True),  # NRRD, raw encoding
)


@contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what C/C++ code writes straight to file descriptor 2 while the block runs.

    The text is appended to the yielded list when the block ends. If fd 2 cannot be redirected
    (no stderr at all), nothing is collected and the block still runs.
    """
    collected: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield collected
        return
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield collected
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                collected.append(tmp.read(_HEADER_BYTES).decode("utf-8", "replace"))
    finally:
        os.close(saved)


def truncation_reason(*texts: str) -> str | None:
    """"truncated: A of B ..." when ITK's message (or its fd-2 output) says the data ended early."""
    joined = " ".join(texts)
    for pattern, unit, holds_first in _TRUNCATION_PATTERNS:
        m = pattern.search(joined)
        if m:
            first, second = int(m.group(1)), int(m.group(2))
            have, want = (first, second) if holds_first else (second, first)
            return f"truncated: {have:,} of the {want:,} {unit} of voxel data its header promises"
    return None


# ----------------------------------------------------------------------------------------- NIfTI

def check_nifti(path: Path) -> None:
    """InputError for a NIfTI file with an invalid ``pixdim`` or fewer voxel bytes than its header says.

    Header only, plus (for ``.nii.gz``) the gzip trailer's length field; the whole stream is
    decompressed only when that field disagrees (a truncated file, or one of several gzip members).
    """
    header = _nifti_header(path)
    if header is None:
        return  # not a NIfTI header nibabel understands: ITK's own error will say why
    shape = tuple(int(n) for n in header.get_data_shape())
    itemsize = header.get_data_dtype().itemsize
    offset = int(header["vox_offset"])
    pixdim = [float(v) for v in header["pixdim"][1:1 + min(len(shape), 3)]]
    if not all(np.isfinite(v) and v > 0 for v in pixdim):
        shown = ", ".join(f"{v:g}" for v in pixdim)
        raise InputError(f"{path} gives voxel sizes (pixdim) {shown}: NaN, zero or negative sizes would be read "
                         f"as 1 mm; fix the header's pixdim")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * itemsize
    if path.name.lower().endswith(".gz"):
        have, damage = _gzip_length(path, expected)
    else:
        have, damage = path.stat().st_size, None
    if have < expected:
        why = f" ({damage})" if damage else ""
        raise InputError(f"{path} is truncated: {have:,} of the {expected:,} bytes its header promises{why}; "
                         f"the missing slices would be read as zeros")


def _nifti_header(path: Path):
    """The header as stored: ``nib.load`` would already have replaced a zero or negative pixdim."""
    import nibabel as nib

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read(540)  # a NIfTI-2 header; NIfTI-1 needs the first 348 bytes
        for klass in (nib.Nifti1Header, nib.Nifti2Header):
            header = klass.from_fileobj(io.BytesIO(raw[:klass.sizeof_hdr]), check=False)
            if int(header["sizeof_hdr"]) == klass.sizeof_hdr and header.get_data_shape():
                return header
    except Exception:  # noqa: BLE001 — junk, or a gzip too short for a header
        return None
    return None


def _gzip_length(path: Path, expected: int) -> tuple[int, str | None]:
    """Decompressed length of a gzip file (at least ``expected`` when complete) and what was wrong, if anything."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:  # a gzip member is at least 18 bytes; its last 4 are the length mod 2**32
            f.seek(-4, os.SEEK_END)
            if struct.unpack("<I", f.read(4))[0] == expected % (1 << 32):
                return expected, None
    count, inflate, ended = 0, zlib.decompressobj(31), False  # 31: a gzip wrapper
    with open(path, "rb") as f:
        while data := f.read(_CHUNK):
            while data:
                try:
                    count += len(inflate.decompress(data))
                except zlib.error as exc:  # bad data or a CRC mismatch
                    return count, f"gzip: {exc}"
                data, ended = b"", inflate.eof
                if ended and inflate.unused_data.strip(b"\x00"):  # another gzip member follows (ITK reads it too)
                    data, inflate = inflate.unused_data, zlib.decompressobj(31)
    return count, None if ended else "the gzip stream ends early"


# ----------------------------------------------------------------------------------------- NRRD

def check_nrrd(path: Path) -> None:
    """InputError for an NRRD whose ``spacings`` field holds NaN (NRRD's "unknown"; ITK reads 1 mm)."""
    fields = _nrrd_fields(path)
    spacings = fields.get("spacings")
    if spacings and any(v.lower() in ("nan", "-nan", "+nan") for v in spacings.split()):
        raise InputError(f"{path} gives spacings {spacings!r}: an unknown (NaN) voxel size would be read as 1 mm; "
                         f"set the spacing in the header")


def _nrrd_fields(path: Path) -> dict[str, str]:
    """The ``key: value`` fields of an NRRD header (up to the blank line). Not a reader: ITK reads the file."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if not head.startswith(b"NRRD"):
        return {}
    fields = {}
    for raw in head.split(b"\n\n", 1)[0].split(b"\n")[1:]:
        line = raw.decode("latin-1").strip()
        if ": " in line and not line.startswith("#"):
            key, value = line.split(": ", 1)
            fields[key.strip().lower()] = value.strip()
    return fields


# ----------------------------------------------------------------------------------------- DICOM

def check_dicom_series(folder: Path, files: Sequence[str], listed: set[str], series_uid: str, meta) -> None:
    """InputError when the series read from ``folder`` is not the whole, evenly spaced stack.

    ``files``: the series' files in GDCM's (position) order; ``listed``: every file GDCM placed in
    any series of the folder; ``meta(i, tag)``: slice i's DICOM tag value or None.
    """
    _check_left_out_files(folder, listed, series_uid)
    spacing = meta(0, "0028|0030")
    if spacing is not None:
        values = _floats(spacing)
        if len(values) < 2 or not all(np.isfinite(v) and v > 0 for v in values):
            raise InputError(f"{folder}: {Path(files[0]).name} gives PixelSpacing {spacing.strip()!r}: a zero, "
                             f"negative or unreadable pixel size would be read as 1 mm")
    if len(files) < 2:
        return
    orientation, positions = meta(0, "0020|0037"), [meta(i, "0020|0032") for i in range(len(files))]
    if orientation is None or any(p is None for p in positions):
        return  # no positions: GDCM stacks by file order and there is nothing to compare
    cosines = _floats(orientation)
    if len(cosines) != 6:
        return
    normal = np.cross(cosines[:3], cosines[3:])
    depth = np.array([np.dot(_floats(p)[:3], normal) for p in positions])
    steps = np.abs(np.diff(depth))
    names = [Path(f).name for f in files]
    for i, step in enumerate(steps):
        if step < 1e-3:
            raise InputError(f"{folder}: {names[i]} and {names[i + 1]} are both at position {depth[i]:.4g} mm "
                             f"(along the slice normal): two slices at one place would be stacked as two; "
                             f"keep one of them")
    typical = float(np.median(steps))
    for i, step in enumerate(steps):
        if abs(step - typical) > 0.1 * typical:
            what = "a slice is missing" if step > 1.5 * typical else "the slices are not evenly spaced"
            raise InputError(f"{folder}: {names[i]} and {names[i + 1]} are {step:.4g} mm apart, the other slices "
                             f"{typical:.4g} mm: {what} (the volume would be stacked at one spacing)")


def _check_left_out_files(folder: Path, listed: set[str], series_uid: str) -> None:
    """A DICOM file of this series that GDCM could not read (so left out of it): name it."""
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file() or os.path.abspath(entry.path) in listed:
            continue
        with open(entry.path, "rb") as f:
            head = f.read(_HEADER_BYTES)
        if head[128:132] != b"DICM":
            continue  # not a DICOM file (notes, a NIfTI written beside the series, ...)
        if _belongs_to(entry.path, head, series_uid):
            raise InputError(f"{folder}: {entry.name} belongs to the series but cannot be read (truncated or "
                             f"damaged), so a slice would be missing; replace or remove the file")


def _belongs_to(path: str, head: bytes, series_uid: str) -> bool:
    """Whether the file's SeriesInstanceUID is ``series_uid``: pydicom's reading where it is installed
    (it is in ``[dev]``), else whether the UID's text is in the file's first 64 KiB."""
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
        return str(ds.SeriesInstanceUID).strip("\x00 ") == series_uid
    except Exception:  # noqa: BLE001 — no pydicom, or a file too damaged for it: look for the UID's text
        return series_uid.encode("ascii", "replace") in head


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace("\x00", "").split("\\") if v.strip()]
    except ValueError:
        return []


__all__ = ["check_dicom_series", "check_nifti", "check_nrrd", "native_stderr", "truncation_reason"]
