"""Does reading a chat's earlier turns help or hurt a glue's answers?

``python research/probes/history_probe.py DATA.json [--glue GLUE] [--out rows.jsonl] [--seed 0]``

Every non-grounding record of DATA (our builder's single-turn MeCoVQA records) is asked twice through
the real runtime: alone, and after two other questions about the same image (without a region) with
their reference answers as the chat's earlier turns — the best history a chat can hold. Prints closed
accuracy, open F1 and region naming for both (MedPLIB's metrics, ``evaluation/metrics.py``); ``--out``
keeps each record's two answers. The runtime reads earlier turns only for a glue trained on some
(``glue_recipe.trained_on_history``); this script makes it read them for the second ask.
"""

from __future__ import annotations

from dataclasses import replace

import argparse
import collections
import json
import random

import numpy as np

from medplib_runtime.data.mecovqa import load_masks, read_dataset, read_png
from medplib_runtime.evaluation.metrics import closed_correct, names_structure, open_score
from medplib_runtime.evaluation.runner import asked_name
from medplib_runtime.local import LocalRuntime
from medplib_runtime.schemas import AskRequest, Prompt, SliceRef, Turn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--glue", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = read_dataset(args.data)
    runtime = LocalRuntime(glue=args.glue) if args.glue else LocalRuntime()
    asker = runtime.asker()
    by_image = collections.defaultdict(list)
    for rec in ds.records:
        by_image[rec.image].append(rec)
    structures = sorted({n for n in map(asked_name, ds.records) if n})
    rng = random.Random(args.seed)
    scores = {mode: collections.defaultdict(list) for mode in ("alone", "history")}
    sink = open(args.out, "w", encoding="utf-8") if args.out else None
    for image_path, records in by_image.items():
        image = read_png(ds.root / image_path)
        key = runtime.set_image(image.astype(np.float32) / 255.0, modality="other")
        for rec in records:
            others = [o for o in records if o is not rec and o.question_type != "G" and not o.turns[0].region_paths]
            if rec.question_type == "G" or len(others) < 2:
                continue
            history = tuple(Turn(o.turns[0].plain_question, o.turns[0].plain_answer) for o in rng.sample(others, 2))
            region, _ = load_masks(rec, ds.root, image.shape)
            turn = rec.turns[0]
            row = {"id": rec.id, "gt": turn.plain_answer}
            for mode, turns in (("alone", ()), ("history", history)):
                asker.routing = replace(asker.routing, reads_history=bool(turns))
                result = runtime.ask(AskRequest(key, SliceRef(0, 0), turn.plain_question, history=turns,
                                                region=Prompt(mask=region) if turn.region_paths else None,
                                                max_new_tokens=32))
                row[mode] = result.text
                s = scores[mode]
                if rec.answer_type == "closed":
                    s["closed"].append(closed_correct(result.text, turn.plain_answer))
                else:
                    s["open F1"].append(open_score(result.text, turn.plain_answer).f1)
                if name := asked_name(rec):
                    s["named"].append(names_structure(result.text, name, structures))
            if sink:
                sink.write(json.dumps(row) + "\n")
    for mode, s in scores.items():
        print(mode, "  ".join(f"{k} {np.mean(v):.3f} (n {len(v)})" for k, v in sorted(s.items())))


if __name__ == "__main__":
    main()
