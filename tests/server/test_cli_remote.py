"""The CLI on a remote runtime: `--remote URL` gives the same files and the same one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medplib_runtime.cli import main
from medplib_runtime.imaging.io import read_volume

pytestmark = pytest.mark.weights
BOX = "84,162,115,206"


def test_segment_remote_equals_local(tmp_path, capsys, brain1_paths, remote_server):
    image = str(brain1_paths[0])
    outs = {}
    for name, extra in (("local", []), ("remote", ["--remote", remote_server.url])):
        out = tmp_path / f"{name}.nii.gz"
        assert main(["segment", image, "--slice", "16", "--box", BOX, "--out", str(out), *extra]) == 0
        outs[name] = read_volume(str(out))
        summary = json.loads(capsys.readouterr().out)
        assert summary["voxels"] > 500
    assert np.array_equal(outs["local"].array, outs["remote"].array)
    assert outs["local"].spacing == outs["remote"].spacing and outs["local"].origin == outs["remote"].origin


def test_info_and_ask_remote(capsys, brain1_paths, remote_server):
    assert main(["info", "--remote", remote_server.url]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transport"] == f"remote {remote_server.url}" and info["preset"] == "medplib-lite"
    assert main(["ask", str(brain1_paths[0]), "--slice", "16", "--box", BOX, "What is this?", "--max-new-tokens", "4",
                 "--remote", remote_server.url]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and "not grounded in the image yet" not in captured.err  # the shipped glue


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:9", "cannot reach the medplib server"),
    ("127.0.0.1:8765", "must start with http"),
])
def test_remote_errors_are_one_line_exit_2(capsys, tmp_path, brain1_paths, url, message):
    assert main(["segment", str(brain1_paths[0]), "--slice", "16", "--box", BOX, "--out", str(tmp_path / "x.nii.gz"),
                 "--remote", url]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
