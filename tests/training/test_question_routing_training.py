"""Question-level routing (``routing: "sequence"``, ours): stage IV trains only the routers, as a
classifier of the question, on cached router inputs; the threshold and the class balance."""

from __future__ import annotations

import json

import pytest
import torch

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.errors import InputError
from medplib_runtime.modeling.glue_weights import read_glue_metadata
from medplib_runtime.training.config import TrainConfig
from medplib_runtime.training.trainer import train


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_question_level_routing_trains_only_the_routers_and_routes_each_question(tmp_path):
    """routing "sequence": stage IV moves the routers and nothing else, the adapter reloads as
    question-routed, and the trained routers send the grounding question to the grounding expert
    and the region question to the vision-language expert (the tiny model learns these four samples)."""
    from medplib_runtime.imaging.transforms import mask_to_model
    from medplib_runtime.glue.routing import GROUND_EXPERT, VL_EXPERT
    from medplib_runtime.modeling.moe import moe_layers
    from medplib_runtime.modeling.generation import prefill
    from medplib_runtime.modeling.question_routing import choose_expert, question_positions
    from medplib_runtime.training.examples import encode

    model = tiny_model()
    before = _snapshot(model)
    cfg = TrainConfig(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=12, grad_accumulation=4,
                      warmup_steps=1, routing="sequence", route_supervision=1.0, router_lr=5e-2)
    assert cfg.trains == ("router",) and cfg.forced_expert == VL_EXPERT
    report = train(cfg, samples(4), model=model, embedder=FakeEmbedder(), progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(".router." in k for k in changed), sorted(changed)[:5]
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert "ce" not in log[0] and log[-1]["route"] < log[0]["route"]  # no text loss: the routers alone
    fresh = tiny_model(glue=report.adapter)
    assert fresh.routing.per_question and {m.forced_expert for m in moe_layers(fresh.llm)} == {VL_EXPERT}
    fresh.eval()
    emb = FakeEmbedder()(samples(1)[0])
    vqa, seg = encode(samples(1)[0], fresh.tokenizer, system=fresh.cfg.system_prompt,
                      n_image_tokens=fresh.n_image_tokens, seg_id=fresh.token_ids["<SEG>"], max_tokens=512)
    for ex, expert in ((vqa, VL_EXPERT), (seg, GROUND_EXPERT)):
        region = None
        if ex.region:
            region = fresh.region_token(emb.image_embedding, mask_to_model(ex.sample.region, emb.info, 256)[0, 0])
        answer0 = int((ex.labels[0] != -100).nonzero()[0, 0])
        embeds = fresh.embed_inputs(ex.input_ids[:, :answer0], region_tokens=region,
                                    image_tokens=fresh.image_tokens(pixel_embedding=emb.image_embedding))
        at = question_positions(ex.input_ids[0], turn_start=ex.turn_start, im_end_id=fresh.token_ids["<im_end>"],
                                end=answer0)
        route = choose_expert(fresh.llm, lambda: prefill(fresh.llm, embeds), at,
                              threshold=fresh.routing.question_threshold)
        assert route.expert == expert, (expert, route.p_ground, fresh.routing.question_threshold)
        # the choice is the call's: the layers keep the routing the model was built with
        assert {m.forced_expert for m in moe_layers(fresh.llm)} == {VL_EXPERT}
        assert (route.prefilled is not None) == (expert == VL_EXPERT)  # the cache of the expert that read it
    threshold = read_glue_metadata(report.adapter)["recipe"]["stages"][-1]["question_threshold"]
    assert threshold == fresh.routing.question_threshold


def test_question_level_routing_reads_each_question_once_and_its_cached_loss_is_the_full_one(tmp_path):
    """The routers do not change the states they read (every token on the VL expert), so each example's
    router inputs are computed once: the LLM runs once per distinct example, and the cached routing loss
    and question score equal the full forward's."""
    from medplib_runtime.training.forward import LossWeights, TrainModule
    from medplib_runtime.training.trainer import _examples

    model = tiny_model()
    cfg = TrainConfig(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=12, grad_accumulation=4,
                      warmup_steps=1, routing="sequence", route_supervision=1.0, router_lr=5e-2)
    llm_runs = []
    hook = model.llm.model.register_forward_hook(lambda *args: llm_runs.append(1))
    report = train(cfg, samples(4), model=model, embedder=FakeEmbedder(), progress=False)
    hook.remove()
    assert report.examples == 8 and len(llm_runs) == 8  # 48 visits, one LLM run per example
    model.eval()
    from medplib_runtime.imaging.transforms import mask_to_model

    fn = lambda region, e: mask_to_model(region, e.info, 256)[0, 0]  # noqa: E731
    weights = LossWeights(0.0, route=1.0, route_span="question", route_balance=(2.0, 0.5))
    for ex in _examples(model, samples(1), cfg):
        emb = FakeEmbedder()(ex.sample)
        full_module, cached = TrainModule(model, weights, region_mask_fn=fn), \
            TrainModule(model, weights, region_mask_fn=fn, cache_router_inputs=True)
        full, _ = full_module(ex, emb)
        for _ in range(2):  # first use fills the cache, the second reads it
            assert torch.allclose(cached(ex, emb)[0], full)
        assert cached.question_scores[0] == pytest.approx(full_module.question_scores[0])


def test_question_level_routing_with_an_extra_trained_part_runs_the_full_forward(tmp_path):
    """extra_trains beside the routers: their states change every step, so nothing is cached and the
    extra part learns through the routing loss."""
    from medplib_runtime.training.trainer import routers_only

    base = dict(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=3, grad_accumulation=2, warmup_steps=1,
                routing="sequence", route_supervision=1.0, router_lr=5e-2)
    assert routers_only(TrainConfig(**base))
    cfg = TrainConfig(**base, extra_trains=("region_encoder",), region_lr=5e-2)
    assert not routers_only(cfg) and cfg.trains == ("router", "region_encoder")
    model = tiny_model()
    before = {k: v.clone() for k, v in model.region_encoder.state_dict().items()}
    llm_runs = []
    hook = model.llm.model.register_forward_hook(lambda *args: llm_runs.append(1))
    train(cfg, samples(2), model=model, embedder=FakeEmbedder(), progress=False)
    hook.remove()
    assert len(llm_runs) == 6  # every visit, not once per example
    assert any(not torch.equal(before[k], v) for k, v in model.region_encoder.state_dict().items())


def test_question_level_routing_is_a_stage_four_setting():
    with pytest.raises(InputError, match="routing 'sequence'"):
        TrainConfig(stage=3, data=("x",), out_dir="o", routing="sequence", route_supervision=1.0)
    with pytest.raises(InputError, match="routing 'sequence'"):
        TrainConfig(stage=4, data=("x",), out_dir="o", routing="sequence")  # no routing loss: nothing to learn
    with pytest.raises(InputError, match="routing must be"):
        TrainConfig(stage=4, data=("x",), out_dir="o", routing="per-token")


def test_route_balance_weighs_both_targets_equally():
    from medplib_runtime.training.trainer import _route_balance

    model = tiny_model()
    from medplib_runtime.training.examples import encode

    exs = [ex for s in samples(2) for ex in encode(s, model.tokenizer, system=model.cfg.system_prompt,
                                                   n_image_tokens=model.n_image_tokens,
                                                   seg_id=model.token_ids["<SEG>"], max_tokens=512)]
    exs = exs + [e for e in exs if not e.masks]  # 2 grounding, 4 VQA
    w_ground, w_vl = _route_balance(exs)
    assert w_ground * 2 == pytest.approx(w_vl * 4) == pytest.approx(3.0)


def test_best_threshold_separates_hand_made_scores():
    from medplib_runtime.modeling.question_routing import best_threshold

    assert best_threshold([(0.55, False), (0.57, False), (0.62, True), (0.66, True)]) == pytest.approx(0.595)
    # one VQA question above the grounding ones cannot be helped: the cut still separates the rest
    t = best_threshold([(0.55, False), (0.56, False), (0.60, True), (0.61, True), (0.70, False)])
    assert 0.56 < t < 0.60
    assert best_threshold([(0.9, True), (0.8, True)]) == 0.5  # one kind only: no information


def test_question_pool_last_trains_and_routes_on_the_prompts_last_position_only(tmp_path):
    """``question_pool: "last"``: the routers learn from, and decide on, the prompt's last position, whose
    state has read the whole question (the per-token mean cannot tell "Describe this image." from a
    grounding question: docs/training.md). The adapter says so and reloads that way."""
    from medplib_runtime.errors import ModelError
    from medplib_runtime.glue.recipe import trained_routing
    from medplib_runtime.imaging.transforms import mask_to_model
    from medplib_runtime.training.forward import LossWeights, TrainModule
    from medplib_runtime.training.trainer import _examples

    model = tiny_model()
    cfg = TrainConfig(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=6, grad_accumulation=2,
                      warmup_steps=1, routing="sequence", route_supervision=1.0, router_lr=5e-2,
                      question_pool="last")
    report = train(cfg, samples(4), model=model, embedder=FakeEmbedder(), progress=False)
    meta = read_glue_metadata(report.adapter)
    assert meta["recipe"]["stages"][-1]["question_pool"] == "last" and meta["routing"].question_pool == "last"
    assert tiny_model().routing.question_pool == "mean"
    assert tiny_model(glue=report.adapter).routing.question_pool == "last"

    fn = lambda region, e: mask_to_model(region, e.info, 256)[0, 0]  # noqa: E731
    for pool, rows in (("last", 1), ("mean", None)):
        module = TrainModule(model, LossWeights(0.0, route=1.0, route_span="question", question_pool=pool),
                             region_mask_fn=fn, cache_router_inputs=True)
        ex = _examples(model, samples(1), cfg)[0]
        module(ex, FakeEmbedder()(ex.sample))
        (inputs,) = module.router_input_cache.values()
        n = {x.shape[0] for x in inputs}
        assert n == {rows} if rows else n.pop() > 5  # one position, or the whole question

    with pytest.raises(InputError, match="question_pool must be"):
        TrainConfig(stage=4, data=("x",), out_dir="o", routing="sequence", route_supervision=1.0, question_pool="max")
    with pytest.raises(InputError, match="'last' only with routing 'sequence'"):
        TrainConfig(stage=4, data=("x",), out_dir="o", question_pool="last")
    with pytest.raises(ModelError, match="question_pool 'first' is not"):
        trained_routing({"stages": [{"stage": 4, "routing": "sequence", "question_pool": "first"}]})


def test_routers_can_read_a_question_without_the_region_that_follows_it(tmp_path):
    """``route_trailing_region: false``: a region after the question (the chat appends the picked one)
    is left out of what the routers read — in training (each such example's routing twin) and in the
    adapter's recipe, which the Asker follows; a region inside the sentence stays."""
    from medplib_runtime.conversation import question_for_routing
    from medplib_runtime.errors import ModelError
    from medplib_runtime.glue.recipe import trained_routing
    from medplib_runtime.imaging.transforms import mask_to_model
    from medplib_runtime.schemas import Turn
    from medplib_runtime.training.examples import TrainSample, encode
    from medplib_runtime.training.forward import LossWeights, TrainModule

    assert question_for_routing("Segment the lesion.", True) == ("Segment the lesion.", False)  # the chat's form
    assert question_for_routing("Segment the lesion. <region> ", True) == ("Segment the lesion.", False)
    assert question_for_routing("What is in <region>?", True) == ("What is in <region>?", True)
    assert question_for_routing("Describe this image.", False) == ("Describe this image.", False)

    model = tiny_model()
    base = samples(1)[0]
    trailing = TrainSample("s0", base.image, (Turn("segment the lesion <region>", "it is here <SEG>"),
                                              Turn("what is in the <region> ?", "a lesion")),
                           region=base.region, masks=base.masks)
    plain = TrainSample("s0", base.image, (Turn("segment the lesion", "it is here <SEG>"),), masks=base.masks)
    kw = dict(system=model.cfg.system_prompt, n_image_tokens=model.n_image_tokens, seg_id=model.token_ids["<SEG>"],
              max_tokens=512)
    assert all(ex.route is None for ex in encode(trailing, model.tokenizer, **kw))  # the default: read as written
    seg, what = encode(trailing, model.tokenizer, route_trailing_region=False, **kw)
    (alone,) = encode(plain, model.tokenizer, **kw)
    assert what.route is None and seg.region and not seg.route.region
    assert torch.equal(seg.route.input_ids, alone.input_ids) and torch.equal(seg.route.labels, alone.labels)
    fn = lambda region, e: mask_to_model(region, e.info, 256)[0, 0]  # noqa: E731
    module = TrainModule(model, LossWeights(0.0, route=1.0, route_span="question", question_pool="last"),
                         region_mask_fn=fn, cache_router_inputs=True)
    emb = FakeEmbedder()(base)
    for a, b in zip(module._router_inputs(seg, emb), module._router_inputs(alone, emb)):
        assert torch.equal(a, b)  # the routers read the question as if no region followed it

    cfg = TrainConfig(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=4, grad_accumulation=2,
                      warmup_steps=1, routing="sequence", route_supervision=1.0, router_lr=5e-2,
                      question_pool="last", route_trailing_region=False)
    report = train(cfg, [trailing] * 2, model=model, embedder=FakeEmbedder(), progress=False)
    meta = read_glue_metadata(report.adapter)
    assert meta["recipe"]["stages"][-1]["route_trailing_region"] is False
    assert tiny_model().routing.route_trailing_region
    assert not tiny_model(glue=report.adapter).routing.route_trailing_region
    with pytest.raises(InputError, match="route_trailing_region false"):
        TrainConfig(stage=4, data=("x",), out_dir="o", route_trailing_region=False)
    with pytest.raises(ModelError, match="route_trailing_region 'no' is not"):
        trained_routing({"stages": [{"stage": 4, "routing": "sequence", "route_trailing_region": "no"}]})
