"""Seconds per optimizer step of stages II and III on this machine, with the real model and data:
the added tokens' rows trained as a small delta (what the trainer does on one process and under
DDP; medplib_runtime/training/new_rows.py) against the same rows trained through the whole tied
embedding (FSDP's way, and every run before 2026-12-06). Both in one process, interleaved; each
figure is the median of ``--steps`` steps (the first step of a run, which fills caches, left out).

    python scripts/bench_train_step.py [--steps 6] [--examples 200] [--accumulation 8]

Needs ``bash scripts/build_glue_data.sh glue-data glue-pairs4`` first (docs/training.md, "Speed").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medplib_runtime.modeling.medplib import build_medplib  # noqa: E402
from medplib_runtime.presets import get_preset  # noqa: E402
from medplib_runtime.training import trainer  # noqa: E402
from medplib_runtime.training.config import TrainConfig  # noqa: E402
from medplib_runtime.training.data_source import samples_from_json  # noqa: E402

STAGES = {2: ("build/glue-pairs4/train.json", ("C", "R")), 3: ("build/glue-data/train.json", ("G",))}


def step_seconds(model, embedder, samples, stage: int, delta: bool, steps: int, accumulation: int, out: str) -> list[float]:
    stamps: list[float] = []
    hook = register_optimizer_step_post_hook(lambda opt, args, kw: stamps.append(time.perf_counter()))
    try:
        cfg = TrainConfig(stage=stage, data=(STAGES[stage][0],), out_dir=out, steps=steps + 1,
                          grad_accumulation=accumulation, warmup_steps=1, save_every=10_000)
        trainer.train(cfg, samples, model=model, embedder=embedder, progress=False, rows_as_delta=delta)
    finally:
        hook.remove()
    return [b - a for a, b in zip(stamps, stamps[1:])]  # steps 2 … steps+1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--examples", type=int, default=200, help="records read per stage (their slices embedded first)")
    ap.add_argument("--accumulation", type=int, default=8, help="examples per optimizer step (the recipes' 8)")
    args = ap.parse_args(argv)
    for path, _ in STAGES.values():
        if not (ROOT / path).is_file():
            print(f"bench_train_step: {path} is missing: run bash scripts/build_glue_data.sh glue-data glue-pairs4",
                  file=sys.stderr)
            return 2
    model = build_medplib(get_preset("medplib-lite"), pretrained=True, glue=False)
    embedder = trainer._Embedder(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage, (path, types) in STAGES.items():
            samples = samples_from_json(ROOT / path, question_types=types)[: args.examples]
            for s in samples:  # the frozen pixel encoder's work, once, outside the timed steps
                embedder(s)
            times = {True: [], False: []}
            for rep in range(2):  # interleaved: a machine that slows down slows both
                for delta in (True, False):
                    times[delta] += step_seconds(model, embedder, samples, stage, delta, args.steps // 2 or 1,
                                                 args.accumulation, f"{tmp}/{stage}-{delta}-{rep}")
            d, w = statistics.median(times[True]), statistics.median(times[False])
            rows.append((stage, len(times[True]), d, w))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.accumulation} examples per step\n")
    print("| stage | steps timed (each way) | new rows as a delta (s/step) | through the whole embedding (s/step) | ratio |")
    print("|---|---|---|---|---|")
    for stage, n, d, w in rows:
        print(f"| {stage} | {n} | {d:.2f} | {w:.2f} | {w / d:.2f}× |")
    print(json.dumps({f"stage{s}": {"delta_s": round(d, 3), "whole_s": round(w, 3)} for s, _, d, w in rows}),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
