"""Grounding on real volumes: does a returned mask land on the lesion, and does the model abstain when it
would not? (issue #35; docs/grounding.md). Prints markdown tables.

    python scripts/grounding_eval.py                  # held-out brain2, lung1 + seen brain1, lung2; modality questions
    python scripts/grounding_eval.py --calibrate OUT  # signals on the calibration set (never brain2/lung1) → OUT.jsonl

The held-out volumes come from ``python scripts/fetch_pyradiomics_cases.py`` (build/pyradiomics-extra/).
Calibration runs with abstention off (every mask returned) and keeps each mask's signals, so the
threshold table can be read off the JSONL (``--table OUT.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medplib_runtime.evaluation.metrics import dice_from_iou, mask_iou  # noqa: E402
from medplib_runtime.imaging.io import read_volume  # noqa: E402
from medplib_runtime.schemas import AskRequest, SliceRef  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "pyradiomics"
EXTRA = ROOT / "build" / "pyradiomics-extra"
PHRASINGS = ("Segment the lesion.", "Please segment the lesion in this image.", "Segment the tumor.",
             "Segment the nodule.")
MODALITY_QUESTIONS = (("Is this a CT image?", "CT"), ("Is this an MRI image?", "MR"))
WRONG_BELOW, GOOD_FROM = 0.3, 0.5  # Dice of a wrong mask / of a good one (the targets)


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    label: Path
    modality: str
    label_id: int = 1  # the asked structure's label value
    seen: bool = True  # in the glue's training or calibration data


HELD_OUT = (Case("brain2", EXTRA / "brain2_image.nrrd", EXTRA / "brain2_label.nrrd", "MR", seen=False),
            Case("lung1", EXTRA / "lung1_image.nrrd", EXTRA / "lung1_label.nrrd", "CT", seen=False))
SEEN = (Case("brain1", SHARED / "brain1_image.nrrd", SHARED / "brain1_label.nrrd", "MR"),
        Case("lung2", SHARED / "lung2_image.nrrd", SHARED / "lung2_label.nrrd", "CT"))
CALIBRATION_REAL = SEEN + (Case("breast1", SHARED / "breast1_image.nrrd", SHARED / "breast1_label.nrrd", "MR"),)


@dataclass(frozen=True)
class Asked:
    case: str
    slice: int
    question: str
    lesion_px: int  # of the asked structure on the slice
    expert: str  # the expert that wrote most of the answer
    text: str
    returned: bool
    abstained: bool
    confidence: float | None
    dice: float | None  # of the best-matching returned mask (or, with abstention off, of the mask withheld)
    evidence: dict | None = None
    seconds: float = 0.0


def lesion_slices(label: np.ndarray, label_id: int, *, n: int) -> list[int]:
    """Up to ``n`` slices evenly through the labelled range, the largest-lesion slice first."""
    area = (label == label_id).reshape(label.shape[0], -1).sum(1)
    on = np.nonzero(area >= 10)[0]
    if not len(on):
        return []
    largest = int(np.argmax(area))
    picks = [largest] + [int(on[i]) for i in np.linspace(0, len(on) - 1, n).round().astype(int)]
    return list(dict.fromkeys(picks))[:n]


def empty_slices(label: np.ndarray, *, n: int, margin: int = 2) -> list[int]:
    """Up to ``n`` slices without any label, at least ``margin`` slices from one, evenly spaced."""
    area = (label != 0).reshape(label.shape[0], -1).sum(1)
    on = np.nonzero(area)[0]
    far = [z for z in range(label.shape[0]) if not len(on) or np.abs(on - z).min() > margin]
    if not far:
        return []
    return [far[i] for i in dict.fromkeys(np.linspace(0, len(far) - 1, n).round().astype(int))]


class Spy:
    """Keeps the signals of each mask the asker grounds (its ``grounded`` wrapped)."""

    def __init__(self, asker) -> None:
        self.last = ()
        original = asker.grounded

        def grounded(*args, **kwargs):
            self.last = original(*args, **kwargs)
            return self.last

        asker.grounded = grounded


def ask(runtime, spy: Spy, key: str, case: Case, k: int, label2d: np.ndarray, question: str) -> Asked:
    spy.last = ()
    t0 = time.perf_counter()
    result = runtime.ask(AskRequest(image_key=key, slice=SliceRef(0, k), question=question, max_new_tokens=24))
    seconds = time.perf_counter() - t0
    ref = label2d == case.label_id
    found = spy.last
    masks = [g.mask for g in found]
    dice = max((dice_from_iou(mask_iou(m, ref)) for m in masks), default=None) if ref.any() else None
    best = max(found, key=lambda g: dice_from_iou(mask_iou(g.mask, ref)), default=None) if found else None
    evidence = None if best is None else {**{k2: v for k2, v in asdict(best.evidence).items() if k2 != "heat"},
                                           **(asdict(best.evidence.heat) if best.evidence.heat else {}),
                                           "confidence": best.confidence}
    shares = result.routing.overall() if result.routing else ()
    expert = result.routing.expert_names[int(np.argmax(shares))] if shares else "?"
    return Asked(case.id, k, question, int(ref.sum()), expert, result.text, bool(result.masks), result.abstained,
                 result.confidence, dice, evidence, seconds)


def run_case(runtime, spy, case: Case, slices: list[int], questions, out: list[Asked], sink=None) -> None:
    vol, lab = read_volume(case.image), read_volume(case.label)
    key = runtime.set_image(vol.array, modality=case.modality, spacing=vol.spacing)
    for k in slices:
        for q in questions:
            row = ask(runtime, spy, key, case, k, lab.array[k], q)
            out.append(row)
            print(f"{row.case} z{row.slice} {q!r}: {row.text!r} dice={row.dice} conf={row.confidence} "
                  f"({row.seconds:.1f} s)", file=sys.stderr)
            if sink:
                sink.write(json.dumps(asdict(row)) + "\n")
                sink.flush()
    runtime.forget(key)


def phantom_cases(folder: Path) -> list[Case]:
    """The glue data's validation phantoms (index 3, seed 0; docs/data.md), one case per structure asked."""
    from medplib_runtime.data.sources import write_phantom_case

    out = []
    for modality in ("CT", "MR"):
        spec = write_phantom_case(folder, 3, modality=modality, seed=0)
        for value, name in spec.labels.items():
            out.append(Case(f"phantom{modality.lower()}03-{name}", spec.image, spec.label, modality, int(value)))
    return out


