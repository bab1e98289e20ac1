"""MeCoVQA-format JSON → training samples, and `medplib train` end to end on the real model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medplib_runtime.cli import main
from medplib_runtime.errors import InputError
from medplib_runtime.training.data_source import samples_from_json


def _dataset(root, *, records=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    img = np.zeros((40, 56), np.uint8)
    img[10:25, 15:40] = 200
    Image.fromarray(img).save(root / "images" / "a.png")
    mask = (img > 0).astype(np.uint8) * 255
    Image.fromarray(mask).save(root / "masks" / "a_lesion.png")
    region = np.zeros_like(mask)
    region[12:20, 20:30] = 255
    Image.fromarray(region).save(root / "masks" / "a_region.png")
    records = records or [
        {"id": "r1", "image": "images/a.png", "modality": "MR", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in <region>masks/a_region.png</region>?"},
            {"from": "gpt", "value": "A lesion."},
            {"from": "human", "value": "Segment the lesion."},
            {"from": "gpt", "value": "It is <SEG>. <mask>masks/a_lesion.png</mask>"}]},
    ]
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_records_become_samples(tmp_path):
    (sample,) = samples_from_json(_dataset(tmp_path))
    assert sample.image.shape == (40, 56) and sample.image.max() == 1.0  # windowed as LocalRuntime does
    assert [t.question for t in sample.turns] == ["What is in <region>?", "Segment the lesion."]
    assert [t.answer for t in sample.turns] == ["A lesion.", "It is <SEG>."]
    assert sample.region.sum() == 80 and len(sample.masks) == 1 and sample.masks[0].sum() == 15 * 25
    assert sample.modality == "MR" and sample.answer_type == "open"
    records = json.loads((tmp_path / "data.json").read_text())
    records[0]["answer_type"] = "yes/no"  # MedPLIB's name for a closed answer
    (closed,) = samples_from_json(_dataset(tmp_path / "c", records=records))
    assert closed.answer_type == "closed"


@pytest.mark.parametrize("records, message", [
    ([{"image": "images/nope.png", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}],
     r"record data.json#0 .*file images/nope.png not found"),
    ([{"image": "images/a.png", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}],
     "must be a human then a gpt message"),
    ([{"conversations": []}], "needs an 'image' path"),
    ([{"image": "images/a.png", "conversations": [{"from": "human", "value": "q"},
                                                   {"from": "gpt", "value": "<SEG> <mask>masks/missing.png</mask>"}]}],
     "file masks/missing.png not found"),
    ([{"image": "images/a.png", "conversations": [{"from": "human", "value": "q"},
                                                   {"from": "gpt", "value": "<mask>masks/a_lesion.png</mask>"}]}],
     "turn 0 has 0 <SEG> but 1 <mask> paths"),
])
def test_bad_records_name_the_record(tmp_path, records, message):
    with pytest.raises(InputError, match=message):
        samples_from_json(_dataset(tmp_path, records=records))


def test_corrupt_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        samples_from_json(path)


@pytest.mark.weights
def test_cli_train_stage3_on_the_real_model_then_resume(tmp_path, capsys):
    data = _dataset(tmp_path / "d")
    config = tmp_path / "stage3.json"
    config.write_text(json.dumps({"stage": 3, "data": [str(data)], "out_dir": str(tmp_path / "out"), "steps": 2,
                                  "grad_accumulation": 2, "warmup_steps": 1, "save_every": 1}))
    assert main(["train", "--stage", "3", "--config", str(config), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 2 and report["trainable_parameters"] > 0 and report["routing"] == [1.0, 0.0]
    assert (tmp_path / "out" / "adapter.safetensors").is_file()
    assert main(["train", "--stage", "3", "--config", str(config), "--steps", "3", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 2
    assert main(["train", "--stage", "3", "--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read training config" in capsys.readouterr().err
