"""Run by tests/training/test_training_fsdp.py under torchrun (2 processes, gloo): stages 2 and 3 of the tiny
model with FSDP2 and with DDP, then an FSDP run interrupted after its step-2 checkpoint and resumed.
Several runs in one launch: starting a process costs far more than these 3-step runs."""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _tiny_training import FakeEmbedder, samples, tiny_model  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from medplib_runtime.modeling.glue_weights import first_new_row, glue_state  # noqa: E402
from medplib_runtime.training.config import TrainConfig  # noqa: E402
from medplib_runtime.training.trainer import train  # noqa: E402

OUT = Path(sys.argv[1])
DATA = [replace(samples(1)[0])]  # one record, two turns → two examples: one per process


class Interrupt(Exception):
    pass


class Dying(FakeEmbedder):
    def __init__(self, at: int) -> None:
        self.calls, self.at = 0, at

    def __call__(self, sample):
        self.calls += 1
        if self.calls == self.at:
            raise Interrupt()
        return super().__call__(sample)


def run(name: str, stage: int, mode: str, embedder=None):
    cfg = TrainConfig(stage=stage, data=("synthetic",), out_dir=str(OUT / name), steps=3, grad_accumulation=1,
                      warmup_steps=1, lr=1e-2, save_every=2, distributed=mode)
    model = tiny_model()
    report = train(cfg, DATA, model=model, embedder=embedder or FakeEmbedder(), progress=False)
    if mode == "fsdp":  # the row hook held under FSDP: the old token rows are exactly as they were
        start = first_new_row(model)
        weight = model.llm.get_input_embeddings().weight.full_tensor()
        assert torch.equal(weight[:start], tiny_model().llm.get_input_embeddings().weight[:start]), name
    trained, initial = load_file(report.adapter), glue_state(tiny_model())
    for key in ("new_token_rows", "vision_projector.fc1.weight" if stage == 2 else "seg_projector.fc1.weight"):
        assert not torch.equal(trained[key], initial[key]), (name, key)  # (seg: only one process has a <SEG>)
    return report


for stage in (2, 3):
    for mode in ("fsdp", "ddp"):
        run(f"{mode}{stage}", stage, mode)
try:
    run("resumed3", 3, "fsdp", Dying(at=3))  # the first example of step 3, after the step-2 checkpoint
    raise SystemExit("the run was not interrupted")
except Interrupt:
    pass
torch.distributed.barrier()  # rank 0 has written the checkpoint
assert run("resumed3", 3, "fsdp").resumed_from == 2
print("fsdp worker done", torch.distributed.get_rank())
