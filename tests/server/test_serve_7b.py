"""medplib-7b served end to end: a real `medplib serve --preset medplib-7b --weights DIR --allow-cpu` on the tiny
checkpoint built with MedPLIB's own code (tests/modeling/fixtures/medplib7b_tiny), reached by RemoteRuntime and
by `medplib ... --remote`, gives what an in-process LocalRuntime gives; and its bad starts are one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medplib_runtime.imaging.io import read_volume
from medplib_runtime.schemas import AskRequest, Box, Prompt, SegmentRequest, SliceRef
from tests._server import ServerProcess, free_port

pytestmark = pytest.mark.process

WEIGHTS = Path(__file__).parents[1] / "modeling" / "fixtures" / "medplib7b_tiny" / "checkpoint"
SEVEN_B = ["--preset", "medplib-7b", "--weights", str(WEIGHTS)]
SLICE = SliceRef(0, 12)
REGION = Prompt(box=Box(40, 40, 200, 200))  # large: the tiny CLIP sees the slice on a 4×4 grid
QUESTION = "what is in the region ?"


@pytest.fixture(scope="module")
def brain1(brain1_paths):
    return brain1_paths[0], read_volume(str(brain1_paths[0])).array


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess(args=[*SEVEN_B, "--allow-cpu"]).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def remote(server):
    from medplib_runtime.remote import RemoteRuntime

    runtime = RemoteRuntime(server.url)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def local():
    from medplib_runtime.local import LocalRuntime

    runtime = LocalRuntime("medplib-7b", weights=WEIGHTS, allow_cpu=True)
    yield runtime
    runtime.close()


def _requests(key: str):
    return (SegmentRequest(key, SLICE, Prompt(box=Box(60, 60, 180, 200)), threshold=0.5),
            AskRequest(key, SLICE, QUESTION, region=REGION, max_new_tokens=8),
            AskRequest(key, SLICE, "segment the lesion", max_new_tokens=8, threshold=0.5))


def test_start_line_names_the_checkpoint(server):
    assert f"medplib-7b from {WEIGHTS} loaded in" in server.log() and "on cpu; listening on" in server.log()


def test_info_names_the_parts(remote, local):
    for info in (remote.info(), local.info()):
        parts = {p.name: p.source for p in info.parts}
        assert info.preset == "medplib-7b" and not info.untrained()
        assert parts["pixel_encoder"].startswith("SAM-Med2D ViT-B with adapters")
        assert parts["vision_tower"].startswith("CLIP ViT") and parts["llm"].startswith("LLaMA")
        assert "LiteMedSAM" not in json.dumps(parts)
    assert remote.info().transport != "local"


def test_segment_and_ask_are_identical_served_and_in_process(remote, local, brain1):
    _, volume = brain1
    keys = [rt.set_image(volume, modality="MR") for rt in (local, remote)]
    assert keys[0] == keys[1]
    seg, ask, ground = _requests(keys[0])
    mine, theirs = local.segment(seg), remote.segment(seg)
    assert np.array_equal(mine.mask, theirs.mask) and mine.score == theirs.score
    assert 0 < mine.mask.sum() < mine.mask.size  # the checkpoint's SAM-Med2D decoded a box, not all or nothing
    for request in (ask, ground):
        a, b = local.ask(request), remote.ask(request)
        assert a.text and a.text == b.text
        assert len(a.masks) == len(b.masks) and all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))
        assert not a.untrained_parts and not b.untrained_parts


def test_cli_ask_over_remote_is_the_local_answer(server, local, brain1):
    path, volume = brain1
    out = subprocess.run([sys.executable, "-m", "medplib_runtime.cli", "ask", str(path), QUESTION, "--slice", "12",
                          "--box", "40,40,200,200", "--max-new-tokens", "8", "--remote", server.url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = local.set_image(volume)
    assert out.stdout.strip().splitlines()[0] == local.ask(AskRequest(key, SLICE, QUESTION, region=REGION,
                                                                       max_new_tokens=8)).text


def _refused(*args: str, env: dict | None = None) -> str:
    import os

    cmd = [sys.executable, "-m", "medplib_runtime.cli", "serve", "--port", str(free_port()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert line.startswith("medplib: error: ") and "\n" not in line and "Traceback" not in line
    return line


def test_7b_without_weights_names_the_flag():
    assert "medplib-7b needs --weights DIR" in _refused("--preset", "medplib-7b")


def test_weights_with_lite_is_refused():
    assert "--weights applies to --preset medplib-7b" in _refused("--weights", str(WEIGHTS))


def test_a_folder_that_is_not_a_checkpoint(tmp_path):
    assert "no config.json" in _refused("--preset", "medplib-7b", "--weights", str(tmp_path), "--allow-cpu")
    (tmp_path / "config.json").write_text(json.dumps({**json.loads((WEIGHTS / "config.json").read_text())}))
    line = _refused("--preset", "medplib-7b", "--weights", str(tmp_path), "--allow-cpu")
    assert "no weights" in line  # the estimate passes; the strict loader finds no tensors, still one line


def test_load_in_without_bitsandbytes():
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    line = _refused(*SEVEN_B, "--load-in", "8bit", "--allow-cpu")
    assert "--load-in 8bit needs bitsandbytes" in line and "a CUDA device" in line


def test_cpu_without_allow_cpu_states_the_speed():
    line = _refused(*SEVEN_B)
    assert "on the CPU reads ≈" in line and "tokens/s" in line and "--allow-cpu" in line


def test_an_estimate_that_does_not_fit():
    line = _refused(*SEVEN_B, "--allow-cpu", env={"MEDPLIB_FAKE_FREE_BYTES": "1000000"})
    assert "medplib-7b needs ≈" in line and "in fp32 on cpu but 0.0 GB are available" in line


def test_remote_refuses_local_loading_flags(server, brain1):
    path, _ = brain1
    out = subprocess.run([sys.executable, "-m", "medplib_runtime.cli", "ask", str(path), QUESTION, "--slice", "12",
                          "--remote", server.url, "--weights", str(WEIGHTS)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "--weights applies to the local runtime" in out.stderr
