"""Prompts drawn in napari → a runtime Prompt on the image's current slice (no Qt here).

World coordinates are the common ground: each prompt vertex goes prompt-layer data → world →
image data, so scale, translate and a different scale on the prompt layer are honoured. The
slice axis is the image axis not displayed (2D view); prompts on other slices are ignored and
reported. Shapes: rectangle/ellipse → box; polygon/path → region mask. Points: clicks (a
``label`` feature of 0 marks background). Labels: the painted voxels on the slice → region mask.
An RGB image layer (``rgb=True``, data ``(y, x, 3)``) is a 2D image: its labels are :func:`grid_shape`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medplib_runtime.errors import InputError
from medplib_runtime.schemas import Box, Point, Prompt, SliceRef


@dataclass(frozen=True)
class CapturedPrompt:
    slice: SliceRef
    prompt: Prompt
    ignored: int  # prompts found on other slices


def grid_shape(image_layer) -> tuple[int, ...]:
    """The image layer's pixel grid: its data's shape, without the channels of an RGB layer. A Labels layer
    for the image (prompts, predictions) has this shape."""
    shape = tuple(image_layer.data.shape)
    return shape[:-1] if image_layer.rgb else shape


def current_slice(viewer, image_layer) -> SliceRef:
    """The image's slice under the viewer's current position along the non-displayed axis."""
    ndim = image_layer.ndim
    if ndim == 2:
        return SliceRef(axis=0, index=0)
    if ndim != 3:
        raise InputError(f"image layer {image_layer.name!r} is {ndim}D; a 2D or 3D image is needed")
    if viewer.dims.ndisplay != 2:
        raise InputError("switch the viewer to 2D to draw prompts on a slice")
    world_axis = viewer.dims.not_displayed[-1]
    layer_axis = world_axis - (viewer.dims.ndim - ndim)
    data_pos = image_layer.world_to_data(viewer.dims.point[-ndim:])
    index = int(np.round(data_pos[layer_axis]))
    if not 0 <= index < image_layer.data.shape[layer_axis]:
        raise InputError(f"the current position is outside image {image_layer.name!r}")
    return SliceRef(axis=layer_axis, index=index)


def _to_image(image_layer, prompt_layer, coords: np.ndarray) -> np.ndarray:
    """Prompt-layer data coordinates (N×D) → image data coordinates (N×image.ndim)."""
    world = np.array([prompt_layer.data_to_world(c) for c in np.atleast_2d(coords)])
    return np.array([image_layer.world_to_data(w[-image_layer.ndim:]) for w in world])


def _split(coords: np.ndarray, ref: SliceRef, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(in-plane row/col N×2) if every vertex lies on ``ref``'s slice, else None."""
    if ndim == 2:
        return coords[:, :2], np.zeros(len(coords))
    on = np.round(coords[:, ref.axis]).astype(int)
    if not (on == ref.index).all():
        return None
    return np.delete(coords, ref.axis, axis=1), on


def capture(viewer, image_layer, prompt_layer) -> CapturedPrompt:
    """The prompt on the current slice from a Shapes, Points or Labels layer."""
    from napari.layers import Labels, Points, Shapes

    grid = grid_shape(image_layer)
    if len(grid) not in (2, 3) or (image_layer.rgb and (len(grid) != 2 or image_layer.data.shape[-1] != 3)):
        raise InputError(f"image layer {image_layer.name!r} must be a 2D or 3D grey image or a 2D RGB one "
                         f"(RGBA: drop the alpha channel)")
    ref = current_slice(viewer, image_layer)
    shape2d = tuple(s for i, s in enumerate(grid) if image_layer.ndim == 2 or i != ref.axis)
    ignored = 0
    if isinstance(prompt_layer, Labels):
        if prompt_layer.data.shape != grid:
            raise InputError(f"scribble layer {prompt_layer.name!r} has shape {prompt_layer.data.shape}, "
                             f"the image {grid}")
        plane = prompt_layer.data if image_layer.ndim == 2 else np.take(prompt_layer.data, ref.index, axis=ref.axis)
        if not np.asarray(plane).any():
            raise InputError(f"nothing painted in {prompt_layer.name!r} on this slice")
        return CapturedPrompt(ref, Prompt(mask=np.asarray(plane) != 0), 0)
    if isinstance(prompt_layer, Points):
        labels = prompt_layer.features["label"].to_numpy() if "label" in prompt_layer.features else None
        points = []
        for i, c in enumerate(prompt_layer.data):
            split = _split(_to_image(image_layer, prompt_layer, c), ref, image_layer.ndim)
            if split is None:
                ignored += 1
                continue
            (row, col), = split[0]
            points.append(Point(float(row), float(col), int(labels[i]) if labels is not None else 1))
        if not points:
            raise InputError(_nothing("points", prompt_layer.name, ignored))
        return CapturedPrompt(ref, Prompt(points=tuple(points)), ignored)
    if isinstance(prompt_layer, Shapes):
        boxes, masks = [], []
        for data, kind in zip(prompt_layer.data, prompt_layer.shape_type):
            split = _split(_to_image(image_layer, prompt_layer, data), ref, image_layer.ndim)
            if split is None:
                ignored += 1
                continue
            rc = split[0]
            if kind in ("rectangle", "ellipse"):
                boxes.append(Box(rc[:, 0].min(), rc[:, 1].min(), rc[:, 0].max(), rc[:, 1].max()))
            else:
                masks.append(_rasterise(rc, shape2d, closed=kind == "polygon"))
        if masks:  # the newest free-form shape wins: it is what the user just drew
            return CapturedPrompt(ref, Prompt(mask=masks[-1]), ignored + len(boxes))
        if boxes:
            return CapturedPrompt(ref, Prompt(box=boxes[-1]), ignored + len(boxes) - 1)
        raise InputError(_nothing("shapes", prompt_layer.name, ignored))
    raise InputError(f"layer {prompt_layer.name!r} is not a Points, Shapes or Labels layer")


def _nothing(kind: str, name: str, ignored: int) -> str:
    extra = f" ({ignored} on other slices, ignored)" if ignored else ""
    return f"no {kind} in {name!r} on the current slice{extra}"


def _rasterise(rc: np.ndarray, shape2d: tuple[int, int], *, closed: bool) -> np.ndarray:
    from skimage.draw import line, polygon

    mask = np.zeros(shape2d, bool)
    if closed and len(rc) >= 3:
        rr, cc = polygon(rc[:, 0], rc[:, 1], shape=shape2d)
        mask[rr, cc] = True
    for (r0, c0), (r1, c1) in zip(rc[:-1], rc[1:]):  # the outline / the path itself
        rr, cc = line(int(round(r0)), int(round(c0)), int(round(r1)), int(round(c1)))
        keep = (rr >= 0) & (rr < shape2d[0]) & (cc >= 0) & (cc < shape2d[1])
        mask[rr[keep], cc[keep]] = True
    if not mask.any():
        raise InputError("the drawn shape lies outside the image")
    return mask
