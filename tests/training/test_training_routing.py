"""Stage IV's routing: top-k and capacity as configured and reloaded, the routers' and region encoder's own lr,
the routing loss (hand-computed values, the spans it covers) and what it teaches."""

from __future__ import annotations

import json

import pytest
import torch

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.errors import InputError
from medplib_runtime.modeling.glue_weights import load_glue, read_glue_metadata
from medplib_runtime.training.config import TrainConfig
from medplib_runtime.training.trainer import train


def _moe_settings(model) -> set[tuple]:
    from medplib_runtime.modeling.moe import moe_layers

    return {(m.forced_expert, m.top_k, m.capacity_factor) for m in moe_layers(model.llm)}


@pytest.mark.parametrize("stage, extra, expected_train, expected_loaded", [
    (2, {}, {(1, 1, None)}, {(1, 1, None)}),  # before stage IV the router is untrained: the stage's expert
    (3, {}, {(0, 1, None)}, {(0, 1, None)}),
    (4, {}, {(None, 1, 1.5)}, {(None, 1, None)}),  # router, top-1, capacity 1.5 in training, the preset's 2.0 after
    (4, {"top_k": 2, "capacity_factor": 1.0}, {(None, 2, 1.0)}, {(None, 2, None)}),
    (4, {"dense_expert": 1}, {(1, 1, None)}, {(1, 1, None)}),  # the dense-FFN ablation: no router at all
])
def test_routing_is_trained_and_reloaded_as_configured(tmp_path, stage, extra, expected_train, expected_loaded):
    from medplib_runtime.modeling.moe import moe_layers

    model = tiny_model()
    cfg = TrainConfig(stage=stage, data=("synthetic",), out_dir=str(tmp_path), steps=1, grad_accumulation=1,
                      warmup_steps=1, **extra)
    seen = []
    layer = moe_layers(model.llm)[0]
    hook = layer.register_forward_pre_hook(lambda m, args: seen.append((m.forced_expert, m.top_k, m.capacity_factor)))
    report = train(cfg, samples(1), model=model, embedder=FakeEmbedder(), progress=False)
    hook.remove()
    assert set(seen) == expected_train
    assert _moe_settings(tiny_model(glue=report.adapter)) == expected_loaded
    if extra.get("dense_expert") is not None:
        assert "router" not in read_glue_metadata(report.adapter)["trained_parts"]


def test_bad_routing_options_are_refused():
    with pytest.raises(InputError, match="top_k must be 1 or 2"):
        TrainConfig(stage=4, data=("x",), out_dir="o", top_k=3)
    with pytest.raises(InputError, match="dense_expert must be 0, 1"):
        TrainConfig(stage=4, data=("x",), out_dir="o", dense_expert=2)
    with pytest.raises(InputError, match="question_types"):
        TrainConfig(stage=3, data=("x",), out_dir="o", question_types=("G", "X"))


def test_router_lr_gets_its_own_group():
    from medplib_runtime.training.params import param_groups, prepare_stage

    model = tiny_model()
    chosen = prepare_stage(model, TrainConfig(stage=4, data=("x",), out_dir="o").trains, None)
    groups = param_groups(chosen, lr=3e-4, weight_decay=0.0, router_lr=1e-2)
    router = [g for g in groups if g["lr_scale"] != 1.0]
    assert len(router) == 1 and router[0]["lr"] == 1e-2 and router[0]["lr_scale"] == pytest.approx(1e-2 / 3e-4)
    names = {id(p): n for n, p in chosen}
    assert {".router." in names[id(p)] for p in router[0]["params"]} == {True}
    assert sum(len(g["params"]) for g in groups) == len(chosen)
    assert len(param_groups(chosen, lr=3e-4, weight_decay=0.0)) == 2  # no router_lr: as before


def test_region_lr_gets_its_own_group_and_moves_the_region_encoder_further(tmp_path):
    from medplib_runtime.training.params import param_groups, prepare_stage

    model = tiny_model()
    chosen = prepare_stage(model, TrainConfig(stage=2, data=("x",), out_dir="o").trains, None)
    groups = param_groups(chosen, lr=3e-4, weight_decay=0.0, region_lr=3e-3)
    names = {id(p): n for n, p in chosen}
    own = [g for g in groups if g["lr_scale"] != 1.0]
    assert len(own) == 1 and own[0]["lr_scale"] == pytest.approx(10.0)
    assert {names[id(p)].split(".")[0] for p in own[0]["params"]} == {"region_encoder"}
    with pytest.raises(InputError, match="region_lr must be > 0"):
        TrainConfig(stage=2, data=("x",), out_dir="o", region_lr=0)

    def region_step(region_lr):
        model = tiny_model()
        before = {k: v.clone() for k, v in model.region_encoder.state_dict().items()}
        cfg = TrainConfig(stage=2, data=("synthetic",), out_dir=str(tmp_path / str(region_lr)), steps=2,
                          grad_accumulation=2, warmup_steps=0, region_lr=region_lr)
        train(cfg, samples(2), model=model, embedder=FakeEmbedder(), progress=False)
        return max(float((v - before[k]).abs().max()) for k, v in model.region_encoder.state_dict().items())

    assert region_step(1e-2) > 5 * region_step(None)  # Adam: each step moves a weight by about its lr


