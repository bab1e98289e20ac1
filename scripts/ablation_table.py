"""Markdown table of the stage-IV ablation runs: ``python scripts/ablation_table.py build/ablation val``.

Per run: what it varied (from its config: FFN, top-k, capacity, routing-loss weight), the last logged
losses, the router's share of tokens per expert in the last step, and the eval metrics on the split
(mDice of text → mask, closed accuracy, open F1, region naming)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: str, split: str) -> None:
    rows = []
    for run in sorted(Path(root).iterdir()):
        report = run / f"{split}.eval.json"
        if not report.is_file() or not report.read_text().strip():
            continue
        cfg = json.loads((run / "config.json").read_text())
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        last = log[-3:]
        mean = lambda k: sum(x.get(k, 0.0) for x in last) / len(last)  # noqa: E731
        ev = {r["group"] + ":" + r["key"]: r for r in json.loads(report.read_text())["rows"]}
        overall, region = ev["all:all"], ev.get("question_type:R", {})
        ffn = "dense (expert %d)" % cfg["dense_expert"] if cfg.get("dense_expert") is not None else "MoE"
        rows.append((run.name, ffn, cfg["top_k"] if ffn == "MoE" else "–",
                     cfg["capacity_factor"] if ffn == "MoE" else "–", cfg.get("route_supervision", 0.0) or "–",
                     (cfg.get("router_lr") or "–") if ffn == "MoE" else "–", mean("ce"),
                     "/".join(f"{s:.2f}" for s in log[-1].get("routing", [])), overall["mdice"], overall["accuracy"],
                     overall["f1"], region.get("named", 0.0)))
    print("| run | FFN | top-k | capacity (train) | routing loss weight | router lr | text loss (last 3 steps) "
          "| tokens per expert (ground/VL) | mDice | closed acc | open F1 | region named |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]:.3f} | {r[7]} | {r[8]:.3f} "
              f"| {r[9]:.3f} | {r[10]:.3f} | {r[11]:.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
