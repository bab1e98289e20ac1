"""Checks every runtime makes before it does any work, so local and remote refuse bad input
with the same one-line message (numpy only)."""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .presets import IMAGE_PLACEHOLDER, REGION_PLACEHOLDER
from .schemas import SliceRef, Turn


def check_image(array: np.ndarray) -> None:
    """A 2D ``(y, x)`` or 3D ``(z, y, x)`` real-valued single-channel image, or InputError."""
    if array.ndim not in (2, 3):
        raise InputError(f"image must be 2D (y, x) or 3D (z, y, x); got shape {array.shape}")
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        raise InputError(f"image of shape {array.shape} looks like RGB(A); give a single-channel volume")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"image dtype {array.dtype} is not a real-valued number type")
    if min(array.shape[-2:]) < 2:
        raise InputError(f"image of shape {array.shape} is too small: slices need at least 2×2 voxels")


def normalise_slice(shape: tuple[int, ...], was_2d: bool, ref: SliceRef) -> SliceRef:
    """``ref`` checked against an image stored as ``(z, y, x)`` (a 2D image as ``(1, y, x)``)."""
    if was_2d:
        if ref.index != 0:
            raise InputError(f"slice {ref.index} is out of range: a 2D image has one slice (0)")
        return SliceRef(axis=0, index=0)
    if ref.axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2; got {ref.axis}")
    n = shape[ref.axis]
    if not 0 <= ref.index < n:
        raise InputError(f"slice {ref.index} is out of range: axis {ref.axis} has {n} slices (0–{n - 1})")
    return ref


def slice_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    """(rows, cols) of a slice along ``axis`` of a ``(z, y, x)`` shape."""
    rest = [s for i, s in enumerate(shape) if i != axis]
    return rest[0], rest[1]


# tokens the prompt itself places (the image's, the region's feature slot, a region's close): typed into a question
# they would shift the image features or the routed span, or fail deep in the model with a message about internals
RESERVED_TOKENS = (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, "<im_start>", "<im_end>", "</region>")


def check_question(question: str, *, region: bool = False, history: tuple[Turn, ...] = ()) -> None:
    """An empty question, a token the prompt reserves (in it or in an earlier turn's question), or a
    ``<region>`` that no region goes into (it would be read as a bare token)."""
    if not question or not question.strip():
        raise InputError("empty question: type what you want to know")
    for where, text in [("the question", question)] + [(f"earlier turn {i + 1}'s question", t.question)
                                                        for i, t in enumerate(history)]:
        reserved = next((tok for tok in RESERVED_TOKENS if tok in text), None)
        if reserved:
            raise InputError(f"{where} holds {reserved}, a token the prompt reserves: leave it out "
                             f"(write <region> where the region goes)")
    written = question.count("<region>")
    if written and not region:
        raise InputError("the question says <region> but no region was given: pick a region, or leave <region> out")
    if written > 1:
        raise InputError(f"the question says <region> {written} times: one region goes with a question")
