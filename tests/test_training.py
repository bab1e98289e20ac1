"""The four stages train exactly their parameters, losses fall, runs resume bit for bit, and the
adapter file holds only the glue."""

from __future__ import annotations

import json
import re

import pytest
import torch

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.errors import InputError
from medplib_runtime.modeling.glue_weights import first_new_row, glue_state, load_glue, read_glue_metadata
from medplib_runtime.training.config import TrainConfig, load_config
from medplib_runtime.training.trainer import train

EXPECTED = {  # parameter-name prefixes each stage may change
    1: ("vision_projector.",),
    2: ("vision_projector.", "region_encoder.", "llm.model.layers.0.mlp.experts.1.", "llm.model.layers.1.mlp.experts.1.",
        "llm.model.embed_tokens.weight"),
    3: ("seg_projector.", "ground_head.", "llm.model.layers.0.mlp.experts.0.", "llm.model.layers.1.mlp.experts.0.",
        "llm.model.embed_tokens.weight"),
    4: ("seg_projector.", "ground_head.", "region_encoder.", "llm.model.layers.0.mlp.router.", "llm.model.layers.1.mlp.router.",
        "llm.model.embed_tokens.weight"),
}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_each_stage_changes_exactly_its_parameters(stage, tmp_path):
    model = tiny_model()
    before = _snapshot(model)
    cfg = TrainConfig(stage=stage, data=("synthetic",), out_dir=str(tmp_path), steps=3, grad_accumulation=2,
                      warmup_steps=1, lr=1e-2)
    report = train(cfg, samples(), model=model, embedder=FakeEmbedder(), progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = EXPECTED[stage]
    assert changed and all(k.startswith(allowed) for k in changed), sorted(changed)[:5]
    for prefix in allowed:  # every part the stage names did move
        assert any(k.startswith(prefix) for k in changed), prefix
    emb = "llm.model.embed_tokens.weight"
    start = first_new_row(model)
    assert torch.equal(before[emb][:start], after[emb][:start]), "old token rows stay bit-identical"
    if emb in changed:
        assert not torch.equal(before[emb][start:], after[emb][start:])
    assert len(report.losses) == 3 and all(l == l for l in report.losses)
    meta = read_glue_metadata(report.adapter)
    assert meta["recipe"]["stages"][-1]["stage"] == stage and set(meta["trained_parts"]) == set(cfg.trains)
    # each sample's second answer follows a first turn: the glue then reads a chat's earlier turns
    assert meta["recipe"]["stages"][-1]["history_examples"] == 4 and meta["reads_history"]
    if stage == 4:
        assert len(report.routing) == 2 and abs(sum(report.routing) - 1) < 1e-6
    else:
        forced = cfg.spec.forced_expert
        assert report.routing[forced] == 1.0


def test_loss_falls_and_adapter_reloads(tmp_path):
    model = tiny_model()
    cfg = TrainConfig(stage=3, data=("synthetic",), out_dir=str(tmp_path), steps=12, grad_accumulation=2,
                      warmup_steps=1, lr=2e-2)
    from dataclasses import replace

    one = [replace(samples(1)[0], turns=samples(1)[0].turns[1:])]  # the same <SEG> turn every step
    report = train(cfg, one, model=model, embedder=FakeEmbedder(), progress=False)
    assert report.losses[-1] < report.losses[0] * 0.9 and report.losses[-1] == min(report.losses), report.losses
    fresh = tiny_model()
    load_glue(fresh, report.adapter)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    log = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
    assert [r["step"] for r in log] == list(range(1, 13)) and {"ce", "bce", "dice"} <= set(log[0])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(glue_state(model)), "the adapter holds the glue and nothing of the base weights"
    assert f"moe.0.experts.0.down_proj.lora_B" in keys and not any("base" in k for k in keys)


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("extra", [{}, {"align_region": 1.0}])  # a resumed run must not align its region encoder again
def test_interrupted_run_resumes_bit_for_bit(tmp_path, extra):
    cfg = dict(stage=2, data=("synthetic",), steps=4, grad_accumulation=2, warmup_steps=1, lr=1e-2, save_every=2, **extra)
    named = samples(region_names=("lesion", "tumour"))
    straight = train(TrainConfig(out_dir=str(tmp_path / "a"), **cfg), named, model=tiny_model(),
                     embedder=FakeEmbedder(), progress=False)

    class Dying(FakeEmbedder):
        def __call__(self, sample):
            if (tmp_path / "b" / "checkpoint" / "state.pt").is_file():  # step 3's first example, after step 2's save
                raise _Interrupt()
            return super().__call__(sample)

    with pytest.raises(_Interrupt):
        train(TrainConfig(out_dir=str(tmp_path / "b"), **cfg), named, model=tiny_model(), embedder=Dying(),
              progress=False)
    resumed = train(TrainConfig(out_dir=str(tmp_path / "b"), **cfg), named, model=tiny_model(),
                    embedder=FakeEmbedder(), progress=False)
    assert resumed.resumed_from == 2
    a, b = tiny_model(), tiny_model()
    load_glue(a, straight.adapter)
    load_glue(b, resumed.adapter)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert straight.losses[2:] == resumed.losses


def test_a_moved_run_resumes_in_its_new_folder_and_another_config_is_refused(tmp_path):
    """The run folder is not part of the run: a checkpoint moved elsewhere resumes there, and the
    adapter's recipe names the folder it now lives in; a changed lr is still refused in one line."""
    import shutil

    cfg = dict(stage=2, data=("synthetic",), grad_accumulation=2, warmup_steps=1, lr=1e-2, save_every=2)
    first = train(TrainConfig(out_dir=str(tmp_path / "a"), steps=2, **cfg), samples(), model=tiny_model(),
                  embedder=FakeEmbedder(), progress=False)
    shutil.move(tmp_path / "a", tmp_path / "moved")
    resumed = train(TrainConfig(out_dir=str(tmp_path / "moved"), steps=4, **cfg), samples(), model=tiny_model(),
                    embedder=FakeEmbedder(), progress=False)
    assert first.resumed_from == 0 and resumed.resumed_from == 2 and len(resumed.losses) == 2
    assert read_glue_metadata(resumed.adapter)["recipe"]["stages"][-1]["out_dir"] == str(tmp_path / "moved")
    with pytest.raises(InputError, match="holds a run with another config"):
        train(TrainConfig(out_dir=str(tmp_path / "moved"), steps=6, **{**cfg, "lr": 2e-2}), samples(),
              model=tiny_model(), embedder=FakeEmbedder(), progress=False)


def test_bad_configs_and_records(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"stage": 5, "data": ["x.json"], "out_dir": "o"}')
    with pytest.raises(InputError, match="stage must be"):
        load_config(path)
    path.write_text('{"stage": 1, "data": "x.json", "out_dir": "o", "lr_typo": 1}')
    with pytest.raises(InputError, match=r"unknown keys \['lr_typo'\]"):
        load_config(path)
    path.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        load_config(path)
    from medplib_runtime.schemas import Turn
    from medplib_runtime.training.examples import TrainSample

    bad = TrainSample("rec-7", samples(1)[0].image, (Turn("segment the lesion", "here <SEG>"),))
    cfg = TrainConfig(stage=3, data=("synthetic",), out_dir=str(tmp_path / "o"), steps=1)
    with pytest.raises(InputError, match="record rec-7: answer 0 has 1 <SEG> but only 0 masks"):
        train(cfg, [bad], model=tiny_model(), embedder=FakeEmbedder(), progress=False)


def test_closed_repeats_sees_each_closed_answer_more_often(tmp_path):
    """closed_repeats 3: each closed-answer example three times per pass, open ones once; a bad value is refused."""
    from dataclasses import replace

    from medplib_runtime.schemas import Turn

    base = samples(4)
    closed = [replace(s, turns=(Turn("is <region> the lesion?", "yes"),), masks=(), answer_type="closed")
              for s in base[:2]]
    data = closed + [replace(s, turns=s.turns[:1], masks=()) for s in base[2:]]  # 2 closed, 2 open examples
    for repeats, expected in ((1, 4), (3, 2 * 3 + 2)):
        cfg = TrainConfig(stage=2, data=("synthetic",), out_dir=str(tmp_path / f"r{repeats}"), steps=1,
                          grad_accumulation=1, warmup_steps=1, closed_repeats=repeats)
        report = train(cfg, data, model=tiny_model(), embedder=FakeEmbedder(), progress=False)
        assert report.examples == expected
    for bad in (0, 1.5, True):
        with pytest.raises(InputError, match="closed_repeats must be"):
            TrainConfig(stage=2, data=("x.json",), out_dir="o", closed_repeats=bad)


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
    fresh = tiny_model()
    load_glue(fresh, report.adapter)
    assert _moe_settings(fresh) == expected_loaded
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


def test_frozen_parts_stay_as_they_are(tmp_path):
    model = tiny_model()
    before = _snapshot(model)
    cfg = TrainConfig(stage=4, data=("synthetic",), out_dir=str(tmp_path), steps=3, grad_accumulation=2,
                      warmup_steps=1, lr=1e-2, frozen=("seg_projector", "ground_head"), route_supervision=1.0,
                      route_span="turn")
    assert "seg_projector" not in cfg.trains and "ground_head" not in cfg.trains and "router" in cfg.trains
    train(cfg, samples(), model=model, embedder=FakeEmbedder(), progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith(("seg_projector.", "ground_head.")) for k in changed)
    assert any(".router." in k for k in changed)


def test_bad_route_span_frozen_and_device_are_refused():
    with pytest.raises(InputError, match="route_span"):
        TrainConfig(stage=4, data=("x",), out_dir="o", route_span="all")
    with pytest.raises(InputError, match="frozen.*expert_vl"):
        TrainConfig(stage=4, data=("x",), out_dir="o", frozen=("expert_vl",))
    with pytest.raises(InputError, match="device"):
        TrainConfig(stage=1, data=("x",), out_dir="o", device="tpu")


def test_head_only_run_trains_the_head_from_states_computed_once(tmp_path):
    """Stage III with the LLM side frozen and no text loss: only the seg projector and ground head move,
    the LLM runs once per distinct example (two epochs here), and the cached path's loss equals the
    full path's."""
    from medplib_runtime.training.forward import LossWeights, TrainModule
    from medplib_runtime.training.trainer import _examples, head_only

    model = tiny_model()
    before = _snapshot(model)
    cfg = TrainConfig(stage=3, data=("synthetic",), out_dir=str(tmp_path), steps=8, grad_accumulation=2,
                      warmup_steps=1, lr=1e-2, ce_weight=0.0, frozen=("expert_ground", "new_token_rows"))
    assert set(cfg.trains) == {"seg_projector", "ground_head"}
    assert head_only(cfg, LossWeights(0.0, 1.0, 5.0)) and not head_only(cfg, LossWeights(1.0, 1.0, 5.0))
    llm_runs = []
    hook = model.llm.model.register_forward_hook(lambda *args: llm_runs.append(1))
    report = train(cfg, samples(), model=model, embedder=FakeEmbedder(), progress=False)
    hook.remove()
    changed = {k for k in before if not torch.equal(before[k], model.state_dict()[k])}
    assert changed and all(k.startswith(("seg_projector.", "ground_head.")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("ground_head.") for k in changed) and any(k.startswith("seg_projector.") for k in changed)
    n_examples = sum(1 for ex in _examples(model, samples(), cfg) if ex.masks)  # only <SEG> answers are kept
    assert report.examples == n_examples == 4 and len(llm_runs) == n_examples  # 16 visits, one LLM run each
    assert report.losses[-1] < report.losses[0]

    model.eval()  # no LoRA dropout: the two paths see the same states
    ex = next(e for e in _examples(model, samples(), cfg) if e.masks)
    emb = FakeEmbedder()(ex.sample)
    weights = LossWeights(0.0, 1.0, 5.0)
    fn = lambda region, e: torch.zeros(256, 256, dtype=torch.bool)  # noqa: E731 (the G turn has no region)
    full, _ = TrainModule(model, weights, region_mask_fn=fn)(ex, emb)
    cached = TrainModule(model, weights, region_mask_fn=fn, cache_seg_states=True)
    assert torch.allclose(cached(ex, emb)[0], full) and torch.allclose(cached(ex, emb)[0], full)
    with pytest.raises(InputError, match="every loss weight is 0"):  # refused with the config, before any model
        TrainConfig(stage=3, data=("x",), out_dir="o", ce_weight=0.0, bce_weight=0.0, dice_weight=0.0)
    # stage III with ce 0 but its expert still trained: not head-only, the same filter (was a traceback)
    report = train(TrainConfig(stage=3, data=("x",), out_dir=str(tmp_path / "ce0"), steps=2, grad_accumulation=2,
                               warmup_steps=1, ce_weight=0.0), samples(), model=tiny_model(), embedder=FakeEmbedder(),
                   progress=False)
    assert report.examples == 4 and all(l == l for l in report.losses)
    with pytest.raises(InputError, match="no answer in the data holds a <SEG>"):
        train(cfg, [samples()[0].__class__("q", samples()[0].image, samples()[0].turns[:1],
                                           region=samples()[0].region)],
              model=tiny_model(), embedder=FakeEmbedder(), progress=False)


def test_every_committed_training_config_loads_and_writes_its_own_run_folder():
    """configs/training (the shipped recipe and the tried ones docs/training.md tells how to rerun): each one
    loads as a TrainConfig, so a renamed or dropped field cannot leave a recipe that no longer runs."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs" / "training"
    paths = sorted(root.rglob("*.json"))
    assert len(paths) >= 8 and any("tried" in p.parts for p in paths)
    out_dirs = [load_config(path).out_dir for path in paths]
    assert len(set(out_dirs)) == len(paths), "two recipes would write (and resume) the same run folder"


@pytest.mark.parametrize("recipe", ["default_glue", "hour_glue"])
def test_a_recipe_folder_chains_its_stages_in_order_from_stage_one(recipe):
    """The recipe scripts run each folder's configs in their order: every run but stage I starts from an adapter
    that an earlier config of the same folder writes, so a renamed run folder cannot start a stage from nothing
    (or from another recipe's run)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "configs" / "training" / recipe
    script = {"default_glue": "train_default_glue.sh", "hour_glue": "train_hour_glue.sh"}[recipe]
    text = (folder.parent.parent.parent / "scripts" / script).read_text()
    order = next(line for line in text.splitlines() if line.startswith("for step in")).split(" in ")[1]
    steps = order.split(";")[0].split()
    configs = [load_config(folder / f"stage{step}.json") for step in steps]
    assert sorted(f"stage{s}.json" for s in steps) == sorted(p.name for p in folder.glob("*.json"))
    assert configs[0].stage == 1 and configs[0].init_glue is None
    written = [configs[0].out_dir]
    for cfg in configs[1:]:
        assert cfg.init_glue == f"{written[-1]}/adapter.safetensors", cfg.out_dir
        written.append(cfg.out_dir)
    assert configs[-1].stage == 4
    # every data set a stage reads is one the script builds (scripts/build_glue_data.sh), and that script knows it
    built = next(line for line in text.splitlines() if "build_glue_data.sh" in line).split("build_glue_data.sh")[1].split()
    known = re.findall(r"^\s+([\w-]+)\) flags=", (folder.parent.parent.parent / "scripts" / "build_glue_data.sh").read_text(), re.M)
    read = {Path(d).parent.name for cfg in configs for d in cfg.data}
    assert read <= set(built) <= set(known), (sorted(read), built, known)


@pytest.mark.parametrize("stage", [2, 3])
def test_new_token_rows_as_a_delta_train_as_the_rows_themselves(stage, tmp_path):
    """The added tokens' rows trained as a small delta (new_rows.py; one process, DDP) give the losses
    and rows of training them through the whole tied embedding (FSDP's way), and leave no hook behind."""
    def run(delta: bool):
        model = tiny_model()
        hooks = len(model.llm.get_input_embeddings()._forward_hooks), len(model.llm.lm_head._forward_hooks)
        cfg = TrainConfig(stage=stage, data=("synthetic",), out_dir=str(tmp_path / str(delta)), steps=3,
                          grad_accumulation=2, warmup_steps=1, lr=1e-2, save_every=2)
        report = train(cfg, samples(), model=model, embedder=FakeEmbedder(), progress=False, rows_as_delta=delta)
        assert not hasattr(model, "new_rows_delta")
        assert (len(model.llm.get_input_embeddings()._forward_hooks), len(model.llm.lm_head._forward_hooks)) == hooks
        return report, glue_state(model)["new_token_rows"], model

    whole, rows_whole, _ = run(False)
    delta, rows_delta, model = run(True)
    assert delta.losses == pytest.approx(whole.losses, rel=1e-5)
    assert torch.allclose(rows_delta, rows_whole, atol=1e-5) and not torch.equal(rows_delta, glue_state(tiny_model())["new_token_rows"])
    assert delta.trainable_parameters < whole.trainable_parameters  # n_new × D, not the vocabulary × D
    saved = tiny_model()
    load_glue(saved, delta.adapter)
    assert torch.equal(glue_state(saved)["new_token_rows"], rows_delta)  # the file holds the folded rows


def test_text_loss_runs_the_lm_head_only_where_a_token_is_supervised():
    from medplib_runtime.training.examples import IGNORE
    from medplib_runtime.training.losses import text_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=False)
    hidden = torch.randn(1, 5, 6)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 7, 2]])
    logits = head(hidden)[0]
    # position t predicts label t+1: positions 1, 2, 3 predict 3, 7, 2
    by_hand = -(logits[1].log_softmax(-1)[3] + logits[2].log_softmax(-1)[7] + logits[3].log_softmax(-1)[2]) / 3
    assert text_loss(hidden, labels, head).item() == pytest.approx(by_hand.item(), rel=1e-6)
    calls = []
    head.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    text_loss(hidden, labels, head)
    assert calls == [3]


