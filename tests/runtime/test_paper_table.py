"""scripts/mecovqa_paper_table.py: MeCoVQA-format G and C splits through `medplib eval` (two real CLI
processes, the medplib-7b reference checkpoint), printed in the paper's layout beside the paper's number."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medplib_runtime.data.mecovqa import write_png

pytestmark = pytest.mark.process  # starts `medplib eval` twice (conftest's tiers)

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "tests" / "modeling" / "fixtures" / "medplib7b_tiny" / "checkpoint"
MEDPLIB = str(Path(sys.executable).parent / "medplib")


def _record(rid, image, question, answer, **extra):
    return {"id": rid, "image": image, "conversations": [{"from": "human", "value": "<image>\n" + question},
                                                         {"from": "gpt", "value": answer}], **extra}


@pytest.fixture
def splits(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "masks").mkdir()
    image = (np.arange(48 * 48).reshape(48, 48) % 200).astype(np.uint8)
    write_png(image, tmp_path / "mr.png")
    write_png(image, tmp_path / "ct.png")
    mask = np.zeros((48, 48), np.uint8)
    mask[10:30, 10:30] = 255
    write_png(mask, tmp_path / "masks" / "gt.png")
    seg = "Sure, it is <SEG><mask>masks/gt.png</mask>."
    g = [_record("g1", "mr.png", "Segment the lesion.", seg, modality="MR", question_type="G", answer_type="open"),
         _record("g2", "ct.png", "Segment the lesion.", seg, modality="CT", question_type="G", answer_type="open")]
    c = [_record("c1", "ct.png", "Is this a CT image?", "yes", modality="CT", question_type="C", answer_type="closed"),
         _record("c2", "mr.png", "What is shown in this image?", "An axial MR slice of the brain.", modality="MR",
                 question_type="C", answer_type="open")]
    (tmp_path / "G.json").write_text(json.dumps(g))
    (tmp_path / "C.json").write_text(json.dumps(c))
    return tmp_path / "G.json", tmp_path / "C.json"


def _table(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    script = str(REPO / "scripts" / "mecovqa_paper_table.py")
    return subprocess.run([sys.executable, script, "--medplib", MEDPLIB, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_both_splits_in_the_papers_layout_with_its_number(splits, tmp_path):
    g, c = splits
    run = _table("--g", str(g), "--c", str(c), "--", "--preset", "medplib-7b", "--weights", str(CHECKPOINT),
                 "--allow-cpu", "--max-new-tokens", "4", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("MeCoVQA-G (pixel grounding), 2 records")
    overall = next(line for line in lines if line.split()[:2] == ["all", "2"])
    assert overall.rstrip().endswith("68.1"), "the paper's mDice on MeCoVQA-G sits beside ours"
    assert any(line.split()[0] == "modality=CT" for line in lines) and any("MeCoVQA-C" in line for line in lines)
    assert sum("not transcribed" in line for line in lines) >= 3, "numbers not taken from the paper are not guessed"
    assert (tmp_path / "G.predictions.jsonl").is_file(), "medplib eval's per-answer file, as a user gets it"


def test_medplib_evals_one_line_error_ends_it_with_exit_2(splits, tmp_path):
    g, _ = splits
    run = _table("--g", str(g), "--", "--preset", "medplib-7b", cwd=tmp_path)  # no --weights
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "--weights" in run.stderr
