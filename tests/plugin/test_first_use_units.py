"""The pieces of first use that need no model: which layers are prompts, colours, exact undo, chat chips,
and `medplib-napari` without a display."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from napari.layers import Labels, Points, Shapes

from medplib_runtime.schemas import SliceRef
from napari_medplib.chat_state import ChatEntry, ChatHistory
from napari_medplib.chat_view import structure_asked, transcript_html
from napari_medplib.colours import PALETTE, REFERENCE_COLOUR, give_colour
from napari_medplib.display import display_problem
from napari_medplib.label_writes import undo_write, write_mask, write_volume
from napari_medplib.layer_roles import PREDICTION, REFERENCE, SCRIBBLE, is_prompt_layer, is_target_layer, with_role


def test_only_layers_a_user_draws_in_are_prompts():
    ref = Labels(np.zeros((3, 4, 4), np.uint8), metadata=with_role({}, REFERENCE))
    pred = Labels(np.zeros((3, 4, 4), np.uint8), metadata=with_role({}, PREDICTION))
    own = Labels(np.zeros((3, 4, 4), np.uint8))
    scribble = Labels(np.zeros((3, 4, 4), np.uint8), metadata=with_role({}, SCRIBBLE))
    assert [is_prompt_layer(x) for x in (Shapes(ndim=3), Points(ndim=3), ref, pred, own, scribble)] == [
        True, True, False, False, False, True]
    assert [is_target_layer(x) for x in (ref, pred, own, scribble)] == [False, True, True, False]


def test_each_written_mask_gets_a_colour_nobody_else_has():
    layers = [Labels(np.zeros((4, 4), np.uint8), metadata=with_role({}, PREDICTION)) for _ in range(2)]
    colours = [give_colour(layers, layers[0], 1), give_colour(layers, layers[0], 2), give_colour(layers, layers[1], 1)]
    assert len(set(colours)) == 3 and REFERENCE_COLOUR not in colours and set(colours) <= set(PALETTE)
    assert give_colour(layers, layers[0], 1) == colours[0], "a label keeps its colour"
    assert np.allclose(layers[1].colormap.map(1)[:3], [int(colours[2][i:i + 2], 16) / 255 for i in (1, 3, 5)])


def test_undo_restores_only_what_the_write_changed_and_still_holds():
    layer = Labels(np.zeros((3, 8, 8), np.uint8))
    layer.data[1, 0:2, 0:2] = 7  # somebody else's label: protected
    mask = np.zeros((8, 8), bool)
    mask[0:4, 0:4] = True
    write = write_mask(layer, mask, SliceRef(0, 1), label=3, name="lesion")
    assert write.changed == 16 - 4 and layer.metadata["medplib_label_names"] == {3: "lesion"}
    layer.data[1, 3, 3] = 5  # painted over the written mask after the write
    layer.data[1, 6, 6] = 3  # painted label 3 elsewhere after the write
    assert undo_write(layer, write) == 11
    assert layer.data[1, 3, 3] == 5 and layer.data[1, 6, 6] == 3 and (layer.data[1, 0:2, 0:2] == 7).all()
    assert (layer.data[1] == 3).sum() == 1 and layer.metadata["medplib_label_names"] == {}, "the name map as before"
    layer.metadata["medplib_label_names"][4] = "old name"
    volume = np.zeros((3, 8, 8), bool)
    volume[:, 4:8, 4:8] = True
    write3d = write_volume(layer, volume, label=4, name="new name")
    layer.data[2, 7, 7] = 1  # a later repaint inside the 3D write
    undo_write(layer, write3d)
    assert layer.data[2, 7, 7] == 1 and not (layer.data == 4).any()
    assert layer.metadata["medplib_label_names"][4] == "old name"


@pytest.mark.parametrize("question, what", [
    ("Segment the lesion.", "lesion"), ("Please segment the tumor in this image.", "tumor"),
    ("Where is the nodule?", "nodule"), ("Outline the left kidney", "left kidney"),
    ("What is the modality of this image?", "")])
def test_the_structure_asked_names_a_chat_mask(question, what):
    assert structure_asked(question) == what


def test_a_seg_token_is_a_chip_never_raw_text():
    history = ChatHistory()
    mask = np.zeros((4, 4), np.uint8)
    history._by_image["ct"] = [ChatEntry("Segment the lesion.", "Sure, it is <SEG>.", SliceRef(0, 2), "none",
                                         (mask,), "grounding 100%")]
    html = transcript_html(history, "ct")
    assert "<SEG>" not in html and "&lt;SEG&gt;" not in html
    assert "href='mask:0:0'" in html and "mask 1 → add as &#x27;lesion&#x27;" in html


def test_no_display_is_one_line_and_exit_2():
    assert display_problem({"DISPLAY": ""}).startswith("no display")
    assert display_problem({"DISPLAY": ":987"}).startswith("cannot open display ':987'")
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    run = subprocess.run([sys.executable, "-m", "napari_medplib.launch"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("medplib-napari: error: no display")


def test_a_bad_file_is_one_line_before_napari_opens(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a nifti")
    for path in (str(bad), str(tmp_path / "missing.nrrd")):
        run = subprocess.run([sys.executable, "-m", "napari_medplib.launch", path], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith("medplib-napari: error: ")


def test_without_torch_the_plugin_says_to_connect_to_a_server(monkeypatch):
    from medplib_runtime.errors import RuntimeNotReady
    from napari_medplib import runtime_factory
    from napari_medplib._runtime_widget import describe

    runtime_factory.set_runtime(None)
    monkeypatch.setattr(runtime_factory, "local_model_installed", lambda: False)
    with pytest.raises(RuntimeNotReady, match=r"torch is not installed\): connect to a `medplib serve`"):
        runtime_factory.get_runtime()
    assert describe(None) == "none: torch is not installed here, connect to a server"
    runtime_factory.warm_segmentation()
    runtime_factory.wait_background()
    state = runtime_factory.warm_status()
    assert not state.busy and state.failed[0][1] == runtime_factory.NO_LOCAL_MODEL
    runtime_factory.set_runtime(None)


def test_a_server_named_in_the_environment_is_the_default(monkeypatch):
    from medplib_runtime.errors import InputError
    from medplib_runtime.remote import RemoteRuntime
    from napari_medplib import runtime_factory
    from napari_medplib._runtime_widget import describe

    runtime_factory.set_runtime(None)
    monkeypatch.setattr(runtime_factory, "local_model_installed", lambda: False)
    monkeypatch.setenv(runtime_factory.URL_ENV, "http://127.0.0.1:9")
    assert describe(None) == "remote: http://127.0.0.1:9 (from $MEDPLIB_REMOTE_URL; not connected yet)"
    runtime = runtime_factory.get_runtime()  # nothing is sent until the first call
    assert isinstance(runtime, RemoteRuntime) and runtime.url == "http://127.0.0.1:9"
    runtime_factory.set_runtime(None)
    monkeypatch.setenv(runtime_factory.URL_ENV, "ftp://gpu-box")
    with pytest.raises(InputError, match=r"^\$MEDPLIB_REMOTE_URL: remote URL 'ftp://gpu-box' must start with http"):
        runtime_factory.get_runtime()
    assert runtime_factory.current_runtime() is None


def test_a_long_chat_sends_only_the_turns_that_fit_the_cap():
    from medplib_runtime.schemas import AskResult
    from medplib_runtime.validation import MAX_HISTORY_CHARS, check_question

    history = ChatHistory()
    for i in range(40):
        history.add("ct", f"question {i} " + "x" * 500, AskResult("answer " + "y" * 500, (), None), SliceRef(0, 0),
                    "none")
    turns = history.turns("ct")
    assert 0 < len(turns) < 40 and turns[-1].question.startswith("question 39")
    assert sum(len(t.question) + len(t.answer) for t in turns) <= MAX_HISTORY_CHARS
    check_question("And now?", region=False, history=turns)  # accepted


def test_the_cli_prints_masks_as_mask_n_never_the_raw_token():
    from medplib_runtime.conversation import readable_answer

    assert readable_answer("Sure, it is <SEG>.") == "Sure, it is [mask 1]."
    assert readable_answer("<SEG> and <SEG>") == "[mask 1] and [mask 2]" and readable_answer("no") == "no"
