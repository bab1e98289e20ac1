"""A glue file whose metadata a hand edit broke is refused in one line, before the model changes."""

from __future__ import annotations

import json

import pytest
import torch

from _tiny_training import tiny_model
from medplib_runtime.errors import ModelError
from medplib_runtime.glue.recipe import RoutingConfig, trained_routing
from medplib_runtime.modeling.glue_weights import glue_state, load_glue, save_glue
from medplib_runtime.glue.routing import VL_EXPERT

SEQUENCE_STAGE = {"stage": 4, "routing": "sequence", "question_threshold": 0.444}


def test_routing_follows_the_last_stage():
    assert trained_routing({"stages": [SEQUENCE_STAGE]}) == RoutingConfig("sequence", 0.444, VL_EXPERT,
                                                                           reads_history=False)
    assert trained_routing({"stages": [{"stage": 4, "top_k": 2}]}) == RoutingConfig("token", 0.5, None, 2,
                                                                                    reads_history=False)
    assert trained_routing({"stages": [{"stage": 3}]}).forced_expert == 0  # the grounding expert
    assert trained_routing({"stages": [{"stage": 2, "history_examples": 4}]}).reads_history
    assert trained_routing({}) == RoutingConfig(reads_history=False)  # no stage: the layers stay as built


def test_a_glue_reads_a_chats_earlier_turns_only_when_it_was_trained_on_some():
    from medplib_runtime.glue.recipe import trained_on_history

    assert not trained_on_history({"stages": [{"stage": 2}, SEQUENCE_STAGE]})  # recipes before the field
    assert not trained_on_history({"stages": [{"stage": 2, "history_examples": 0}, SEQUENCE_STAGE]})
    assert trained_on_history({"stages": [{"stage": 2, "history_examples": 12}, SEQUENCE_STAGE]})
    assert not trained_on_history({})
    with pytest.raises(ModelError, match="history_examples 'many' is not an integer"):
        trained_on_history({"stages": [{"stage": 2, "history_examples": "many"}]})


@pytest.mark.parametrize("stage, message", [
    ({**SEQUENCE_STAGE, "question_threshold": "high"}, "question_threshold 'high' is not a number"),
    ({**SEQUENCE_STAGE, "question_threshold": 1.7}, "question_threshold 1.7 is not a probability"),
    ({"stage": "four"}, "stage 'four' is not an integer"),
    ({"stage": 4, "top_k": 3}, "top_k 3 is not 1 or 2"),
    ({"stage": 4, "dense_expert": 5}, "dense_expert 5 is not an expert"),
])
def test_a_broken_recipe_field_is_named(stage, message):
    with pytest.raises(ModelError, match=message):
        trained_routing({"stages": [stage]})


def _rewrite_metadata(path, **changes):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(changes)
    save_file(load_file(str(path)), str(path), metadata=meta)


@pytest.mark.parametrize("changes, message", [
    ({"recipe": json.dumps({"stages": [{**SEQUENCE_STAGE, "question_threshold": "x"}]})},
     "question_threshold 'x' is not a number"),
    ({"recipe": "{not json"}, "metadata 'recipe' is missing or not a JSON dict"),
    ({"trained_parts": "7"}, "metadata 'trained_parts' is missing or not a JSON list"),
])
def test_a_glue_file_with_broken_metadata_is_refused_and_the_model_is_untouched(tmp_path, changes, message):
    trained = tiny_model()
    with torch.no_grad():
        for p in trained.vision_projector.parameters():
            p.add_(1.0)  # weights the target model does not have: a partial load would show
    path = save_glue(trained, tmp_path / "glue.safetensors", trained_parts=("vision_projector",),
                     recipe={"stages": [SEQUENCE_STAGE]})
    _rewrite_metadata(path, **changes)
    target = tiny_model()
    before = {k: v.clone() for k, v in glue_state(target).items()}
    with pytest.raises(ModelError, match=message) as err:
        load_glue(target, path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in glue_state(target).items())


def test_info_and_serve_refuse_a_broken_glue_without_torch(tmp_path):
    """`medplib info --glue` and `medplib serve --glue` read the header only (no torch): they refuse
    the same broken recipe, and a truncated copy, in one line instead of listing the parts as trained."""
    import subprocess
    import sys

    from medplib_runtime.glue.files import trained_parts
    from medplib_runtime.server.config import ServerConfig

    path = save_glue(tiny_model(), tmp_path / "glue.safetensors", trained_parts=("vision_projector",),
                     recipe={"stages": [SEQUENCE_STAGE]})
    assert trained_parts(path) == ("vision_projector",)
    whole = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    _rewrite_metadata(path, recipe=json.dumps({"stages": [{**SEQUENCE_STAGE, "question_threshold": 1.7}]}))
    for broken, message in ((path, "question_threshold 1.7 is not a probability"),
                            (tmp_path / "cut.safetensors", "not readable safetensors: tensor data ends")):
        with pytest.raises(ModelError, match=message):
            trained_parts(broken)
        with pytest.raises(ModelError, match=message):
            ServerConfig(token="x" * 16, glue=str(broken))
    probe = ("import sys; from medplib_runtime.glue.files import trained_parts\n"
             "try: trained_parts(sys.argv[1])\nexcept Exception: pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    cli = subprocess.run([sys.executable, "-m", "medplib_runtime.cli", "info", "--glue", str(path)],
                         capture_output=True, text=True)
    assert cli.returncode != 0 and cli.stdout == ""
    assert cli.stderr.strip().splitlines() == [
        f"medplib: error: glue file {path}: recipe's question_threshold 1.7 is not a probability in [0, 1]"]