@pytest.mark.parametrize("first, then", [(True, False), (False, True)])
def test_a_checkpoint_resumes_with_the_rows_trained_the_other_way(first, then, tmp_path):
    """A run checkpointed with the rows as a delta (one process, DDP) resumes with them trained through the
    embedding (FSDP2) and the other way round, and ends where an uninterrupted run ends: the moments are
    carried over (new_rows.moments_for), not restarted."""
    cfg = dict(stage=2, data=("synthetic",), grad_accumulation=2, warmup_steps=1, lr=1e-2, save_every=2)
    straight = train(TrainConfig(out_dir=str(tmp_path / "a"), steps=4, **cfg), samples(), model=tiny_model(),
                     embedder=FakeEmbedder(), progress=False, rows_as_delta=then)
    train(TrainConfig(out_dir=str(tmp_path / "b"), steps=2, **cfg), samples(), model=tiny_model(),
          embedder=FakeEmbedder(), progress=False, rows_as_delta=first)
    resumed = train(TrainConfig(out_dir=str(tmp_path / "b"), steps=4, **cfg), samples(), model=tiny_model(),
                    embedder=FakeEmbedder(), progress=False, rows_as_delta=then)
    assert resumed.resumed_from == 2
    a, b = tiny_model(), tiny_model()
    load_glue(a, straight.adapter)
    load_glue(b, resumed.adapter)
    sa, sb = glue_state(a), glue_state(b)
    for key in sa:
        assert torch.allclose(sa[key], sb[key], atol=1e-5, rtol=0), key
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-5)