def test_routing_loss_matches_hand_computed_values():
    import math

    from medplib_runtime.training.losses import routing_loss

    even = torch.zeros(3, 2)  # p = 0.5 for both experts: CE = log 2 towards either
    assert float(routing_loss([even, even[:1]], 0)) == pytest.approx(math.log(2))
    sure = torch.tensor([[0.0, math.log(3)]])  # p = (0.25, 0.75)
    assert float(routing_loss([sure], 1)) == pytest.approx(-math.log(0.75))
    assert float(routing_loss([sure], 0)) == pytest.approx(-math.log(0.25))


def test_route_supervision_sends_seg_answers_to_the_grounding_expert(tmp_path):
    """Stage IV with the routing loss: after training, the router picks the grounding expert (0) for the
    tokens of an answer with <SEG> and the VL expert (1) for the tokens of a VQA answer."""
    from medplib_runtime.modeling.moe import tap_router_logits
    from medplib_runtime.training.examples import encode

    model = tiny_model()
    cfg = TrainConfig(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=12, grad_accumulation=4,
                      warmup_steps=1, route_supervision=1.0, router_lr=5e-2)
    report = train(cfg, samples(4), model=model, embedder=FakeEmbedder(), progress=False)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["route"] < log[0]["route"] < 0.75  # starts near log 2, falls
    assert read_glue_metadata(report.adapter)["recipe"]["stages"][-1]["route_supervision"] == 1.0
    vqa, seg = encode(samples(1)[0], model.tokenizer, system=model.cfg.system_prompt,
                      n_image_tokens=model.n_image_tokens, seg_id=model.token_ids["<SEG>"], max_tokens=512)
    fresh = tiny_model()
    load_glue(fresh, report.adapter)
    fresh.eval()
    emb = FakeEmbedder()(samples(1)[0])
    for ex, expert in ((vqa, 1), (seg, 0)):
        from medplib_runtime.imaging.transforms import mask_to_model

        region = None
        if ex.region:
            region = fresh.region_token(emb.image_embedding, mask_to_model(ex.sample.region, emb.info, 256)[0, 0])
        embeds = fresh.embed_inputs(ex.input_ids, image_tokens=fresh.image_tokens(pixel_embedding=emb.image_embedding),
                                    region_tokens=region)
        with torch.no_grad(), tap_router_logits(fresh.llm) as taps:
            fresh.llm.model(inputs_embeds=embeds)
        answer_at = (ex.labels[0, 1:] != -100).nonzero()[:, 0]
        chosen = torch.cat([tap[0][answer_at] for tap in taps]).argmax(-1)
        assert (chosen == expert).float().mean() >= 0.75, (expert, chosen)  # untrained: one expert for both


def test_route_supervision_needs_a_router():
    with pytest.raises(InputError, match="route_supervision"):
        TrainConfig(stage=3, data=("x",), out_dir="o", route_supervision=1.0)
    with pytest.raises(InputError, match="route_supervision"):
        TrainConfig(stage=4, data=("x",), out_dir="o", route_supervision=1.0, dense_expert=1)
    with pytest.raises(InputError, match="route_supervision"):
        TrainConfig(stage=4, data=("x",), out_dir="o", route_supervision=-1.0)


def test_turn_route_span_covers_the_current_question_and_answer():
    """route_span "turn": from just after the image (first turn) or the previous answer's end (later
    turns) to the end; "answer": the last prompt token and the answer's own."""
    from medplib_runtime.training.examples import encode
    from medplib_runtime.training.forward import LossWeights, TrainModule

    model = tiny_model()
    first, second = encode(samples(1)[0], model.tokenizer, system=model.cfg.system_prompt,
                           n_image_tokens=model.n_image_tokens, seg_id=model.token_ids["<SEG>"], max_tokens=512)
    turn = TrainModule(model, LossWeights(route=1.0, route_span="turn"), region_mask_fn=None)
    answer = TrainModule(model, LossWeights(route=1.0, route_span="answer"), region_mask_fn=None)
    for ex in (first, second):
        ids, labels = ex.input_ids[0], ex.labels[0]
        at = turn._routed_positions(ids, labels, ex.turn_start)
        answer0 = int((labels != -100).nonzero()[0, 0])
        assert at[-1] == len(ids) - 1 and list(at) == list(range(int(at[0]), len(ids)))
        assert not (ids[at] == model.token_ids["<image>"]).any()  # never the image: it precedes the question
        assert set(range(answer0 - 1, len(ids) - 1)) == set(answer._routed_positions(ids, labels, 0).tolist())
    assert int(first.input_ids[0, turn._routed_positions(first.input_ids[0], first.labels[0], 0)[0] - 1]) \
        == model.token_ids["<im_end>"]  # the first turn: right after the image
    # the second turn: from its own USER on (± the word the tiny tokenizer merges across "</s>USER:"),
    # after the first turn's question and answer
    start = int(turn._routed_positions(second.input_ids[0], second.labels[0], second.turn_start)[0])
    second_answer0 = int((second.labels[0] != -100).nonzero()[0, 0])
    assert len(first.input_ids[0]) - 2 <= start < second_answer0 - 3
