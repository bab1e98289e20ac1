"""Quantitative questions get measured answers with units, naming the mask; the CLI's measured
answer to "what is the volume of the lesion?" is `medplib measure`'s number."""

from __future__ import annotations

import json

import pytest

from medplib_runtime.cli import main
from medplib_runtime.volume.measure import measure_labels
from medplib_runtime.volume.measured_answers import measured_answer, quantity_asked

import numpy as np


@pytest.mark.parametrize("question, kind", [
    ("What is the volume of the lesion?", "volume"),
    ("How many mL is the tumour?", "volume"),
    ("What is its largest diameter?", "diameter"),
    ("How long is the lesion?", "diameter"),
    ("How big is it?", "size"),
    ("What size is the mass?", "size"),
    ("How many lesions are there?", "count"),
    ("Which side is the tumour on?", "laterality"),
    ("Is it on the left or right?", "laterality"),
    ("Where is the lesion located?", "position"),
    ("What is the mean intensity in HU?", "intensity"),
    ("What is the density of the nodule?", "intensity"),
    ("What modality is this?", None),
    ("Is there a lesion inside the brain?", None),
])
def test_quantity_is_recognised(question, kind):
    assert quantity_asked(question) == kind


def test_measured_answer_states_number_unit_and_source():
    labels = np.zeros((5, 10, 10), np.uint8)
    labels[1:4, 2:6, 3:8] = 1
    (m,) = measure_labels(labels, spacing=(2.0, 0.5, 0.5), origin=(0, 0, 0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                          names={1: "lesion"})
    answer = measured_answer("What is the volume of the lesion?", (m,), model_text="It looks small.",
                             source="label layer 'seg'")
    assert answer.kind == "volume" and answer.values["1"]["volume_ml"] == pytest.approx(60 * 0.5 / 1000)
    assert "Volume of 'lesion' (label 1): 0.03 mL (60 voxels)." in answer.text
    assert "[measured from label layer 'seg']" in answer.text and answer.text.endswith("Model: It looks small.")
    assert measured_answer("What modality is this?", (m,), source="x") is None
    count = measured_answer("How many lesions are there?", (m, m), source="x")
    assert count.values == {"count": 2}


@pytest.mark.weights
def test_cli_volume_answer_equals_measure(capsys):
    image, labels = "sample_data/brain1_image.nrrd", "sample_data/brain1_label.nrrd"
    assert main(["measure", image, labels]) == 0
    (measured,) = json.loads(capsys.readouterr().out)
    assert main(["ask", image, "--slice", "16", "What is the volume of the lesion?", "--labels", labels,
                 "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{measured['volume_ml']:.2f} mL ({measured['voxels']} voxels)" in out
    assert f"[measured from labels {labels}]" in out
    assert main(["measure", image, labels, "--label", "3"]) == 2
    assert "label 3 is not in the label volume" in capsys.readouterr().err
