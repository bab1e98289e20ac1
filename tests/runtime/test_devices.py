"""Device choice: clear one-line errors where a device is missing, and (on a machine with a CUDA
GPU only) the CUDA path against the CPU path on the real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplib_runtime.devices import check_device
from medplib_runtime.errors import InputError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_device_names_are_checked():
    assert check_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "cpu:1", ""):
        with pytest.raises(InputError, match="device must be"):
            check_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_missing_gpu_is_one_line_error():
    from medplib_runtime.local import LocalRuntime

    with pytest.raises(InputError, match="sees no CUDA GPU"):
        check_device("cuda")
    with pytest.raises(InputError, match="sees no CUDA GPU"):
        LocalRuntime(device="cuda")  # at construction, before any model is loaded


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cli_device_errors(capsys):
    from medplib_runtime.cli import main

    assert main(["info", "--device", "cuda"]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert main(["info", "--remote", "http://127.0.0.1:9", "--device", "cuda"]) == 2
    assert "--device applies to the local runtime" in capsys.readouterr().err


def _brain1_slice():
    from medplib_runtime.imaging.io import read_volume
    from medplib_runtime.imaging.windowing import apply_window, window_for
    from pathlib import Path

    volume = read_volume(Path(__file__).resolve().parents[2] / "sample_data" / "brain1_image.nrrd")
    plane = volume.array[12]
    return apply_window(plane, window_for(volume.array, "auto"))


@needs_cuda
@pytest.mark.weights
def test_cuda_segment_and_ask_match_cpu():
    """The same slice, box and question on CPU (fp32) and CUDA (bf16 autocast): the box mask is the
    same up to a few boundary pixels, the answer's first token and its grounding agree."""
    from medplib_runtime.local import LocalRuntime
    from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef

    plane = _brain1_slice()
    results = {}
    for device in ("cpu", "cuda"):
        rt = LocalRuntime(device=device)
        key = rt.set_image(plane.astype(np.float32))
        seg = rt.segment(SegmentRequest(image_key=key, slice=SliceRef(0, 0), prompt=Prompt(box=Box(60, 90, 110, 150))))
        ans = rt.ask(AskRequest(image_key=key, slice=SliceRef(0, 0), question="Segment the lesion.",
                                max_new_tokens=8))
        results[device] = (seg.mask, ans)
        rt.close()
    (m_cpu, a_cpu), (m_gpu, a_gpu) = results["cpu"], results["cuda"]
    inter = np.logical_and(m_cpu, m_gpu).sum()
    assert 2 * inter / max(m_cpu.sum() + m_gpu.sum(), 1) > 0.98
    assert a_gpu.text.split()[0] == a_cpu.text.split()[0], (a_cpu.text, a_gpu.text)
    assert len(a_gpu.masks) == len(a_cpu.masks)
    for c, g in zip(a_cpu.masks, a_gpu.masks):
        assert 2 * np.logical_and(c, g).sum() / max(c.sum() + g.sum(), 1) > 0.9


@needs_cuda
def test_cuda_training_step_changes_its_parameters(tmp_path):
    """One stage-IV run on the GPU (tiny model): the stage's parameters move, the adapter is written
    from CUDA tensors and reloads on the CPU."""
    from _tiny_training import FakeEmbedder, samples, tiny_model
    from medplib_runtime.modeling.glue_weights import load_glue
    from medplib_runtime.training.config import TrainConfig
    from medplib_runtime.training.trainer import train

    class CudaEmbedder(FakeEmbedder):
        def __call__(self, sample):
            from dataclasses import replace

            emb = super().__call__(sample)
            return replace(emb, image_embedding=emb.image_embedding.cuda())

    model = tiny_model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=3, grad_accumulation=2,
                      warmup_steps=1, lr=1e-2, device="cuda", route_supervision=1.0, route_span="turn")
    report = train(cfg, samples(), model=model, embedder=CudaEmbedder(), progress=False)
    assert next(model.parameters()).is_cuda and all(l == l for l in report.losses)
    after = {k: v.cpu() for k, v in model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".router." in k for k in changed) and any(k.startswith("ground_head.") for k in changed)
    fresh = tiny_model()
    load_glue(fresh, report.adapter)
    assert torch.equal(fresh.ground_head.state_dict()["bias"], model.ground_head.state_dict()["bias"].cpu())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_napari_launcher_refuses_a_missing_gpu_before_napari_opens(capsys):
    from napari_medplib.launch import main

    assert main(["--device", "cuda"]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert main(["--remote", "http://127.0.0.1:9", "--device", "cuda"]) == 2
    assert "--device applies to the local runtime" in capsys.readouterr().err
