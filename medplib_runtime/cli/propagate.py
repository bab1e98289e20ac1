"""``medplib propagate IMAGE --seeds LABELS --out OUT [--label N]``: masks drawn on a few slices → the
structure in 3D (gaps filled by shape-based interpolation refined by the model, beyond the outermost
seeds the guarded walk), with the slices it is unsure of listed. Same contract as the other commands:
JSON on stdout, one-line errors, exit 2; every input is checked before the model loads."""

from __future__ import annotations

import json

import numpy as np

from ..errors import InputError
from ..presets import DEFAULT_PRESET, PRESETS
from .checks import check_output
from .runtime_args import add_remote_args, runtime_from_args


def add_propagate_parser(sub) -> None:
    p = sub.add_parser("propagate", help="JSON: seed masks on a few slices → the structure in 3D, unsure slices "
                                         "listed (writes OUT and OUT.provenance.json)")
    p.add_argument("image", help="the 3D image (NIfTI, NRRD, MHA or a DICOM series folder)")
    p.add_argument("--seeds", required=True, metavar="LABELS",
                   help="label volume with the image's geometry holding the structure on one or more slices")
    p.add_argument("--out", required=True, help="where to write the 3D labels (.nii.gz, .nrrd, .mha; .dcm for DICOM)")
    p.add_argument("--label", type=int, default=None,
                   help="which label of --seeds to follow (default: the only one; written under the same id)")
    p.add_argument("--axis", type=int, default=0, choices=(0, 1, 2),
                   help="the axis the seed slices lie across (default 0: axial for a z, y, x volume)")
    p.add_argument("--modality", default="auto", choices=("auto", "CT", "MR", "other"),
                   help="how the image is windowed: auto (from the file), CT, MR or other")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="the model (local runtime)")
    add_remote_args(p)
    p.set_defaults(func=cmd_propagate)


def cmd_propagate(args) -> int:
    from ..imaging.io import check_writable, write_labels
    from ..validation import check_finite, check_image
    from ..volume.seeded import propagate_from_seeds, seed_slices
    from .volume import load_pair

    check_output(args.out, {"IMAGE": args.image, "--seeds": args.seeds, "--glue": args.glue}, force=args.force)
    check_writable(args.out)
    volume, seeds = load_pair(args.image, args.seeds)
    if volume.ndim != 3:
        raise InputError(f"{args.image} is 2D: propagation needs a 3D volume")
    check_image(volume.array)
    check_finite(volume.array, f"the image {args.image}")
    if args.out.lower().endswith(".dcm"):
        from ..imaging.dicom_seg import check_seg_target

        check_seg_target(args.out, like=volume)
    label, drawn = seed_slices(seeds.array, volume.shape, args.label, args.axis)  # one line, before the model
    runtime = runtime_from_args(args)
    result = propagate_from_seeds(runtime, volume.array, seeds.array, label=label, axis=args.axis,
                                  modality=args.modality)
    labels = result.mask.astype(np.uint16 if label > 255 else np.uint8) * label
    path = write_labels(labels, like=volume, path=args.out, provenance=_provenance(runtime, args, label, drawn))
    voxels = int(result.mask.sum())
    print(json.dumps({
        "out": str(path), "label": label, "voxels": voxels,
        "volume_ml": round(voxels * float(np.prod(volume.spacing)) / 1000, 4),
        "slices": [result.slices[0], result.slices[-1]], "seeds": list(result.seeds),
        "unsure": list(result.unsure), "stopped": result.stopped, "propagation_s": round(result.seconds, 2),
        "per_slice": [{"index": i, "source": result.source[i], "confidence": round(result.confidence[i], 3)}
                      for i in result.slices],
    }, ensure_ascii=False))
    runtime.close()
    return 0


def _provenance(runtime, args, label: int, drawn: dict):
    from ..provenance import PromptRecord, Provenance

    seeds = tuple(PromptRecord(args.axis, index, "seed", mask_voxels=int(mask.sum())) for index, mask in drawn.items())
    return Provenance.from_runtime(runtime.info(), prompts=seeds, source_image=args.image)
