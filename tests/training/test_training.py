"""The four stages train exactly their parameters, losses fall, the adapter file holds only the glue and
reloads, and the faster step (LM head at supervised positions, new rows as a delta) is the same maths."""

from __future__ import annotations

import json

import pytest
import torch

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.errors import InputError
from medplib_runtime.modeling.glue_weights import first_new_row, glue_state, load_glue, read_glue_metadata
from medplib_runtime.training.config import TrainConfig
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
    assert "moe.0.experts.0.down_proj.lora_B" in keys and not any("base" in k for k in keys)


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
