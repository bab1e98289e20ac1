"""The `medplib` CLI contract: segment/ask/info end to end on real weights, and bad input → one line, exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medplib_runtime.cli import main

MEDPLIB = shutil.which("medplib", path=str(Path(sys.executable).parent)) or "medplib"


def lesion_slice_and_box(label_path: Path, pad: int = 3):
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))) > 0
    k = int(label.sum(axis=(1, 2)).argmax())
    rows, cols = np.nonzero(label[k])
    box = (max(rows.min() - pad, 0), max(cols.min() - pad, 0),
           min(rows.max() + pad, label.shape[1] - 1), min(cols.max() + pad, label.shape[2] - 1))
    return k, box, label


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def run_main(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def brain1_image(brain1_paths):
    return str(brain1_paths[0])


@pytest.mark.parametrize("extra, message", [
    (["--slice", "99", "--box", "1,1,5,5"], "slice 99 is out of range"),
    (["--slice", "12", "--box", "1,1,1,5"], "degenerate"),
    (["--slice", "12", "--box", "1,1,300,5"], "outside"),
    (["--slice", "12", "--point", "10,999"], "outside"),
    (["--slice", "12", "--box", "1,2,3"], "expected four numbers"),
    (["--slice", "12"], "no prompt"),
])
def test_segment_bad_input_is_one_line_exit_2(capsys, tmp_path, brain1_image, extra, message):
    code, out, err = run_main(capsys, ["segment", brain1_image, *extra, "--out", str(tmp_path / "x.nii.gz")])
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_unreadable_and_non_volume_inputs(capsys, tmp_path):
    junk = tmp_path / "notes.nii.gz"
    junk.write_text("not an image")
    code, _, err = run_main(capsys, ["segment", str(junk), "--slice", "0", "--box", "1,1,5,5", "--out", str(tmp_path / "o.nrrd")])
    assert code == 2 and "not a readable image" in err

    code, _, err = run_main(capsys, ["segment", str(tmp_path / "missing.nrrd"), "--slice", "0", "--box", "1,1,5,5",
                                     "--out", str(tmp_path / "o.nrrd")])
    assert code == 2 and err.startswith("medplib: error:")

    rgb = sitk.GetImageFromArray(np.zeros((20, 30, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    code, _, err = run_main(capsys, ["segment", str(tmp_path / "rgb.mha"), "--slice", "0", "--box", "1,1,5,5",
                                     "--out", str(tmp_path / "o.nrrd")])
    assert code == 2 and ("RGB" in err or "channel" in err)

    constant = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 32, 32), 7, np.int16)), str(constant))
    code, _, err = run_main(capsys, ["segment", str(constant), "--slice", "1", "--box", "1,1,9,9",
                                     "--out", str(tmp_path / "o.nrrd")])
    assert code == 2 and "constant" in err


def test_region_mask_errors(capsys, tmp_path, brain1_image):
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((256, 256), bool))
    code, _, err = run_main(capsys, ["segment", brain1_image, "--slice", "12", "--region-mask", str(empty),
                                     "--out", str(tmp_path / "o.nrrd")])
    assert code == 2 and "region mask is empty" in err
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((10, 10), bool))
    code, _, err = run_main(capsys, ["segment", brain1_image, "--slice", "12", "--region-mask", str(wrong),
                                     "--out", str(tmp_path / "o.nrrd")])
    assert code == 2 and "shape (10, 10)" in err


def test_ask_empty_question(capsys, brain1_image):
    code, _, err = run_main(capsys, ["ask", brain1_image, "--slice", "12", "   "])
    assert code == 2 and "empty question" in err
    code, _, err = run_main(capsys, ["ask", brain1_image, "--slice", "12", "Is <region> the lesion?"])
    assert code == 2 and "no region was given" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(capsys, ["ask", brain1_image, "--slice", "12", "What is <image> here?"])
    assert code == 2 and "holds <image>" in err and len(err.strip().splitlines()) == 1


@pytest.mark.weights
def test_cli_segment_box_on_brain1_writes_geometry_exact_labels(tmp_path, brain1_paths):
    image_path, label_path = brain1_paths
    k, (r0, c0, r1, c1), label = lesion_slice_and_box(label_path)
    out = tmp_path / "lesion.nii.gz"
    proc = subprocess.run([MEDPLIB, "segment", str(image_path), "--slice", str(k), "--box", f"{r0},{c0},{r1},{c1}",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    written = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(image_path))
    assert written.GetSpacing() == pytest.approx(ref.GetSpacing())
    assert written.GetOrigin() == pytest.approx(ref.GetOrigin())
    assert written.GetDirection() == pytest.approx(ref.GetDirection())
    arr = sitk.GetArrayFromImage(written)
    assert arr.shape == label.shape
    assert np.count_nonzero(np.delete(arr, k, axis=0)) == 0, "mask must be on slice K only"
    assert summary["voxels"] == int(np.count_nonzero(arr))
    sx, sy = ref.GetSpacing()[:2]
    assert summary["area_mm2"] == pytest.approx(summary["voxels"] * sx * sy, rel=1e-3)
    assert dice(arr[k], label[k]) >= 0.80


@pytest.mark.weights
def test_cli_ask_end_to_end_with_the_shipped_glue(capsys, brain1_image, tmp_path):
    code, out, err = run_main(capsys, ["ask", brain1_image, "--slice", "12", "--box", "100,100,140,150",
                                       "What is in the region?", "--max-new-tokens", "8",
                                       "--out", str(tmp_path / "m.nrrd")])
    assert code == 0, err
    assert out.strip(), "an answer is printed"
    assert "untrained" not in err  # the shipped glue trained every part


@pytest.mark.weights
def test_cli_info_reports_parts():
    proc = subprocess.run([MEDPLIB, "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    names = {p["name"]: p["trained"] for p in info["parts"]}
    assert info["preset"] == "medplib-lite"
    assert names["pixel_encoder"] is True and names["llm"] is True
    assert set(info["untrained"]) == {n for n, t in names.items() if not t}
    assert info["versions"]["torch"].startswith("2.")


def test_cli_info_with_a_corrupt_glue_file_says_so(capsys, tmp_path):
    bad = tmp_path / "glue.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    code, out, err = run_main(capsys, ["info", "--glue", str(bad)])
    assert code != 0 and not out
    assert "not readable safetensors" in err and str(bad) in err and len(err.strip().splitlines()) == 1


@pytest.mark.weights
def test_cli_grounding_answer_names_its_mask_never_the_raw_token(tmp_path, brain1_image):
    proc = subprocess.run([MEDPLIB, "ask", brain1_image, "--slice", "16", "Segment the lesion.",
                           "--out", str(tmp_path / "seg.nii.gz")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "<SEG>" not in proc.stdout and "[mask 1]" in proc.stdout
    assert json.loads(proc.stderr.strip().splitlines()[-1])["masks"] == 1


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from medplib_runtime.cli.commands import build_parser

    silent = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                silent += [f"{name} {a.option_strings or a.dest}" for a in sub._actions
                           if not isinstance(a, argparse._HelpAction) and not a.help]
    assert silent == []
