"""napari writer: a Labels layer → NIfTI/NRRD/MHA with the source image's exact geometry, or a
DICOM-SEG (.dcm) referencing the DICOM series the image was read from. What MedPLIB wrote into the
layer (prompts, questions, answers, model) goes beside it as ``OUT.provenance.json``."""

from __future__ import annotations

from medplib_runtime.imaging.io import write_labels as _write

from ._layers import volume_like
from .label_writes import NAMES_KEY
from .provenance_log import provenance_of


def write_labels(path: str, data, meta: dict) -> list[str]:
    metadata = meta.get("metadata", {}) or {}
    like = volume_like(data, metadata, meta.get("scale", (1,) * data.ndim), meta.get("translate", (0,) * data.ndim))
    names = {int(k): str(v) for k, v in metadata.get(NAMES_KEY, {}).items()}
    provenance = provenance_of(metadata, like.source)
    return [str(_write(data, like=like, path=path, provenance=provenance, segment_names=names or None))]
