"""FSDP2 (``fully_shard``) under `torchrun` with 2 processes over gloo on CPU: stages 2 and 3 give the
adapter the DDP path gives (same per-process examples and dropout draws), the old token rows stay
untouched, and an interrupted FSDP run resumes from its checkpoint bit for bit."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medplib_runtime.errors import InputError
from medplib_runtime.training.config import TrainConfig

WORKER = str(Path(__file__).resolve().parents[1] / "_fsdp_worker.py")


def test_distributed_mode_is_checked():
    assert TrainConfig(stage=1, data=("x",), out_dir="o").distributed == "ddp"
    with pytest.raises(InputError, match="distributed must be 'ddp' or 'fsdp'; got 'zero2'"):
        TrainConfig(stage=1, data=("x",), out_dir="o", distributed="zero2")


def _close(a: Path, b: Path, atol: float) -> None:
    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=atol, rtol=0), (a.parent.name, key)


@pytest.mark.weights  # like the DDP test: two torchrun processes, ~25 s
def test_fsdp_matches_ddp_and_resumes(tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          WORKER, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for stage in (2, 3):
        fsdp = tmp_path / f"fsdp{stage}"
        # DDP trains the new token rows as a delta (new_rows.py), FSDP through the whole embedding: the same
        # gradients summed in another order, which 3 Adam steps at lr 1e-2 (weights move up to 3e-2) turn
        # into differences up to 3e-5 (measured); a missing gradient would differ by ~1e-2
        _close(fsdp / "adapter.safetensors", tmp_path / f"ddp{stage}" / "adapter.safetensors", atol=1e-4)
        _close(fsdp / "adapter.safetensors", fsdp / "checkpoint" / "adapter.safetensors", atol=0)  # gathered alike
    _close(tmp_path / "resumed3" / "adapter.safetensors", tmp_path / "fsdp3" / "adapter.safetensors", atol=0)
