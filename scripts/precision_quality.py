"""Do the quantised LLMs answer as fp32 does? (docs/benchmarks.md, "Quantised decode")

One model in one process; each precision's quantised Linears are swapped in around its own asks
(modeling/quantise.swapped_in), so fp32, int8 and int4 read the same glue and the same slices.

1. The eval test split (`medplib build-data ... --out DIR`, DIR/test.json; `--every N` asks every Nth
   record): MedPLIB's metrics per precision (medplib eval's), and the share of identical greedy answers.
2. Real slices (sample_data: brain1, lung2_crop; the label's lesion slices): open, closed, grounding
   and region questions; identical answers, and the mask Dice between precisions where both gave one.

    python scripts/precision_quality.py --data /tmp/glue-data/test.json [--every 2] [--precisions int8,int4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = {  # kind → questions asked on every real slice
    "open": ("What is shown in this image?", "What is the modality of this image?", "Which organ is shown?"),
    "closed": ("Is there an abnormality in this image?", "Is this an MRI image?", "Is there a lesion in this image?"),
    "grounding": ("Segment the lesion.", "Where is the lesion?"),
    "region": ("What is in this region?", "Is this region abnormal?"),
}
CASES = (("brain1", "sample_data/brain1_image.nrrd", "sample_data/brain1_label.nrrd"),
         ("lung2_crop", "sample_data/lung2_crop_image.nrrd", "sample_data/lung2_crop_label.nrrd"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _eval_split(rt, swaps: dict, data: Path, every: int) -> dict:
    from medplib_runtime.data.mecovqa import read_dataset
    from medplib_runtime.evaluation.runner import evaluate
    from medplib_runtime.modeling.quantise import swapped_in

    ds = read_dataset(data)
    ds = replace(ds, records=ds.records[::every])
    out, texts = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="precision-quality-"))
    for precision, swap in swaps.items():
        pred = tmp / f"{precision}.jsonl"
        with swapped_in(swap):
            report = evaluate(rt, ds, predictions=pred, max_new_tokens=64)
        row = report.row("all", "all")
        out[precision] = row
        texts[precision] = [json.loads(line)["text"] for line in pred.read_text().splitlines()]
        print(f"eval {precision}: {report.turns} turns, {report.seconds:.0f} s", file=sys.stderr)
    return {"rows": out, "texts": texts, "records": len(ds.records)}


def _real_slices(rt, swaps: dict) -> dict:
    from medplib_runtime.imaging.io import read_volume
    from medplib_runtime.modeling.quantise import swapped_in
    from medplib_runtime.schemas import AskRequest, Box, Prompt, SliceRef

    answers: dict[str, list] = {p: [] for p in swaps}
    kinds: list[str] = []
    for name, image, label in CASES:
        vol, lab = read_volume(ROOT / image), read_volume(ROOT / label).array > 0
        key = rt.set_image(vol.array, spacing=vol.spacing)
        area = lab.sum((1, 2))
        lesion = [int(i) for i in np.argsort(-area)[:3] if area[i] > 0]  # the 3 largest lesion slices
        for z in lesion:
            rows, cols = np.nonzero(lab[z])
            box = Box(max(rows.min() - 3, 0), max(cols.min() - 3, 0), rows.max() + 3, cols.max() + 3)
            for kind, questions in QUESTIONS.items():
                for q in questions:
                    req = AskRequest(image_key=key, slice=SliceRef(0, z), question=q, max_new_tokens=48,
                                     region=Prompt(box=box) if kind == "region" else None)
                    kinds.append(kind)
                    for precision, swap in swaps.items():
                        with swapped_in(swap):
                            answers[precision].append(rt.ask(req))
        print(f"real slices: {name} done", file=sys.stderr)
    return {"answers": answers, "kinds": kinds}


class _CountingHead:
    """Wraps a precision's ShortlistHead: on every call also the fp32 head's argmax, to count the steps where
    fp32's best token was not on the int4 shortlist (the only way the shortlist head can change a token)."""

    def __init__(self, shortlist, fp32_head) -> None:
        self.shortlist, self.fp32_head, self.steps, self.misses = shortlist, fp32_head, 0, 0

    def wrap(self):
        import torch

        counter = self

        class Counting(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = counter.shortlist

            def forward(self, x):
                got = self.inner(x)
                counter.steps += got.shape[:-1].numel()
                counter.misses += int((got.argmax(-1) != counter.fp32_head(x).argmax(-1)).sum())
                return got

        return Counting()


def _count_shortlist_misses(swaps: dict) -> dict:
    """Replace each precision's head swap by a counting one (same answers); → precision → counter."""
    from medplib_runtime.modeling.quantise import ShortlistHead, Swap

    counters = {}
    for precision, swap in swaps.items():
        for i, s in enumerate(swap):
            if isinstance(s.new, ShortlistHead):
                counters[precision] = _CountingHead(s.new, s.old)
                swap[i] = Swap(s.parent, s.name, s.old, counters[precision].wrap())
    return counters


def _same(a: list[str], b: list[str]) -> str:
    n = sum(x == y for x, y in zip(a, b))
    return f"{n}/{len(a)} ({100 * n / max(len(a), 1):.1f} %)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a test split (test.json); left out: real slices only")
    ap.add_argument("--every", type=int, default=1, help="ask every Nth record of --data")
    ap.add_argument("--precisions", default="int8,int4", help="compared with fp32")
    args = ap.parse_args()

    import torch

    from medplib_runtime.local import LocalRuntime
    from medplib_runtime.modeling.quantise import quantised_swaps

    rt = LocalRuntime()
    llm = rt.asker().model.llm
    swaps = {"fp32": []} | {p: quantised_swaps(llm, p) for p in args.precisions.split(",")}
    quant = [p for p in swaps if p != "fp32"]
    counters = _count_shortlist_misses(swaps)
    print(f"# precision quality — torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.data:
        ev = _eval_split(rt, swaps, args.data, args.every)
        print(f"\n## eval split {args.data} (every {args.every}: {ev['records']} records)\n")
        print("| measure | " + " | ".join(swaps) + " |\n|---|" + "---|" * len(swaps))
        print("| identical greedy answers vs fp32 | — | " + " | ".join(
            _same(ev["texts"]["fp32"], ev["texts"][p]) for p in quant) + " |")
        for field, label in (("mdice", "grounding mDice"), ("miou", "grounding mIoU"), ("accuracy", "closed accuracy"),
                             ("balanced", "closed balanced accuracy"), ("f1", "open F1"), ("recall", "open recall"),
                             ("named", "region named")):
            print(f"| {label} | " + " | ".join(f"{getattr(ev['rows'][p], field):.3f}" for p in swaps) + " |")
    real = _real_slices(rt, swaps)
    kinds = real["kinds"]
    print(f"\n## real slices (brain1, lung2_crop; {len(kinds)} questions)\n")
    print("| kind | " + " | ".join(f"{p}: identical to fp32" for p in quant) + " | " +
          " | ".join(f"{p}: mask Dice vs fp32 (n)" for p in quant) + " |\n|---|" + "---|" * (2 * len(quant)))
    for kind in list(QUESTIONS) + ["all"]:
        idx = [i for i, k in enumerate(kinds) if kind in ("all", k)]
        cells, dices = [], []
        for p in quant:
            a = [real["answers"]["fp32"][i] for i in idx]
            b = [real["answers"][p][i] for i in idx]
            cells.append(_same([r.text for r in a], [r.text for r in b]))
            d = [_dice(x.masks[0], y.masks[0]) for x, y in zip(a, b) if x.masks and y.masks]
            dices.append(f"{np.mean(d):.3f} ({len(d)})" if d else "— (0)")
        print(f"| {kind} | " + " | ".join(cells) + " | " + " | ".join(dices) + " |")
    for p, c in counters.items():
        print(f"\n{p}: fp32's best token off the head's int4 shortlist in {c.misses} of {c.steps} decode steps")
    for p in quant:
        for i, k in enumerate(kinds):
            a, b = real["answers"]["fp32"][i].text, real["answers"][p][i].text
            if a != b:
                print(f"  {p} differs ({k}): fp32 {a!r} / {p} {b!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
