"""The ``medplib`` command: info, segment, ask, serve, bench.

Contract (other tools rely on it): rows/cols are voxel indices in the slice as numpy sees
the SimpleITK array, ``(z, y, x)`` order; ``--slice K --axis A`` picks ``array.take(K, A)``.
Bad input prints one line ``medplib: error: ...`` to stderr and exits 2, never a traceback
(set ``MEDPLIB_DEBUG=1`` to see one for an unexpected failure); usage errors too, and control
characters in it are shown escaped. Inputs are checked before a model loads; ``--out`` never
replaces an input, and replaces another existing file only with ``--force`` (cli_checks.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from ..errors import InputError, MedplibError
from ..presets import DEFAULT_PRECISION, DEFAULT_PRESET, PRECISIONS, PRESETS
from ..schemas import AskRequest, Box, Point, Prompt, SegmentRequest, SliceRef
from .checks import (
    OneLineParser,
    check_output,
    check_port_free,
    error_line,
    port_number,
    printable,
    region_mask_from_file,
)
from .runtime_args import add_remote_args, add_weights_args, runtime_from_args, weights_kwargs


def _parse_box(text: str) -> Box:
    try:
        r0, c0, r1, c1 = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--box {text!r}: expected four numbers R0,C0,R1,C1") from None
    return Box(r0, c0, r1, c1)


def _parse_point(text: str) -> Point:
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        label = int(parts[2]) if len(parts) == 3 else 1
        return Point(float(parts[0]), float(parts[1]), label)
    except ValueError:
        raise InputError(f"--point {text!r}: expected R,C or R,C,L with L 1 (foreground) or 0 (background)") from None


def _prompt(args, volume, ref: SliceRef) -> Prompt | None:
    """The prompt (or region), checked against the slice here: a bad one fails before the model loads."""
    from ..imaging.slicing import slice_shape
    from ..schemas import validate_prompt

    given = [n for n in ("box", "point", "region_mask") if getattr(args, n)]
    if len(given) > 1 and not (set(given) == {"box", "point"}):
        raise InputError("give either --region-mask or --box/--point, not both")
    if args.region_mask:
        prompt = Prompt(mask=region_mask_from_file(args.region_mask, volume, ref))
    else:
        box = _parse_box(args.box) if args.box else None
        points = tuple(_parse_point(p) for p in (args.point or ()))
        if box is None and not points:
            return None
        prompt = Prompt(box=box, points=points)
    validate_prompt(prompt, slice_shape(volume.shape, axis=ref.axis))  # the pixel grid (an RGB picture's too)
    return prompt




def _load(args, *, whole: bool = False):
    """The image and the slice, checked: values the model can compute with, and no NaN/inf on the slice
    (``whole``: in the volume, for --propagate). A 2D image (grey or RGB) is one slice: ``--slice`` may be
    left out. What reading changed (an alpha channel dropped, ...) is said on stderr."""
    from pathlib import Path

    from ..imaging.io import read_volume
    from ..imaging.slicing import check_slice, take_slice
    from ..validation import check_finite, check_image

    volume = read_volume(args.image, allow_2d=True)
    for note in volume.metadata.get("notes", ()):
        print(f"medplib: note: {args.image}: {printable(note)}", file=sys.stderr)
    if args.slice is None and volume.ndim == 3:
        raise InputError(f"{args.image} is a 3D volume {volume.shape}: give --slice K (0–{volume.shape[args.axis] - 1}"
                         f" along --axis {args.axis})")
    ref = SliceRef(axis=args.axis, index=0 if args.slice is None else args.slice)
    check_slice(volume.shape, axis=ref.axis, index=ref.index)
    check_image(volume.array)
    out = getattr(args, "out", None)
    if volume.ndim == 2 and whole:
        raise InputError("--propagate needs a 3D volume; this image is 2D")
    if out and volume.ndim == 3 and Path(out).suffix.lower() == ".png":
        raise InputError(f"cannot write {Path(out).name}: a PNG holds the labels of one 2D image, this one is 3D "
                         f"{volume.shape}; use .nii.gz, .nrrd or .mha")
    if whole:
        check_finite(volume.array, f"the image {args.image}")
    else:
        where = "the image" if volume.ndim == 2 else f"slice {ref.index} (axis {ref.axis})"
        plane = volume.array if volume.ndim == 2 else take_slice(volume.array, axis=ref.axis, index=ref.index)
        check_finite(plane, where)
    return volume, ref


def _inputs(args) -> dict[str, str | None]:
    """The files a command reads, by the name the user gave them: an output must not be one of them."""
    return {"IMAGE": args.image, "--region-mask": getattr(args, "region_mask", None),
            "--labels": getattr(args, "labels", None), "--glue": getattr(args, "glue", None)}


def _write_masks(masks: list[np.ndarray], volume, ref: SliceRef, out: str, provenance=None) -> dict:
    """One label volume with IMAGE's geometry; mask i gets label i+1 on the chosen slice."""
    from ..imaging.io import write_labels
    from ..imaging.slicing import mask_area_mm2

    labels = np.zeros(volume.shape, dtype=np.uint8)  # the pixel grid: an RGB picture's labels are (y, x)
    plane = labels if labels.ndim == 2 else np.moveaxis(labels, ref.axis, 0)[ref.index]  # a view
    area = 0.0
    for i, mask in enumerate(masks, start=1):
        plane[(mask != 0) & (plane == 0)] = i  # earlier masks keep their voxels
        area += mask_area_mm2(mask != 0, volume.spacing, ref.axis)
    path = write_labels(labels, like=volume, path=out, provenance=provenance)
    # a picture's spacing is 1 per pixel, not mm: its area is in pixels
    return {"out": str(path), "voxels": int(np.count_nonzero(labels)),
            ("area_mm2" if volume.spacing_known else "area_px"): round(area, 3)}


