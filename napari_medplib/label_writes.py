"""Writing masks into a Labels layer: protected, undoable, no Qt here.

Voxels of *other* labels are never overwritten unless ``overwrite`` is set. A write remembers only
the voxels it changed and what they held, and the label's name before it; undo puts back exactly
those voxels that still hold what the write put there, so paint added after the write survives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import SliceRef

NAMES_KEY = "medplib_label_names"


@dataclass(frozen=True)
class LabelWrite:
    layer_name: str
    label: int
    where: tuple[np.ndarray, ...]  # np.nonzero-style indices (whole layer) of the voxels the write changed
    before: np.ndarray  # what they held
    name_before: str | None  # the label's name before the write (None: it had none)
    changed: int
    slice: SliceRef | None = None  # the slice written; None for a 3D write
    after: np.ndarray | None = None  # what the changed voxels hold after it (None: all ``label``)

    def describe(self) -> str:
        return f"slice {self.slice.index}" if self.slice is not None else f"{self.changed} voxels in 3D"


def _plane_index(ndim: int, ref: SliceRef) -> tuple:
    if ndim == 2:
        return (slice(None), slice(None))
    index: list = [slice(None)] * ndim
    index[ref.axis] = ref.index
    return tuple(index)


def _check(layer, label: int) -> None:
    if label <= 0:
        raise InputError("label id must be ≥ 1 (0 is background)")
    if label > np.iinfo(layer.data.dtype).max:
        raise InputError(f"label {label} does not fit the layer's {layer.data.dtype}")


def _paint(layer, target: np.ndarray, label: int, name: str | None, ref: SliceRef | None,
           clear: np.ndarray | None = None) -> LabelWrite:
    """Set ``label`` where ``target`` (whole-layer boolean) is true, and background where ``clear`` is
    (voxels of ``label`` the new result no longer holds); record what it replaced."""
    data = layer.data
    if clear is None:
        where = np.nonzero(target & (data != label))
        before = data[where].copy()
        data[where] = label
        after = None
    else:
        changed = (target & (data != label)) | (clear & ~target & (data == label))
        where = np.nonzero(changed)
        before = data[where].copy()
        after = np.where(target[where], label, 0).astype(data.dtype)
        data[where] = after
    names = layer.metadata.setdefault(NAMES_KEY, {})
    name_before = names.get(int(label))
    if name:
        names[int(label)] = name
    layer.refresh()
    return LabelWrite(layer.name, int(label), where, before, name_before, int(before.size), ref, after)


def write_mask(layer, mask: np.ndarray, ref: SliceRef, *, label: int, name: str | None = None,
               overwrite: bool = False, replace: bool = False) -> LabelWrite:
    """Paint ``mask`` (slice-shaped) with ``label`` on ``ref``'s slice of ``layer``; ``replace``: the
    label's other voxels on that slice go back to background (a correction of a propagated slice)."""
    _check(layer, label)
    index = _plane_index(layer.data.ndim, ref)
    plane = layer.data[index]
    if plane.shape != mask.shape:
        raise InputError(f"target layer {layer.name!r} slice is {plane.shape}, the mask {mask.shape}")
    target = np.zeros(layer.data.shape, bool)
    target[index] = np.asarray(mask).astype(bool)
    if not overwrite:
        target &= (layer.data == 0) | (layer.data == label)
    clear = None
    if replace:
        clear = np.zeros(layer.data.shape, bool)
        clear[index] = True
    return _paint(layer, target, label, name, ref, clear)


def write_volume(layer, mask: np.ndarray, *, label: int, name: str | None = None,
                 overwrite: bool = False, replace: bool = False) -> LabelWrite:
    """Paint a whole-volume ``mask`` with ``label`` in one undoable write (other labels kept unless
    ``overwrite``); ``replace``: the label becomes exactly ``mask`` (its voxels outside it are cleared)."""
    _check(layer, label)
    if layer.data.shape != np.shape(mask):
        raise InputError(f"target layer {layer.name!r} is {layer.data.shape}, the mask {np.shape(mask)}")
    target = np.asarray(mask).astype(bool)
    if not overwrite:
        target &= (layer.data == 0) | (layer.data == label)
    return _paint(layer, target, label, name, None, np.ones(layer.data.shape, bool) if replace else None)


def undo_write(layer, write: LabelWrite) -> int:
    """Undo ``write``: only voxels that still hold its label go back. Returns how many did."""
    data = layer.data
    still = data[write.where] == (write.label if write.after is None else write.after)
    data[tuple(w[still] for w in write.where)] = write.before[still]
    names = layer.metadata.setdefault(NAMES_KEY, {})
    if write.name_before is None:
        names.pop(write.label, None)
    else:
        names[write.label] = write.name_before
    layer.refresh()
    return int(still.sum())
