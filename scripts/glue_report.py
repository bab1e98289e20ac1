"""Markdown tables for docs/training.md from a scripts/train_default_glue.sh run.

``python scripts/glue_report.py [build]``: per stage (time, losses at the start and end, routing),
the held-out evaluation per group, and the MoE routing per question type at inference."""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def _mean(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if key in r]
    return f"{sum(vals) / len(vals):.3f}" if vals else "–"


def stages(build: Path) -> None:
    print("| stage | steps × examples | time | text loss first → last 5 steps | BCE | Dice loss | routing loss "
          "| tokens to ground / VL expert (last step, first choice) |")
    print("|---|---|---|---|---|---|---|---|")
    root = Path(__file__).resolve().parents[1]
    recipe = root / "configs" / "training" / "default_glue"
    order = re.search(r"^for step in ([^;]+); do", (root / "scripts" / "train_default_glue.sh").read_text(), re.M)
    for n in order.group(1).split():  # train_default_glue.sh's steps, in its order
        summary = build / f"glue-stage{n}.json"
        run = build / "glue-runs" / Path(json.loads((recipe / f"stage{n}.json").read_text())["out_dir"]).name
        log = run / "train_log.jsonl"
        if not log.is_file() or not summary.is_file() or not summary.read_text().strip():
            continue
        s = json.loads(summary.read_text().strip().splitlines()[-1])
        cfg = json.loads((run / "config.json").read_text())
        rows = [json.loads(x) for x in log.read_text().splitlines()]
        first, last = rows[:5], rows[-5:]
        routing = "/".join(f"{v:.2f}" for v in rows[-1].get("routing", []))
        name = cfg["stage_name"] + {"3_head": " (head only: seg projector, ground head)",
                                    "2_more": " (more: VL expert and region encoder, glue-vqa)",
                                    "2_align": " (region encoder aligned with the names; VL expert, glue-pairs)",
                                    "2_closed": " (VL expert, closed answers ×3, glue-pairs4)",
                                    "4_realign": " (region encoder aligned again, names balanced; routers)"}.get(n, "")
        print(f"| {n} {name} | {s['steps']} × {cfg['grad_accumulation']} | {s['seconds'] / 60:.1f} min "
              f"| {_mean(first, 'ce')} → {_mean(last, 'ce')} | {_mean(first, 'bce')} → {_mean(last, 'bce')} "
              f"| {_mean(first, 'dice')} → {_mean(last, 'dice')} | {_mean(first, 'route')} → {_mean(last, 'route')} "
              f"| {routing} |")
        if cfg.get("routing") == "sequence":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from medplib_runtime.modeling.glue_weights import read_glue_metadata

            last_stage = read_glue_metadata(run / "adapter.safetensors")["recipe"]
            threshold = last_stage["stages"][-1].get("question_threshold")
            print(f"|   (stage {n}: question-level routing, routers only; decision threshold p > {threshold}) |"
                  " | | | | | | |")


def evaluation(build: Path, name: str = "glue-test") -> None:
    report = json.loads((build / f"{name}.eval.json").read_text())
    print(f"\n{report['records']} records, {report['seconds'] / 60:.1f} min\n")
    print("| group | n seg | mDice | n closed | closed acc | balanced | n open | open F1 | n named | region named |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        name_ = "all" if r["group"] == "all" else f"{r['group']} = {r['key']}"
        cell = lambda n, v: f"{v:.3f}" if n else "–"  # noqa: E731
        print(f"| {name_} | {r['n_seg']} | {cell(r['n_seg'], r['mdice'])} | {r['n_closed']} "
              f"| {cell(r['n_closed'], r['accuracy'])} | {cell(r['n_closed'] if 'balanced' in r else 0, r.get('balanced', 0.0))} | {r['n_open']} | {cell(r['n_open'], r['f1'])} "
              f"| {r.get('n_named', 0)} | {cell(r.get('n_named', 0), r.get('named', 0.0))} |")
    preds = build / f"{name}.predictions.jsonl"
    if preds.is_file():
        share: dict[str, list[float]] = defaultdict(list)
        for line in preds.read_text().splitlines():
            meta = json.loads(line)["metadata"]
            if "routing" in meta:
                share[meta["question_type"]].append(meta["routing"].get("grounding", 0.0))
        print("\n| question type | answers | tokens whose first choice is the grounding expert (mean over layers) |")
        print("|---|---|---|")
        for qt in sorted(share):
            print(f"| {qt} | {len(share[qt])} | {sum(share[qt]) / len(share[qt]):.2f} |")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "build")
    stages(root)
    if (root / "glue-test.eval.json").is_file():
        evaluation(root)
