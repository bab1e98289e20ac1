"""Facts from the file, not guesses (issue #35 item 2): modality questions are answered from the DICOM/NRRD
header or from Hounsfield units, with the source named; weak evidence says so; the model's answer follows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medplib_runtime.imaging.io import read_volume
from medplib_runtime.volume.file_facts import file_fact, intensity_modality, modality_asked, modality_evidence

ROOT = Path(__file__).resolve().parents[2]
MEDPLIB = shutil.which("medplib", path=str(Path(sys.executable).parent)) or "medplib"


# ------------------------------------------------------------------------------------ the questions

@pytest.mark.parametrize("question, form, modality", [
    ("Is this a CT image?", "yes_no", "CT"),
    ("Is this an MRI image?", "yes_no", "MR"),
    ("Is this an MRI?", "yes_no", "MR"),
    ("is it CT", "yes_no", "CT"),
    ("Was this taken with MRI?", "yes_no", "MR"),
    ("Is this image from a CT scanner?", "yes_no", "CT"),
    ("Is this image an X-ray?", "yes_no", "XR"),
    ("Could this be an ultrasound?", "yes_no", "US"),
    ("Is this a T1-weighted MRI?", "yes_no", "MR"),
    ("Is this a CT or an MRI?", "which", None),
    ("Is this image CT or MR?", "which", None),
    ("CT or MRI?", "which", None),
    ("What is the modality of this image?", "which", None),
    ("What imaging modality was used?", "which", None),
    ("Which modality is this?", "which", None),
    ("What kind of scan is this?", "which", None),
    ("How was this image acquired?", "which", None),
    ("Which body part is this?", "body_part", None),
    # names a modality but asks something else: only a note when the file contradicts the premise
    ("Is the lesion bright on CT?", "premise", "CT"),
    ("Is the CT normal?", "premise", "CT"),
    ("Segment the liver in this CT.", "premise", "CT"),
    ("Is this a normal MRI?", "premise", "MR"),
])
def test_modality_questions_are_recognised(question, form, modality):
    asked = modality_asked(question)
    assert asked is not None and (asked.form, asked.modality) == (form, modality), asked


@pytest.mark.parametrize("question", [
    "What is shown in this image?", "Is there a tumor?", "What is the density of the lesion?", "Segment the lesion.",
    "Which imaging findings suggest cancer?", "Show us the lesion", "Does this lesion enhance more on CT or MRI?",
    "Is this MRI-guided biopsy track visible?", "Is this a PET/CT?", "How big is the mass?", "", "Describe <region>."])
def test_other_questions_are_not_modality_questions(question):
    assert modality_asked(question) is None


def test_qualifiers_are_kept_and_not_confirmed():
    asked = modality_asked("Is this a contrast-enhanced CT scan of the chest?")
    assert (asked.form, asked.modality, asked.qualifiers) == ("yes_no", "CT", ("contrast-enhanced", "of the chest"))


# ------------------------------------------------------------------------------------ the evidence

def test_real_volumes_from_their_intensities(brain1_paths, lung2_paths, breast1_paths):
    lung = read_volume(lung2_paths[0])
    ev = modality_evidence(lung.metadata, lung.array)
    assert (ev.modality, ev.source) == ("CT", "intensities") and "air near −1000 HU" in ev.reason
    brain = read_volume(brain1_paths[0])  # a T1 MR, no modality in its NRRD header
    ev = modality_evidence(brain.metadata, brain.array)
    assert (ev.modality, ev.source, ev.by_elimination) == ("MR", "intensities", True)
    breast = read_volume(breast1_paths[0])  # an MR whose values run 6..248: a windowed CT would look the same
    ev = modality_evidence(breast.metadata, breast.array)
    assert ev.modality is None and "8-bit range" in ev.reason


def _ct_in_hu(rng, shape=(12, 64, 64)) -> np.ndarray:
    """Air outside a body of soft tissue (40 ± 15 HU) with fat and a bone rim."""
    a = np.full(shape, -1000.0) + rng.normal(0, 10, shape)
    a[:, 8:56, 8:56] = rng.normal(40, 15, (shape[0], 48, 48))
    a[:, 8:56, 8:12] = rng.normal(-100, 15, (shape[0], 48, 4))
    a[:, 30:36, 20:44] = rng.normal(900, 200, (shape[0], 6, 24))
    return a.astype(np.int16)


def test_synthetic_arrays():
    rng = np.random.default_rng(0)
    ct = _ct_in_hu(rng)
    assert intensity_modality(ct).modality == "CT"
    mr = np.zeros((12, 64, 64))
    mr[:, 10:54, 10:54] = rng.normal(600, 150, (12, 44, 44))
    mr = np.clip(mr + rng.rayleigh(10, mr.shape), 0, None).astype(np.uint16)
    assert intensity_modality(mr).modality == "MR" and intensity_modality(mr).by_elimination
    ambiguous = {
        "8-bit range": np.clip((ct + 160) / 400 * 255, 0, 255).astype(np.uint8),  # a windowed CT saved as 8-bit
        "normalised": mr / mr.max(),
        "rescale offset": ct.astype(np.int32) + 1024,  # a CT without its rescale intercept
        "negative, but with no air": (mr - mr.mean()) / mr.std(),  # z-scored
        "CT crop of soft tissue": np.where(np.arange(64)[None, :, None] < 8, 900, rng.normal(35, 8, (12, 64, 64))),
        "constant": np.full((8, 16, 16), 7.0),
    }
    for why, array in ambiguous.items():
        ev = intensity_modality(array)
        assert ev.modality is None and why in ev.reason, (why, ev)


def _dicom_series(folder: Path, array: np.ndarray, *, modality: str, body_part: str = "") -> None:
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, plane in enumerate(array):
        sl = sitk.GetImageFromArray(plane)
        sl.SetSpacing((0.8, 0.8))
        tags = [("0020|000e", "1.2.826.0.1.3680043.2.1125.9.35"), ("0008|0060", modality),
                ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0032", f"0\\0\\{2.5 * i}"), ("0020|0013", str(i + 1))]
        for tag, value in tags + ([("0018|0015", body_part)] if body_part else []):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{i:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_modality_wins_over_ct_like_intensities(tmp_path):
    ct_values = _ct_in_hu(np.random.default_rng(1), (6, 64, 64))
    _dicom_series(tmp_path / "series", ct_values, modality="MR", body_part="HEAD")
    volume = read_volume(tmp_path / "series")
    assert volume.metadata["modality"] == "MR" and volume.metadata["body_part"] == "HEAD"
    assert intensity_modality(volume.array).modality == "CT", "the intensities alone would say CT"
    fact = file_fact("Is this a CT image?", volume.metadata, volume.array, model_text="yes")
    assert fact.answer == "no"
    assert fact.text == "no: MR, not CT [from the file: DICOM Modality (0008,0060) = MR]\nModel: yes"
    fact = file_fact("What is the modality of this image?", volume.metadata, volume.array)
    assert fact.statement == "MR [from the file: DICOM Modality (0008,0060) = MR]"
    fact = file_fact("Which body part is this?", volume.metadata, volume.array)
    assert fact.statement == "Head [from the file: DICOM BodyPartExamined (0018,0015) = HEAD]"


# ------------------------------------------------------------------------------------ the answers

def test_answers_from_the_intensities(lung2_paths, brain1_paths):
    lung = read_volume(lung2_paths[0])
    meta, arr = lung.metadata, lung.array
    assert file_fact("Is this a CT image?", meta, arr).statement.startswith("yes: CT [from the intensities: Hounsfield")
    assert file_fact("Is this an MRI image?", meta, arr).statement.startswith("no: CT, not MR [from the intensities:")
    assert file_fact("Is this a CT or an MRI?", meta, arr).answer == "CT"
    assert file_fact("Is this an X-ray?", meta, arr).answer == "no"
    qualified = file_fact("Is this a contrast-enhanced CT?", meta, arr).statement
    assert qualified.startswith("yes, CT; whether it is contrast-enhanced, the file does not say [from the intensities")
    assert file_fact("Is the lesion bright on CT?", meta, arr) is None, "the premise holds: nothing to add"
    brain = read_volume(brain1_paths[0])
    meta, arr = brain.metadata, brain.array
    assert file_fact("What is the modality of this image?", meta, arr).statement.startswith(
        "MR [from the intensities: a CT would hold air near −1000 HU")
    assert file_fact("Is this a CT image?", meta, arr).answer == "no"
    assert file_fact("Is this an MRI image?", meta, arr).answer == "yes"
    pet = file_fact("Is this a PET scan?", meta, arr)  # MR by elimination only rules out CT
    assert pet.answer is None and "only rule out a CT" in pet.statement
    premise = file_fact("Is the lesion bright on CT?", meta, arr)
    assert (premise.kind, premise.answer) == ("premise", "no")
    assert premise.statement.startswith("Note: this image is MR, not CT (the question assumes CT) [from the intensit")
    mention = file_fact("What is shown in this image?", meta, arr, model_text="An axial CT slice of the phantom.")
    assert mention.kind == "mention" and "the model's answer calls it CT" in mention.statement
    assert mention.text.endswith("\nModel: An axial CT slice of the phantom.")
    assert file_fact("What is shown in this image?", meta, arr, model_text="A brain MRI.") is None
    assert file_fact("What is shown in this image?", meta, arr) is None


def test_weak_evidence_says_so_and_leaves_the_model_its_guess():
    eight_bit = (np.random.default_rng(2).random((6, 32, 32)) * 255).astype(np.uint8)
    for question in ("Is this a CT image?", "Is this an MRI?", "What imaging modality was used?"):
        fact = file_fact(question, {}, eight_bit, model_text="yes")
        assert fact.answer is None
        assert fact.statement.startswith("The file does not say")
        assert "no modality in its header" in fact.statement and "8-bit range" in fact.statement
        assert fact.statement.endswith("The model's guess follows.") and fact.text.endswith("\nModel: yes")
    assert file_fact("Is the lesion bright on CT?", {}, eight_bit) is None, "no contradiction to report"
    assert file_fact("Which body part is this?", {}, eight_bit) is None, "only a header knows the body part"
    useless = file_fact("Is this a CT?", {"modality": "OT", "format": "DICOM"}, eight_bit)
    assert "DICOM Modality (0008,0060) is 'OT', which names no modality" in useless.statement


def test_free_form_header_values():
    arr = np.zeros((4, 8, 8))
    for raw, answer in (("MRI", "MR"), ("CT", "CT"), ("computed tomography", "CT"), ("T1 weighted", "MR"),
                        ("PT", "PET"), ("CR", "X-ray")):
        fact = file_fact("Which modality is this?", {"modality": raw}, arr)
        assert fact.answer == answer and f"[from the file: the header's modality field = {raw}]" in fact.statement


# ------------------------------------------------------------------------------------ wiring: CLI and chat

class _FakeRuntime:
    def set_image(self, image, **kw):
        return "k"

    def ask(self, request, *, on_token=None):
        from medplib_runtime.schemas import AskResult

        return AskResult("yes", (), None)

    def close(self):
        pass


def test_cli_ask_prints_the_fact_then_the_model(capsys, monkeypatch, brain1_paths):
    import medplib_runtime.cli.commands as cli

    monkeypatch.setattr(cli, "runtime_from_args", lambda args: _FakeRuntime())
    assert cli.main(["ask", str(brain1_paths[0]), "--slice", "12", "Is this a CT image?"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no: MR, not CT [from the intensities: a CT would hold air near −1000 HU")
    assert out.endswith("\nModel: yes\n")
    assert cli.main(["ask", str(brain1_paths[0]), "--slice", "12", "Is there a tumor?"]) == 0
    assert capsys.readouterr().out == "yes\n", "no modality question: the model's answer alone"


@pytest.mark.weights
def test_cli_ask_subprocess_real_model():
    proc = subprocess.run([MEDPLIB, "ask", "sample_data/lung2_crop_image.nrrd", "--slice", "17", "Is this a CT image?"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    assert first.startswith("yes: CT [from the intensities: Hounsfield units: air near −1000 HU")
    assert rest and rest[0].startswith("Model: ")


def test_chat_shows_the_fact_above_the_model(make_napari_viewer, qtbot, brain1_paths):
    from napari_medplib import runtime_factory
    from napari_medplib._chat_widget import ChatDock

    runtime_factory.set_runtime(_FakeRuntime())
    try:
        viewer = make_napari_viewer()
        viewer.add_image(read_volume(brain1_paths[0]).array, name="brain")
        ct = _ct_in_hu(np.random.default_rng(3), (6, 64, 64))
        viewer.add_image(ct, name="dicom", metadata={"modality": "MR"})  # as the reader stores a header's modality
        dock = ChatDock(viewer)
        dock.synchronous = True
        dock.image_combo.setCurrentText("brain")
        dock.question.setText("Is this a CT image?")
        dock.on_ask()
        entry = dock.history.entries("brain")[-1]
        assert entry.measured.startswith("no: MR, not CT [from the intensities:") and "Model:" not in entry.measured
        text = dock.transcript.toPlainText()
        assert "Measured" in text and "no: MR, not CT [from the intensities:" in text
        assert text.index("[from the intensities:") < text.rindex("yes"), "the model's answer still shows, below"
        dock.image_combo.setCurrentText("dicom")
        viewer.dims.set_point(0, 3)  # inside the 6-slice volume
        dock.question.setText("What is the modality of this image?")
        dock.on_ask()
        assert dock.history.entries("dicom")[-1].measured == "MR [from the file: the header's modality field = MR]"
        dock.question.setText("Is there a tumor?")
        dock.on_ask()
        assert dock.history.entries("dicom")[-1].measured == "", "no modality question: nothing measured"
    finally:
        runtime_factory.set_runtime(None)
