"""Bad input files and helpers for tests/runtime/test_bad_input_cli.py: brain1 copies, truncated files, odd
headers, small DICOM series; and a hash of every file a case could touch."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
MEDPLIB = shutil.which("medplib", path=str(Path(sys.executable).parent)) or "medplib"
BOX = "81,159,118,209"  # brain1's lesion on slice 16 (README)
SEG = ["--slice", "16", "--box", BOX]


def snapshot(*folders: Path) -> dict[str, str]:
    """sha256 of every file under ``folders`` (names included: a new or a lost file shows too)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def brain1(tmp: Path, name: str = "brain1.nrrd") -> str:
    """A copy of the real brain1 image, so even a broken check cannot reach sample_data/."""
    shutil.copyfile(SAMPLE / "brain1_image.nrrd", tmp / name)
    return str(tmp / name)


def label1(tmp: Path, name: str = "lesion.nrrd") -> str:
    shutil.copyfile(SAMPLE / "brain1_label.nrrd", tmp / name)
    return str(tmp / name)


def brain1_variant(tmp: Path, name: str, change: Callable[[np.ndarray], np.ndarray], *, like: str = "brain1_image",
                   geometry: Callable[[sitk.Image], None] | None = None) -> str:
    """brain1's image (or label) with its array changed and/or its geometry moved, written to ``name``."""
    ref = sitk.ReadImage(str(SAMPLE / f"{like}.nrrd"))
    out = sitk.GetImageFromArray(change(sitk.GetArrayFromImage(ref)))
    out.CopyInformation(ref)
    if geometry:
        geometry(out)
    sitk.WriteImage(out, str(tmp / name), True)
    return str(tmp / name)


def truncated(tmp: Path, name: str, *, compress: bool = True, keep: float = 0.6) -> str:
    """brain1 in another format, cut to ``keep`` of its bytes (a copy interrupted, a full disk)."""
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE / "brain1_image.nrrd")), str(tmp / name), compress)
    data = (tmp / name).read_bytes()
    (tmp / name).write_bytes(data[:int(len(data) * keep)])
    return str(tmp / name)


def nifti_with_pixdim(tmp: Path, value: float) -> str:
    """A small NIfTI whose pixdim[1] is ``value`` (set in the stored header; nibabel would fix it on save)."""
    arr = (np.arange(6 * 32 * 32).reshape(6, 32, 32) % 97).astype(np.int16)
    path = tmp / "pixdim.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(value).tobytes()  # pixdim[1]: bytes 76 + 4
    path.write_bytes(bytes(raw))
    return str(path)


def nrrd_with_spacings(tmp: Path, spacings: str) -> str:
    arr = (np.arange(6 * 32 * 32).reshape(6, 32, 32) % 97).astype(np.int16)
    header = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: 32 32 6\nspacings: {spacings}\nendian: little\n"
              f"encoding: raw\n\n")
    (tmp / "sp.nrrd").write_bytes(header.encode() + arr.astype("<i2").tobytes())
    return str(tmp / "sp.nrrd")


def dicom_series(folder: Path, *, positions: tuple[float, ...] = (0, 2.5, 5, 7.5, 10, 12.5)) -> list[Path]:
    """A small CT series, one file per slice (SimpleITK's GDCM writer), at ``positions`` along z."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for i, z in enumerate(positions):
        sl = sitk.GetImageFromArray((np.arange(32 * 32).reshape(32, 32) % 50 + 10 * i).astype(np.int16))
        sl.SetSpacing((0.5, 0.5))  # the writer takes PixelSpacing from here
        for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.9.33"), ("0008|0060", "CT"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0032", f"0\\0\\{z}"), ("0020|0013", str(i + 1))):
            sl.SetMetaData(tag, value)
        files.append(folder / f"s{i:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(sl)
    return files


def cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


