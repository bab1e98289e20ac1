"""Scale-out on torch's own engine: `torchrun` with 2 processes, DDP over gloo on CPU, gives the
same adapter as one process averaging the same two examples' gradients."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _tiny_training import tiny_model
from medplib_runtime.modeling.glue_weights import glue_state, load_glue

WORKER = str(Path(__file__).resolve().parents[1] / "_ddp_worker.py")


@pytest.mark.weights
def test_two_process_torchrun_matches_one_process(tmp_path):
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          WORKER, str(tmp_path / "ddp"), "1"], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    # one thread, as torchrun gives each process: a matmul's split over threads changes its sums' order, which
    # Adam turns into differences of 5e-5 (measured with 2 threads; none with 1)
    single = subprocess.run([sys.executable, WORKER, str(tmp_path / "one"), "2"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = tiny_model(), tiny_model()
    load_glue(a, tmp_path / "ddp" / "adapter.safetensors")
    load_glue(b, tmp_path / "one" / "adapter.safetensors")
    sa, sb = glue_state(a), glue_state(b)
    assert not torch.equal(sa["vision_projector.fc1.weight"], glue_state(tiny_model())["vision_projector.fc1.weight"])
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=1e-6), key