def calibrate(runtime, spy, out_path: Path) -> None:
    runtime.asker().abstain_below = 0.0  # every mask returned: its signals are what we calibrate on
    rows: list[Asked] = []
    with out_path.open("w") as sink, tempfile.TemporaryDirectory() as tmp:
        for case in CALIBRATION_REAL:
            lab = read_volume(case.label).array
            run_case(runtime, spy, case, lesion_slices(lab, 1, n=4) + empty_slices(lab, n=3), ("Segment the lesion.",),
                     rows, sink)
        for case in phantom_cases(Path(tmp)):
            name = case.id.split("-", 1)[1]
            lab = read_volume(case.label).array
            run_case(runtime, spy, case, lesion_slices(lab, case.label_id, n=2), (f"Segment the {name}.",), rows, sink)
    print(threshold_table(rows))


def positive(row: Asked) -> bool:
    """A mask worth returning: the asked structure is on the slice and the mask finds it."""
    return row.dice is not None and row.dice >= GOOD_FROM


def threshold_table(rows: list[Asked]) -> str:
    scored = [r for r in rows if r.evidence]
    pos = [r for r in scored if positive(r)]
    neg = [r for r in scored if not positive(r)]
    lines = [f"{len(scored)} grounded asks: {len(pos)} good masks (Dice ≥ {GOOD_FROM}), {len(neg)} not "
             f"(Dice < {GOOD_FROM} or nothing to find)", "",
             "| threshold | good kept | bad returned | returned | wrong-mask rate of returned |", "|---|---|---|---|---|"]
    for t in (0.0, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
        kept_pos = sum(r.evidence["confidence"] >= t for r in pos)
        kept_neg = sum(r.evidence["confidence"] >= t for r in neg)
        n = kept_pos + kept_neg
        lines.append(f"| {t:.2f} | {kept_pos}/{len(pos)} | {kept_neg}/{len(neg)} | {n} | "
                     f"{kept_neg / n if n else 0:.2f} |")
    return "\n".join(lines)


def modality_rows(runtime, cases) -> list[str]:
    """The CLI's answer to a modality question: the model's text, then the file's fact where it has one."""
    from medplib_runtime.cli.volume import file_fact_for
    from medplib_runtime.conversation import readable_answer

    lines, right = ["| case | question | printed answer | correct |", "|---|---|---|---|"], 0
    for case in cases:
        vol = read_volume(case.image)
        key = runtime.set_image(vol.array, modality=case.modality, spacing=vol.spacing)
        k = int(np.argmax((read_volume(case.label).array != 0).reshape(vol.array.shape[0], -1).sum(1)))
        for q, asked in MODALITY_QUESTIONS:
            printed = file_fact_for(q, "", vol)  # the file's answer does not depend on the model's (cli/commands.py)
            if printed is None or "guess" in printed:  # the file does not say: the CLI prints the model's answer
                result = runtime.ask(AskRequest(image_key=key, slice=SliceRef(0, k), question=q, max_new_tokens=16))
                answer = readable_answer(result.text)
                printed = file_fact_for(q, answer, vol) or answer
            truth = "yes" if asked == case.modality else "no"
            ok = printed.strip().lower().startswith(truth)
            right += ok
            lines.append(f"| {case.id} | {q} | {printed[:90]} | {'✓' if ok else '✗'} |")
        runtime.forget(key)
    lines.append(f"\naccuracy {right}/{2 * len(cases)}")
    return lines


def rejudged(row: Asked) -> Asked:
    """``row`` (asked with abstention off) as the runtime answers it with grounding_trust's formula and threshold."""
    from medplib_runtime.modeling.ground_head import HeatScores
    from medplib_runtime.predictors.grounding_trust import ABSTAIN_BELOW, GroundingEvidence, confidence

    if not row.evidence:
        return row
    e = row.evidence
    heat = HeatScores(*(e[k] for k in ("peak", "blob_mean", "blob_share", "blob_cells")),
                      e.get("logit_peak", 0.0), e.get("logit_margin", 0.0)) if "peak" in e else None
    conf = confidence(GroundingEvidence(heat, e["decoder_iou"], e["agreement"], e["area_share"]))
    keep = conf >= ABSTAIN_BELOW
    return replace(row, returned=keep, abstained=not keep, confidence=conf, evidence={**e, "confidence": conf})


def grounding_table(rows: list[Asked]) -> str:
    lines = ["| case | seen | slice (lesion px) | question | expert | result | Dice | confidence |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seen = "held out" if r.case in {c.id for c in HELD_OUT} else "seen"
        result = "mask" if r.returned else ("abstained" if r.abstained else "no mask")
        dice = "–" if r.dice is None else f"{r.dice:.2f}" + ("" if r.returned else " (withheld)")
        conf = "–" if r.confidence is None else f"{r.confidence:.2f}"
        lines.append(f"| {r.case} | {seen} | {r.slice} ({r.lesion_px}) | {r.question} | {r.expert} | {result} | "
                     f"{dice} | {conf} |")
    for label, subset in (("held out", [r for r in rows if r.case in {c.id for c in HELD_OUT}]),
                          ("seen", [r for r in rows if r.case not in {c.id for c in HELD_OUT}])):
        ret = [r for r in subset if r.returned]
        dices = [r.dice or 0.0 for r in ret]
        wrong = sum(d < WRONG_BELOW for d in dices)
        lines.append(f"\n**{label}** ({len(subset)} asks): {len(ret)} masks returned, "
                     f"{sum(r.abstained for r in subset)} abstained; wrong masks (Dice < {WRONG_BELOW}) "
                     f"{wrong}/{len(ret) or 1} of returned ({wrong / len(subset) if subset else 0:.0%} of asks); "
                     f"Dice ≥ {GOOD_FROM}: {sum(d >= GOOD_FROM for d in dices)}; median Dice of returned "
                     f"{statistics.median(dices) if dices else float('nan'):.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibrate", type=Path, default=None, help="collect calibration signals into this JSONL")
    p.add_argument("--table", type=Path, default=None, help="print the threshold table of a calibration JSONL")
    p.add_argument("--no-modality", action="store_true", help="skip the modality questions")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "grounding_eval.jsonl",
                   help="the held-out asks, each with its signals (default build/grounding_eval.jsonl)")
    p.add_argument("--render", type=Path, default=None,
                   help="print the held-out table of a saved --out JSONL under the current confidence rule")
    args = p.parse_args(argv)
    if args.table:
        print(threshold_table([rejudged(Asked(**json.loads(line))) for line in args.table.open()]))
        return 0
    if args.render:
        print(grounding_table([rejudged(Asked(**json.loads(line))) for line in args.render.open()]))
        return 0
    missing = [c.image for c in HELD_OUT + SEEN if not c.image.exists()]
    if missing:
        sys.exit(f"missing {missing[0]} (get it with: python scripts/fetch_pyradiomics_cases.py)")
    from medplib_runtime.local import LocalRuntime

    runtime = LocalRuntime(preset="medplib-lite")
    spy = Spy(runtime.asker())
    if args.calibrate:
        calibrate(runtime, spy, args.calibrate)
        return 0
    # asked with abstention off and each mask's signals kept, then judged as the runtime does (rejudged): the
    # same rule, and the Dice of a withheld mask is on record
    runtime.asker().abstain_below = 0.0
    rows: list[Asked] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as sink:
        for case in HELD_OUT + SEEN:
            lab = read_volume(case.label).array
            run_case(runtime, spy, case, lesion_slices(lab, 1, n=1), PHRASINGS, rows, sink)
    print(grounding_table([rejudged(r) for r in rows]))
    if not args.no_modality:
        print("\n" + "\n".join(modality_rows(runtime, HELD_OUT + SEEN)))
    runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
