"""Run by tests/training/test_training_ddp.py under torchrun: one stage-1 run of the tiny model, DDP over gloo."""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _tiny_training import FakeEmbedder, samples, tiny_model  # noqa: E402

from medplib_runtime.training.config import TrainConfig  # noqa: E402
from medplib_runtime.training.trainer import train  # noqa: E402

out, accumulation = sys.argv[1], int(sys.argv[2])
data = [replace(samples(1)[0])]  # one record, two turns → two examples
cfg = TrainConfig(stage=1, data=("synthetic",), out_dir=out, steps=3, grad_accumulation=accumulation,
                  warmup_steps=1, lr=1e-2)
report = train(cfg, data, model=tiny_model(), embedder=FakeEmbedder(), progress=False)
print("losses", report.losses)
