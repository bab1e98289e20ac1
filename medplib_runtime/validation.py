"""Checks every runtime makes before it does any work, so local and remote refuse bad input
with the same one-line message (numpy only)."""

from __future__ import annotations

import warnings

import numpy as np

from .errors import InputError
from .presets import IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, SPECIAL_TOKENS
from .schemas import SliceRef, Turn

# the model computes in float32 (largest 3.4e38) and the intensity window subtracts and divides: values
# past this overflow to inf and then NaN, and a NaN image still gives a confident mask
MAX_ABS_INTENSITY = 1e30
# a question is typed by a person (a 100k-character one ran 330 s and took 3.8 GB before this cap), and
# SmolLM2 reads 2048 positions in all: image tokens, system line, earlier turns and the answer
MAX_QUESTION_CHARS = 2_000
MAX_HISTORY_CHARS = 16_000  # questions and answers of the earlier turns together
MAX_NEW_TOKENS = 512  # the same cap as `medplib serve`'s default (server/config.py)
# an RGB picture is (y, x, 3) with both sides at least this; a thinner (n, m, 3) array is a grey volume of three
# columns. Pictures smaller than this are refused when read (imaging/pictures.py), so a read RGB is never misread
MIN_RGB_SIDE = 5


def is_rgb(array: np.ndarray) -> bool:
    """A 2D RGB picture ``(y, x, 3)`` (channels last, as napari and Pillow give them), not a 3D volume."""
    return array.ndim == 3 and array.shape[-1] == 3 and min(array.shape[:2]) >= MIN_RGB_SIDE


def check_image(array: np.ndarray) -> None:
    """A real-valued 2D ``(y, x)`` or 3D ``(z, y, x)`` grey image or a 2D RGB ``(y, x, 3)`` one (:func:`is_rgb`;
    uint8, or any real type: its window is min-max), or InputError."""
    if array.ndim not in (2, 3):
        raise InputError(f"image must be 2D (y, x), 3D (z, y, x) or RGB (y, x, 3); got shape {array.shape}")
    rgb = is_rgb(array)
    if array.ndim == 3 and array.shape[-1] == 4 and array.shape[0] > 4:
        raise InputError(f"image of shape {array.shape} looks like RGBA: drop the alpha channel (keep [..., :3])")
    if array.ndim == 3 and array.shape[-1] == 3 and array.shape[0] > 4 and not rgb:
        raise InputError(f"image of shape {array.shape} looks like RGB, but an RGB image needs at least "
                         f"{MIN_RGB_SIDE}×{MIN_RGB_SIDE} pixels")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"image dtype {array.dtype} is not a real-valued number type")
    if not rgb and min(array.shape[-2:]) < 2:
        raise InputError(f"image of shape {array.shape} is too small: slices need at least 2×2 voxels")
    if array.dtype.kind == "f" and array.size:
        with warnings.catch_warnings():  # an all-NaN image is window_for's to refuse, with its own message
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
            if np.isinf(lo) or np.isinf(hi):  # NaN/inf voxels are left out of the window (see window_for)
                finite = array[np.isfinite(array)]
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if max(abs(lo), abs(hi)) > MAX_ABS_INTENSITY:
            raise InputError(f"image values reach {lo:g}..{hi:g}: beyond ±{MAX_ABS_INTENSITY:g} the model's float32 "
                             f"arithmetic overflows; rescale the image")


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


# tokens the prompt itself places (the image's, the region's feature slot, a region's close) and the other tokens
# MedPLIB added (<SEG> is what the model writes for a mask; <ref>, <sr>, <mask> mark its training data): typed
# into a question they would shift the image features or the routed span, make a mask nobody asked for, or fail
# deep in the model with a message about internals. <region> is the one a user writes (where the region goes).
RESERVED_TOKENS = tuple(t for t in (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER) + SPECIAL_TOKENS if t != "<region>")


def check_question(question: str, *, region: bool = False, history: tuple[Turn, ...] = ()) -> None:
    """An empty or over-long question, earlier turns longer than the model reads, a token the prompt
    reserves (in it or in an earlier turn's question), or a ``<region>`` that no region goes into
    (it would be read as a bare token)."""
    if not question or not question.strip():
        raise InputError("empty question: type what you want to know")
    if len(question) > MAX_QUESTION_CHARS:
        raise InputError(f"the question is {len(question):,} characters long; the limit is {MAX_QUESTION_CHARS:,}: "
                         f"ask something shorter")
    earlier = sum(len(t.question) + len(t.answer) for t in history)
    if earlier > MAX_HISTORY_CHARS:
        raise InputError(f"the earlier turns hold {earlier:,} characters; the limit is {MAX_HISTORY_CHARS:,}: "
                         f"clear the chat or send fewer turns")
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


def fitting_history(history: tuple[Turn, ...]) -> tuple[Turn, ...]:
    """The latest turns whose questions and answers fit ``MAX_HISTORY_CHARS`` (for a chat that keeps more)."""
    kept: list[Turn] = []
    total = 0
    for turn in reversed(history):
        total += len(turn.question) + len(turn.answer)
        if total > MAX_HISTORY_CHARS:
            break
        kept.append(turn)
    return tuple(reversed(kept))


def check_generation(*, max_new_tokens: int | None = None, threshold: float | None = None) -> None:
    """The answer length and mask threshold a request asks for: 1..MAX_NEW_TOKENS and strictly between 0 and 1.
    (A threshold of 0 or 1, NaN, or outside gives an all-or-nothing mask that looks like an answer.)"""
    if max_new_tokens is not None:
        whole = isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool)
        if not whole or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"max new tokens must be a whole number from 1 to {MAX_NEW_TOKENS}; got {max_new_tokens!r}")
    if threshold is not None:
        number = isinstance(threshold, (int, float, np.floating)) and not isinstance(threshold, bool)
        if not number or not 0.0 < float(threshold) < 1.0:
            raise InputError(f"threshold must lie strictly between 0 and 1; got {threshold!r}")


def check_finite(array: np.ndarray, where: str) -> None:
    """NaN/inf voxels become 0 in the model's window: the mask would rest on values that are not there."""
    if array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"{where} holds {bad:,} NaN/inf voxel{'s' if bad > 1 else ''} of {array.size:,}: "
                             f"the model would see them as 0; fill or crop them first")
