"""The volume commands: ``medplib measure``, ``segment --propagate``, ``ask --labels`` and
``medplib bench-propagate``. Same contract as cli.py: JSON on stdout, one-line errors, exit 2."""

from __future__ import annotations

import json

import numpy as np

from ..errors import InputError
from ..imaging.geometry import geometry_differences


def add_volume_parsers(sub) -> None:
    p = sub.add_parser("measure", help="JSON: volume (mL), diameter (mm), centroid (LPS/RAS), intensity of labels")
    p.add_argument("image", help="the image (its geometry and intensities)")
    p.add_argument("labels", help="label volume with the image's geometry")
    p.add_argument("--label", type=int, action="append", help="only these label ids (default: all)")
    p.add_argument("--modality", default="auto", choices=("auto", "CT", "MR", "other"),
                   help="how the image is windowed: auto (from the file), CT, MR or other")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("bench-propagate", help="table: 3D propagation time vs encoder time, Dice and volume error")
    p.add_argument("--repeats", type=int, default=3, help="walks per case; speed is their median")
    p.add_argument("--data", default=None, help="folder with *_image.nrrd/*_label.nrrd (default ../shared/data)")
    p.set_defaults(func=cmd_bench_propagate)


def load_pair(image_path: str, labels_path: str):
    from ..imaging.io import read_labels, read_volume

    image = read_volume(image_path)
    labels = read_labels(labels_path, like=image)  # a DICOM-SEG lands on its series' grid
    if labels.array.shape != image.array.shape:
        raise InputError(f"labels {labels_path} have shape {labels.array.shape}, the image {image.array.shape}")
    differ = geometry_differences(labels, image)
    if differ:
        raise InputError(f"labels {labels_path} do not share the image's geometry (different {differ}): "
                         f"positions and sizes would be measured in the wrong place")
    return image, labels




def measurements_for(image, labels, label_ids=None, modality: str = "auto"):
    from ..volume.measure import measure_labels

    return measure_labels(labels.array, spacing=image.spacing, origin=image.origin, direction=image.direction,
                          image=image.array, modality=modality,
                          label_ids=tuple(label_ids) if label_ids else None)


def cmd_measure(args) -> int:
    image, labels = load_pair(args.image, args.labels)
    found = measurements_for(image, labels, args.label, args.modality)
    print(json.dumps([m.as_dict() for m in found], indent=2, ensure_ascii=False))
    return 0


def propagate_and_write(runtime, volume, ref, seed_mask: np.ndarray, out: str, modality: str,
                        provenance=None) -> dict:
    """`segment --propagate`: the seed mask through the volume, written as label 1 with IMAGE's geometry."""
    from ..imaging.io import write_labels
    from ..volume.propagation import propagate

    if volume.array.ndim != 3:
        raise InputError("--propagate needs a 3D volume; this image is 2D")
    result = propagate(runtime, volume.array, axis=ref.axis, seed_index=ref.index, seed_mask=seed_mask,
                       modality=modality)
    path = write_labels(result.mask, like=volume, path=out, provenance=provenance)
    voxels = int(result.mask.sum())
    confidence = result.confidence
    return {"out": str(path), "voxels": voxels, "volume_ml": round(voxels * float(np.prod(volume.spacing)) / 1000, 4),
            "slices": [result.slices[0], result.slices[-1]], "unsure": list(result.unsure), "stopped": result.stopped,
            "propagation_s": round(result.seconds, 2),
            "per_slice": [{"index": i, "confidence": round(confidence[i], 3)} for i in result.slices]}


def measurements_of_args(args):
    """`ask --labels`: the label volume measured, before the model loads (a bad file fails at once)."""
    image, labels = load_pair(args.image, args.labels)
    return measurements_for(image, labels, args.label, args.modality)


def measured_answer_for(question: str, model_text: str, args, found=None) -> str | None:
    """`ask --labels`: the measured answer for the label volume the user gave, if the question asks a quantity."""
    from ..volume.measured_answers import measured_answer

    found = measurements_of_args(args) if found is None else found
    answer = measured_answer(question, found, model_text=model_text, source=f"labels {args.labels}")
    return None if answer is None else answer.text


def file_fact_for(question: str, model_text: str, volume) -> str | None:
    """`ask`: the file's own answer to a modality question (DICOM/NRRD header, else Hounsfield units), or a note
    where the question or the model's answer names a modality the file contradicts; then the model's text."""
    from ..volume.file_facts import file_fact

    fact = file_fact(question, volume.metadata, volume.array, model_text=model_text)
    return None if fact is None else fact.text


def cmd_bench_propagate(args) -> int:
    from ..bench.propagation import run

    return run(args)


__all__ = ["add_volume_parsers", "file_fact_for", "load_pair", "measured_answer_for",
           "measurements_of_args", "propagate_and_write"]
