"""``medplib build-data`` (labelled volumes → MeCoVQA-format dataset) and ``medplib eval DATA.json``
(MedPLIB's metrics over a MeCoVQA-format file). See docs/data.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError


def add_data_parsers(sub) -> None:
    from ..presets import DEFAULT_PRESET, PRESETS
    from .runtime_args import add_remote_args

    p = sub.add_parser("build-data", help="labelled volumes → MeCoVQA-format dataset (PNG slices, masks, JSON)")
    p.add_argument("--out", required=True, help="output folder (images/, masks/, train/val/test.json, manifest.json)")
    p.add_argument("--cases", action="append", default=[], help="JSON list of cases (image, label, meta); repeatable")
    p.add_argument("--case", nargs=3, action="append", default=[], metavar=("IMAGE", "LABEL", "META"),
                   help="one case: image, label volume and metadata JSON; repeatable")
    p.add_argument("--phantoms", type=int, default=0, metavar="N", help="add N CT and N MR ellipsoid phantoms")
    p.add_argument("--mni152", action="store_true", help="add nilearn's MNI152 with grey/white matter labels")
    p.add_argument("--mni152-lesions", type=int, default=0, metavar="N",
                   help="add N copies of MNI152, each with a synthetic lesion labelled \"lesion\" alone (training split)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data")
    p.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions of volumes (per modality)")
    p.add_argument("--max-slices", type=int, default=12, help="labelled slices per volume")
    p.add_argument("--empty-slices", type=int, default=2, help="unlabelled slices per volume")
    p.add_argument("--r-per-label", type=int, default=2, help="region questions per labelled structure and slice")
    p.add_argument("--r-is-per-label", type=int, default=0,
                   help="extra closed 'is the region the X?' questions per structure and slice (3 in 4 answered yes)")
    p.add_argument("--r-is-pairs", type=int, default=0,
                   help="'is the region the X?' pairs per labelled structure and slice, one 'yes' and one 'no'")
    p.add_argument("--r-is-modes", default="freeform",
                   help="comma-separated region kinds the pairs are asked on, one drawn per pair: point,box,freeform "
                        "(default freeform)")
    p.add_argument("--region-after", type=float, default=0.0,
                   help="share (0-1) of region questions written with the region token after the question, as the "
                        "chat sends a question without <region> (default 0)")
    p.add_argument("--g-region", type=float, default=0.0,
                   help="share (0-1) of single-structure grounding questions asked again with a region on the "
                        "structure after the question, as the chat sends them with a region picked (default 0)")
    p.add_argument("--c-per-slice", type=int, default=4, help="complex (whole-slice) questions per slice")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    p.set_defaults(func=cmd_build_data)

    p = sub.add_parser("eval", help="MedPLIB's metrics (mDice, open P/R/F1, closed accuracy) over a MeCoVQA JSON")
    p.add_argument("data", help="MeCoVQA/LLaVA-format JSON list")
    p.add_argument("--image-folder", default=None, help="where record paths start (default: the JSON's folder)")
    p.add_argument("--predictions", default=None, help="JSONL output (default: DATA_STEM.predictions.jsonl here)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N records of the file (with --skip-bad, the bad ones among them are left out)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    p.add_argument("--threshold", type=float, default=None, help="mask probability threshold (preset default)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="the model (local runtime)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out records that cannot be asked (missing or unreadable files, reserved tokens in a "
                        "question, ...) and list them in the report, instead of stopping at the first")
    add_remote_args(p)
    p.set_defaults(func=cmd_eval)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise InputError(f"--split {text!r}: expected three non-negative fractions TRAIN,VAL,TEST")
    return values  # type: ignore[return-value]


def cmd_build_data(args: argparse.Namespace) -> int:
    from ..data.builder import BuildConfig, build_dataset
    from ..data.cases import case_from_dict, load_cases
    from ..data.sources import write_mni152_case, write_mni152_lesion_case, write_phantom_case

    config = BuildConfig(seed=args.seed, fractions=_fractions(args.split), max_slices_per_volume=args.max_slices,
                         empty_slices_per_volume=args.empty_slices, r_per_label=args.r_per_label,
                         r_is_per_label=args.r_is_per_label, r_is_pairs=args.r_is_pairs,
                         r_is_modes=tuple(m.strip() for m in args.r_is_modes.split(",") if m.strip()),
                         region_after=args.region_after, g_region=args.g_region,
                         c_per_slice=args.c_per_slice)
    cases = [c for path in args.cases for c in load_cases(path)]
    for i, (image, label, meta) in enumerate(args.case):
        cases.append(case_from_dict({"image": image, "label": label, "meta": meta}, base=Path.cwd(),
                                    where=f"--case #{i + 1}"))
    sources = Path(args.out) / "sources"
    for i in range(args.phantoms):
        for modality in ("CT", "MR"):
            cases.append(write_phantom_case(sources, i, modality=modality, seed=args.seed))
    if args.mni152:
        cases.append(write_mni152_case(sources))
    for i in range(args.mni152_lesions):  # one template, so never a held-out patient
        cases.append(write_mni152_lesion_case(sources, i, seed=args.seed, split="train"))
    if not cases:
        raise InputError("no cases: give --cases FILE, --case IMAGE LABEL META, --phantoms N, --mni152 or --mni152-lesions N")
    report = build_dataset(cases, args.out, config, overwrite=args.overwrite,
                           progress=lambda cid: print(f"building {cid}", file=sys.stderr))
    print(json.dumps({"out": str(report.out_dir), "splits": report.splits, "counts": report.counts,
                      "seconds": round(report.seconds, 2)}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.runner import evaluate
    from ..evaluation.screening import screen_dataset
    from ..validation import check_generation
    from .checks import check_output
    from .runtime_args import runtime_from_args

    check_generation(max_new_tokens=args.max_new_tokens, threshold=args.threshold)
    out = args.predictions or f"{Path(args.data).stem}.predictions.jsonl"
    # a run replaces its predictions file (running again is the way to refresh it), never the data it reads
    check_output(out, {"DATA": args.data, "--glue": args.glue}, force=True, option="--predictions")
    # every record checked before a model loads: a bad one stops the run now, or is left out with --skip-bad
    screened = screen_dataset(args.data, image_folder=args.image_folder, limit=args.limit)
    if screened.skipped and not args.skip_bad:
        raise InputError(screened.refusal())
    if not screened.dataset.records:
        raise InputError(f"dataset {args.data}: no record can be asked")
    if not Path(out).resolve().parent.is_dir():
        raise InputError(f"cannot write predictions {out}: its folder does not exist")
    runtime = runtime_from_args(args)
    try:
        report = evaluate(runtime, screened.dataset, predictions=out, max_new_tokens=args.max_new_tokens,
                          threshold=args.threshold, model_id=args.preset, skip_bad=args.skip_bad,
                          skipped=screened.skipped,
                          progress=lambda i, n: print(f"\r{i + 1}/{n}", end="", file=sys.stderr))
    finally:
        runtime.close()
        print(file=sys.stderr)  # end the progress line, also before an error's line
    if report.skipped:
        print(f"medplib: warning: {len(report.skipped)} record(s) left out (listed in the report): "
              f"{report.skipped[0].reason}", file=sys.stderr)
    if report.untrained_parts:
        print(f"medplib: warning: untrained parts {', '.join(report.untrained_parts)}: these numbers are not"
              " meaningful yet", file=sys.stderr)
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.headline() + "\n\n" + report.table())
    return 0
