"""napari writer: a Labels layer → NIfTI/NRRD/MHA with the source image's exact geometry."""

from __future__ import annotations

from medplib_runtime.imaging.io import write_labels as _write

from ._layers import volume_like


def write_labels(path: str, data, meta: dict) -> list[str]:
    like = volume_like(data, meta.get("metadata", {}), meta.get("scale", (1,) * data.ndim),
                       meta.get("translate", (0,) * data.ndim))
    return [str(_write(data, like=like, path=path))]
