"""``medplib train --stage N --config FILE``: one MedPLIB training stage on MeCoVQA-format data.

Runs as one process, or under ``torchrun --nproc_per_node K -m medplib_runtime.cli train ...``
(DDP, or FSDP2 with ``--distributed fsdp``; gloo on CPU). The config is a JSON TrainConfig
(training/config.py); command-line values override it. Writes ``OUT/adapter.safetensors``,
``OUT/train_log.jsonl``, ``OUT/config.json`` and a resumable ``OUT/checkpoint/``: running the same
command again continues an interrupted run.
"""

from __future__ import annotations

import argparse
import json


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one of MedPLIB's four stages (glue adapters only)")
    p.add_argument("--stage", type=int, required=True, choices=(1, 2, 3, 4), help="training stage (docs/training.md)")
    p.add_argument("--config", required=True, help="JSON training config (see docs/training.md)")
    p.add_argument("--data", action="append", help="MeCoVQA JSON file(s); overrides the config's")
    p.add_argument("--image-folder", default=None, help="where record paths start (default: each JSON's folder)")
    p.add_argument("--out-dir", default=None, help="where checkpoints and the glue go (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the config's)")
    p.add_argument("--init-glue", default=None, help="the previous stage's adapter.safetensors")
    p.add_argument("--distributed", choices=("ddp", "fsdp"), default=None,
                   help="under torchrun: DDP (default) or FSDP2 sharding (docs/training_distributed.md)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="cpu (default) or cuda: each torchrun process on its LOCAL_RANK's GPU, bf16 autocast")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import load_config
    from ..training.data_source import samples_from_json
    from ..training.trainer import train

    cfg = load_config(args.config, stage=args.stage, data=tuple(args.data) if args.data else None,
                      out_dir=args.out_dir, steps=args.steps, init_glue=args.init_glue,
                      distributed=args.distributed, device=args.device)
    samples = [s for path in cfg.data
               for s in samples_from_json(path, image_folder=args.image_folder, question_types=cfg.question_types)]
    report = train(cfg, samples, progress=not args.no_progress)
    print(json.dumps({"stage": report.stage, "steps": report.steps, "examples": report.examples,
                      "first_loss": round(report.losses[0], 4) if report.losses else None,
                      "last_loss": round(report.losses[-1], 4) if report.losses else None,
                      "adapter": report.adapter, "seconds": round(report.seconds, 1),
                      "trainable_parameters": report.trainable_parameters, "resumed_from": report.resumed_from,
                      "routing": [round(r, 3) for r in report.routing]}, ensure_ascii=False))
    return 0
