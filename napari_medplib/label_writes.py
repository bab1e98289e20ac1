"""Writing a mask into a Labels layer on one slice: protected, undoable, no Qt here.

Voxels of *other* labels are never overwritten unless ``overwrite`` is set. Each write keeps
the slice's previous values so ``undo`` restores the layer exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import SliceRef

NAMES_KEY = "medplib_label_names"


@dataclass(frozen=True)
class Write:
    layer_name: str
    slice: SliceRef
    before: np.ndarray  # the slice's values before the write
    changed: int


def _plane(data: np.ndarray, ref: SliceRef) -> np.ndarray:
    return data if data.ndim == 2 else np.moveaxis(data, ref.axis, 0)[ref.index]  # a view


def write_mask(layer, mask: np.ndarray, ref: SliceRef, *, label: int, name: str | None = None,
               overwrite: bool = False) -> Write:
    """Paint ``mask`` (slice-shaped) with ``label`` on ``ref``'s slice of ``layer``."""
    if label <= 0:
        raise InputError("label id must be ≥ 1 (0 is background)")
    plane = _plane(layer.data, ref)
    if plane.shape != mask.shape:
        raise InputError(f"target layer {layer.name!r} slice is {plane.shape}, the mask {mask.shape}")
    if label > np.iinfo(layer.data.dtype).max:
        raise InputError(f"label {label} does not fit the layer's {layer.data.dtype}")
    before = plane.copy()
    target = mask.astype(bool)
    if not overwrite:
        target &= (plane == 0) | (plane == label)
    plane[target] = label
    if name:
        layer.metadata.setdefault(NAMES_KEY, {})[int(label)] = name
    layer.refresh()
    return Write(layer.name, ref, before, int(np.count_nonzero(plane != before)))


@dataclass(frozen=True)
class VolumeWrite:
    """A 3D write (propagation): the changed voxels and what they held, so undo is exact."""

    layer_name: str
    where: tuple[np.ndarray, ...]  # np.nonzero-style indices of the changed voxels
    before: np.ndarray
    changed: int


def write_volume(layer, mask: np.ndarray, *, label: int, name: str | None = None,
                 overwrite: bool = False) -> VolumeWrite:
    """Paint a whole-volume ``mask`` with ``label`` in one undoable write (other labels kept unless ``overwrite``)."""
    if label <= 0:
        raise InputError("label id must be ≥ 1 (0 is background)")
    data = layer.data
    if data.shape != mask.shape:
        raise InputError(f"target layer {layer.name!r} is {data.shape}, the mask {mask.shape}")
    if label > np.iinfo(data.dtype).max:
        raise InputError(f"label {label} does not fit the layer's {data.dtype}")
    target = np.asarray(mask).astype(bool) & (data != label)
    if not overwrite:
        target &= data == 0
    where = np.nonzero(target)
    before = data[where].copy()
    data[where] = label
    if name:
        layer.metadata.setdefault(NAMES_KEY, {})[int(label)] = name
    layer.refresh()
    return VolumeWrite(layer.name, where, before, int(before.size))


def undo_write(layer, write: "Write | VolumeWrite") -> None:
    if isinstance(write, VolumeWrite):
        layer.data[write.where] = write.before
    else:
        _plane(layer.data, write.slice)[...] = write.before
    layer.refresh()
