"""A real DICOM CT series on disk for tests: the shipped lung2 crop written slice by slice with ITK's
DICOM writer, with the tags a viewer needs."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from medplib_runtime.imaging.io import read_volume


def write_ct_series(image_path: Path, folder: Path) -> str:
    """One file per z slice with the tags a viewer needs (study, series, frame of reference, SOP instance,
    position, orientation); names run against slice order so that sorting by position matters."""
    from pydicom.uid import generate_uid

    vol = read_volume(image_path)
    folder.mkdir(parents=True)
    image = vol.to_sitk()
    d = image.GetDirection()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetDepth()
    for i in range(n):
        sl = image[:, :, i]
        for tag, value in (("0020|000d", study), ("0020|000e", series), ("0020|0052", frame),
                           ("0008|0018", generate_uid()), ("0008|0060", "CT"), ("0008|103e", "lung2 crop"),
                           ("0010|0020", "LUNG2"), ("0020|0037", "\\".join(f"{v:.12g}" for v in d[0::3] + d[1::3])),
                           ("0020|0032", "\\".join(f"{v:.12g}" for v in image.TransformIndexToPhysicalPoint((0, 0, i)))),
                           ("0020|0013", str(i + 1))):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"ct{n - 1 - i:03d}.dcm"))
        writer.Execute(sl)
    return series