def _check_dicom_seg_target(out: str | None, volume) -> None:
    """--out x.dcm: a DICOM-SEG needs an image read from a DICOM series; said before the model loads."""
    if out and out.lower().endswith(".dcm"):
        from ..imaging.dicom_seg import check_seg_target

        check_seg_target(out, like=volume)


def _provenance(runtime, args, *, prompts=(), turns=()):
    """What made the labels an --out file holds (written beside it as OUT.provenance.json)."""
    from ..provenance import PromptRecord, Provenance

    return Provenance.from_runtime(runtime.info(), prompts=tuple(PromptRecord.from_prompt(p, ref) for p, ref in prompts
                                                                 if p is not None),
                                   turns=tuple(turns), source_image=args.image)


def cmd_info(args) -> int:
    runtime = runtime_from_args(args)
    info = runtime.info()
    print(json.dumps({
        "preset": info.preset, "device": info.device, "transport": info.transport,
        "parts": [{"name": p.name, "source": p.source, "trained": p.trained} for p in info.parts],
        "untrained": list(info.untrained()), "versions": info.versions,
    }, indent=2, ensure_ascii=False))
    runtime.close()
    return 0


def cmd_segment(args) -> int:
    from ..imaging.io import check_writable
    from ..validation import check_generation

    t0 = time.perf_counter()
    check_generation(threshold=args.threshold)
    check_output(args.out, _inputs(args), force=args.force)
    check_writable(args.out)
    volume, ref = _load(args, whole=args.propagate)
    _check_dicom_seg_target(args.out, volume)
    prompt = _prompt(args, volume, ref)
    if prompt is None:
        raise InputError("no prompt: give --box R0,C0,R1,C1, --point R,C[,L] or --region-mask PATH")
    runtime = runtime_from_args(args)
    key = runtime.set_image(volume.array, modality=args.modality, spacing=volume.spacing)
    result = runtime.segment(SegmentRequest(image_key=key, slice=ref, prompt=prompt, threshold=args.threshold))
    if args.propagate:
        from .volume import propagate_and_write

        summary = propagate_and_write(runtime, volume, ref, result.mask, args.out, args.modality,
                                      provenance=_provenance(runtime, args, prompts=((prompt, ref),)))
    else:
        summary = _write_masks([result.mask], volume, ref, args.out,
                               provenance=_provenance(runtime, args, prompts=((prompt, ref),)))
    summary.update({"slice": ref.index, "axis": ref.axis, "prompt": result.prompt_kind,
                    "score": round(result.score, 4), "time_s": round(time.perf_counter() - t0, 3),
                    "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()}})
    print(json.dumps(summary, ensure_ascii=False))
    runtime.close()
    return 0


def cmd_ask(args) -> int:
    from ..imaging.io import check_writable
    from ..validation import check_generation, check_question

    # before the volume and the model load: a question that cannot be asked fails in a second
    check_question(args.question, region=bool(args.box or args.point or args.region_mask))
    check_generation(max_new_tokens=args.max_new_tokens, threshold=args.threshold)
    if args.out:
        check_output(args.out, _inputs(args), force=args.force)
        check_writable(args.out)
    volume, ref = _load(args)
    _check_dicom_seg_target(args.out, volume)
    region = _prompt(args, volume, ref)
    found = None
    if args.labels:
        from .volume import measurements_of_args

        found = measurements_of_args(args)
    runtime = runtime_from_args(args)
    key = runtime.set_image(volume.array, modality=args.modality, spacing=volume.spacing)
    result = runtime.ask(AskRequest(image_key=key, slice=ref, question=args.question, region=region,
                                    max_new_tokens=args.max_new_tokens, threshold=args.threshold))
    if result.untrained_parts:
        print("medplib: warning: untrained parts (" + ", ".join(result.untrained_parts)
              + "): this answer is not grounded in the image yet", file=sys.stderr)
    for note in result.notes:
        print(f"medplib: note: {printable(note)}", file=sys.stderr)
    from ..conversation import readable_answer

    answer = readable_answer(result.text)  # "Sure, it is [mask 1]." — never the raw <SEG>
    measured = None
    if args.labels:
        from .volume import measured_answer_for

        measured = measured_answer_for(args.question, answer, args, found)
    if measured is None:  # a modality question: the file's answer (header or Hounsfield units), then the model's
        from .volume import file_fact_for
        measured = file_fact_for(args.question, answer, volume)
    if measured is not None:
        print(measured)
    else:
        print(answer if answer.strip() else "(the model produced no answer text)")
    if result.masks:
        if args.out:
            from ..schemas import Turn

            summary = _write_masks(list(result.masks), volume, ref, args.out, provenance=_provenance(
                runtime, args, prompts=((region, ref),), turns=(Turn(args.question, answer),)))
            print(json.dumps({"masks": len(result.masks), **summary}, ensure_ascii=False), file=sys.stderr)
        else:
            print(f"medplib: {len(result.masks)} mask(s) returned; pass --out LABELS to write them", file=sys.stderr)
    if args.timings:
        from .cold_start import timings_line

        print(timings_line(runtime, result), file=sys.stderr)
    runtime.close()
    return 0


# the server's guards against slow or greedy clients (docs/remote.md); unset: ServerConfig's defaults
SERVE_GUARDS = (
    ("--header-timeout-s", float, "request headers must arrive within this many seconds (default 10)"),
    ("--body-timeout-s", float, "and the body within this many once the headers are in (default 60)"),
    ("--max-connections", int, "open connections; past it the longest-stalled one is closed (default 256)"),
    ("--max-inflight-body-mb", float, "request bodies being received or decoded at once; more get 503 (default 256)"),
    ("--max-slice-pixels", int, "pixels of one uploaded slice (default 4096×4096)"),
)


def _guard_names() -> list[str]:
    return [flag[2:].replace("-", "_") for flag, _, _ in SERVE_GUARDS]


def cmd_serve(args) -> int:
    from ..server.config import ServerConfig, check_exposure, token_from_env
    from ..server.run import serve

    config = ServerConfig(host=args.host, port=args.port, token=args.token or token_from_env(), preset=args.preset,
                          device=args.device, precision=args.precision, preload=args.preload,
                          max_body_mb=args.max_body_mb,
                          request_timeout_s=args.request_timeout_s, max_queue=args.max_queue,
                          client_cache_mb=args.client_cache_mb, total_cache_mb=args.total_cache_mb, glue=args.glue,
                          **weights_kwargs(args),
                          **{name: getattr(args, name) for name in _guard_names() if getattr(args, name) is not None})
    check_exposure(config)
    check_port_free(config.host, config.port)  # before the model loads: uvicorn would fail only after it
    return serve(config)


def cmd_bench(args) -> int:
    from ..bench.quick import run_bench

    return run_bench(args)


def _add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="NIfTI/NRRD/MHA file, DICOM folder, or a 2D PNG/JPEG/TIFF picture (grey or RGB)")
    p.add_argument("--slice", type=int, default=None, help="slice index K along --axis (a 2D image: 0, the default)")
    p.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="0 = z (default), 1 = y, 2 = x")
    p.add_argument("--box", help="R0,C0,R1,C1 in voxel indices of the slice")
    p.add_argument("--point", action="append", help="R,C[,L] (L=1 foreground, 0 background); repeatable")
    p.add_argument("--region-mask", help="mask file: slice-shaped 2D (.npy/.png/...) or a label volume like IMAGE")
    p.add_argument("--modality", default="auto", choices=("auto", "CT", "MR", "other"),
                   help="how the image is windowed: auto (from the file), CT, MR or other")
    p.add_argument("--threshold", type=float, default=None, help="mask probability threshold (preset default)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="the model (local runtime)")
    add_remote_args(p)




def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="medplib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="JSON: preset, parts (trained or not), device, versions")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="the model (local runtime)")
    add_remote_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="serve the runtime over HTTP for remote clients (FastAPI + uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; others need a token)")
    p.add_argument("--port", type=port_number, default=8765, help="the TCP port to listen on (default 8765)")
    p.add_argument("--token", default=None, help="require this bearer token (default: $MEDPLIB_TOKEN)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="the model (local runtime)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (bf16 autocast on CUDA)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help=f"the LLM's weights: {', '.join(PRECISIONS)} (weight-only, CPU; default {DEFAULT_PRECISION})")
    p.add_argument("--preload", default="all", choices=("all", "segment", "none"),
                   help="model parts loaded at start-up (default all)")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body")
    p.add_argument("--request-timeout-s", type=float, default=120.0, help="per-request limit, queueing included")
    p.add_argument("--max-queue", type=int, default=16, help="model requests in flight or waiting; more get 503")
    p.add_argument("--client-cache-mb", type=float, default=256.0, help="uploaded slices kept per client")
    p.add_argument("--total-cache-mb", type=float, default=1024.0, help="uploaded slices kept in all")
    p.add_argument("--glue", default=None, metavar="FILE",
                   help="serve this glue instead of the shipped one, e.g. a training run's adapter.safetensors")
    add_weights_args(p)
    for flag, kind, what in SERVE_GUARDS:
        p.add_argument(flag, type=kind, default=None, help=what)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("segment", help="box/points/region mask on one slice → label volume")
    _add_image_args(p)
    p.add_argument("--out", required=True, help="output label volume (.nii.gz/.nrrd/.mha), IMAGE's geometry; "
                                                ".png for a 2D image")
    p.add_argument("--propagate", action="store_true", help="follow the structure through the volume (3D)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never an input file)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("ask", help="question about a slice (optionally a region on it) → answer (+ masks)")
    _add_image_args(p)
    p.add_argument("question", help='the question, e.g. "Segment the lesion." or "Is this a CT image?"')
    p.add_argument("--out", help="write the masks of every <SEG> here (label i for the i-th)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never an input file)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    p.add_argument("--labels", help="label volume: quantitative questions are answered by measuring it")
    p.add_argument("--label", type=int, action="append", help="with --labels: only these label ids")
    p.add_argument("--timings", action="store_true", help="print where the time went, one line on stderr")
    p.set_defaults(func=cmd_ask)

    from .propagate import add_propagate_parser
    from .train import add_train_parser
    from .volume import add_volume_parsers

    add_train_parser(sub)
    add_volume_parsers(sub)
    add_propagate_parser(sub)

    from .data import add_data_parsers

    add_data_parsers(sub)

    p = sub.add_parser("bench", help="speed/memory table (median, p90) on a real volume")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="the model (local runtime)")
    p.add_argument("--repeats", type=int, default=7, help="runs per measure; the table shows their median and p90")
    p.add_argument("--quick", action="store_true", help="fewer repeats, skip the scrolling simulation")
    p.add_argument("--image", default=None, help="volume to use (default: sample_data brain1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--remote", nargs="?", const="spawn", default=None, metavar="URL",
                   help="local vs remote latency (no URL: start a `medplib serve` on a free loopback port)")
    add_weights_args(p)  # medplib-7b: the same loading options (and refusals) as every other model command
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .cold_start import exit_without_final_collection

    exit_without_final_collection()
    try:
        return int(args.func(args) or 0)
    except MedplibError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medplib: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `medplib measure ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except Exception as exc:  # noqa: BLE001 — a bug; one line unless debugging
        if os.environ.get("MEDPLIB_DEBUG"):
            raise
        print(printable(f"medplib: internal error: {type(exc).__name__}: {exc}") + " (MEDPLIB_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
