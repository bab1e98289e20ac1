"""2D picture files (PNG, JPEG, TIFF, BMP, GIF) ⇄ pixels, read the way viewers show them (Pillow).

MedPLIB's own inputs are such pictures, many of them RGB (pathology, dermoscopy, endoscopy, fundus; its
examples save CT windowed to uint8 and replicated to RGB). What comes back is a :class:`Picture`
(``io.read_volume`` makes the ``Volume``):

* grey → ``(h, w)`` of the file's dtype (a 16-bit PNG stays uint16);
* colour → ``(h, w, 3)``; an RGB picture whose three channels are equal is grey;
* palette and CMYK pictures are converted to RGB, the EXIF orientation is applied (as viewers do), and an
  alpha channel is dropped: ``metadata["notes"]`` says so, for the CLI to print and the plugin to show.

A picture has no physical spacing: 1 per pixel with ``metadata["spacing_known"] = False``, so areas are
in pixels ("px"), not mm². Animated GIF/PNG files and multi-page RGB TIFFs are refused; a multi-page grey
TIFF is a stack that ITK reads as a 3D volume (``read_picture`` returns None for it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..validation import MIN_RGB_SIDE

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
MIN_SIDE = MIN_RGB_SIDE  # pixels: below it a (y, x, 3) array would be read as a grey volume (validation.is_rgb)
_GREY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays
class Picture:
    array: np.ndarray  # (h, w) grey or (h, w, 3) RGB
    source: str
    metadata: dict = field(default_factory=dict)  # format, pixel_type, colour, spacing_known (False), notes

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 3


def read_picture(path: str | os.PathLike) -> Picture | None:
    """A 2D picture (see the module doc), or None for a TIFF that is ITK's to read (a multi-page
    grey stack, or one Pillow cannot decode)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    notes: list[str] = []
    try:
        with Image.open(p) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                if im.format == "TIFF" and im.mode in _GREY_MODES:
                    return None  # a z-stack: ITK reads it with its geometry
                kind = "pages" if im.format == "TIFF" else "frames (animated)"
                raise InputError(f"{p} has {frames} {kind}; one 2D image is needed: save the one you want as a PNG")
            fmt, mode = im.format, im.mode
            rawmode = im.tile[0].args if im.tile and isinstance(im.tile[0].args, str) else ""
            if fmt == "PNG" and mode in ("RGB", "RGBA") and rawmode.endswith(";16B"):
                return _read_16bit_colour(p, notes)  # Pillow would cut it to 8 bits
            oriented = ImageOps.exif_transpose(im)
            if oriented is not im:
                orientation = im.getexif().get(0x0112)
                if orientation not in (None, 1):
                    notes.append(f"EXIF orientation {orientation} applied (the image is shown as viewers show it)")
            array = _pixels(oriented, notes)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if p.suffix.lower() in (".tif", ".tiff"):
            return None  # TIFFs Pillow cannot decode (some compressions, float stacks): ITK may
        raise InputError(f"{p} is not a readable image: {str(exc).splitlines()[0][:160]}") from None
    return _picture(array, str(p), fmt or p.suffix.lstrip(".").upper(), notes)


def _pixels(im, notes: list[str]) -> np.ndarray:
    """A Pillow image → ``(h, w)`` or ``(h, w, 3)`` array; conversions go into ``notes``."""
    mode = im.mode
    if mode == "P" or mode == "PA":  # palette: its colours, with transparency as alpha when it has one
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        notes.append("palette image converted to RGB")
        mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in _GREY_MODES:
        array = np.asarray(im)
        return array.astype(np.uint16) if array.dtype.kind in "iu" and array.dtype.itemsize > 2 \
            and array.size and array.min() >= 0 and array.max() <= 65535 else array
    if mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(im.getchannel("A"))
        see_through = int(np.count_nonzero(alpha < 255))
        notes.append("alpha channel dropped" + (f" ({see_through:,} of {alpha.size:,} pixels were transparent: "
                                                f"their colour is used as it is)" if see_through else ""))
        return np.asarray(im.convert("L" if mode in ("LA", "La") else "RGB"))
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
    return np.asarray(im.convert("RGB"))


def _read_16bit_colour(p: Path, notes: list[str]) -> Picture:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(p)))  # (h, w, 3 or 4) uint16
    if array.shape[-1] == 4:
        notes.append("alpha channel dropped")
        array = array[..., :3]
    return _picture(np.ascontiguousarray(array), str(p), "PNG", notes)


def as_picture(array: np.ndarray, source: str) -> np.ndarray:
    """A 2D picture's pixels, checked: ``(h, w)`` grey, or ``(h, w, 3)`` RGB unless its channels are equal
    (grey saved as RGB, as MedPLIB's CT PNGs are: stored as one channel)."""
    h, w = array.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{source} is {h}×{w} pixels: too small for the segmentation encoder, which needs at "
                         f"least {MIN_SIDE}×{MIN_SIDE}")
    if array.ndim == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
        array = array[..., 0]
    return np.ascontiguousarray(array)


def _picture(array: np.ndarray, source: str, fmt: str, notes: list[str]) -> Picture:
    array = as_picture(array, source)
    meta = {"format": fmt, "pixel_type": str(array.dtype), "colour": "RGB" if array.ndim == 3 else "grey",
            "spacing_known": False}
    if notes:
        meta["notes"] = list(notes)
    return Picture(array, source, meta)


def write_label_picture(labels: np.ndarray, path: Path) -> Path:
    """A 2D label array → PNG (8-bit, or 16-bit when an id exceeds 255), written atomically. The ids are
    stored as they are (1 is dark in a viewer: it is a label image, not a picture)."""
    import uuid

    from PIL import Image

    if labels.ndim != 2:
        raise InputError(f"cannot write {path.name}: a PNG holds one 2D slice, the labels are {labels.shape}; "
                         f"use .nii.gz, .nrrd or .mha")
    big = labels.size and labels.max() > 255
    array = np.ascontiguousarray(labels, dtype=np.uint16 if big else np.uint8)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp.png"
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {exc}") from None
    return path
