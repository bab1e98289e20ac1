"""Input standardisation of the vision projector, region encoder and seg projector: fitted once from the stage's
own examples, stored with the glue, left alone by later stages, and absent from older glues."""

from __future__ import annotations

import pytest
import torch

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.errors import InputError, ModelError
from medplib_runtime.modeling.glue_weights import glue_state, load_glue, save_glue
from medplib_runtime.modeling.standardiser import STD_FLOOR, InputStandardiser
from medplib_runtime.training.config import TrainConfig
from medplib_runtime.training.trainer import train

STATS = ("region_encoder.standardise.mean", "region_encoder.standardise.std",
         "seg_projector.standardise.mean", "seg_projector.standardise.std")
VISION_STATS = ("vision_projector.standardise.mean", "vision_projector.standardise.std")


def test_fit_centres_and_scales_each_feature_and_floors_a_flat_one():
    x = torch.randn(200, 4) * torch.tensor([1.0, 5.0, 0.2, 0.0]) + torch.tensor([3.0, -1.0, 0.0, 7.0])
    s = InputStandardiser(4)
    assert not s.fitted and torch.equal(s(x), x)  # the identity until fitted
    s.fit(x)
    z = s(x)
    assert s.fitted
    assert torch.allclose(z[:, :3].mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z[:, :3].std(0), torch.ones(3), atol=1e-4)
    assert float(s.std[3]) == pytest.approx(STD_FLOOR * float(x.std(0).median()), rel=1e-5)  # not 0: no blow-up
    with pytest.raises(ValueError, match="at least 2 samples"):
        InputStandardiser(4).fit(x[:1])


def _cfg(stage, tmp_path, **kw):
    return TrainConfig(stage=stage, data=("synthetic",), out_dir=str(tmp_path / f"s{stage}"), steps=2,
                       grad_accumulation=2, warmup_steps=1, lr=1e-2, **kw)


def test_stage_ii_fits_the_region_encoder_and_stage_iii_the_seg_projector_once(tmp_path):
    model = tiny_model()
    fresh = glue_state(model)
    two = train(_cfg(2, tmp_path, fit_input_stats=4), samples(), model=model, embedder=FakeEmbedder(),
                progress=False)
    after2 = glue_state(model)
    assert model.region_encoder.standardise.fitted and not model.seg_projector.standardise.fitted
    # the fit is the pooled features of the stage's region examples, exactly
    from medplib_runtime.imaging.transforms import mask_to_model

    pooled = []
    for sample in samples():
        emb = FakeEmbedder()(sample)
        pooled.append(model.region_encoder.pooled(emb.image_embedding, mask_to_model(sample.region, emb.info,
                                                                                     256)[0, 0]))
    assert torch.allclose(after2["region_encoder.standardise.mean"], torch.cat(pooled).mean(0), atol=1e-5)
    model3 = tiny_model()
    three = train(_cfg(3, tmp_path, fit_input_stats=4, init_glue=two.adapter), samples(), model=model3,
                  embedder=FakeEmbedder(), progress=False)
    after3 = glue_state(model3)
    assert model3.seg_projector.standardise.fitted
    assert not torch.equal(after3["seg_projector.standardise.mean"], fresh["seg_projector.standardise.mean"])
    for key in STATS[:2]:  # stage III does not train the region encoder: its statistics stay stage II's
        assert torch.equal(after3[key], after2[key])
    model4 = tiny_model()  # a later stage that trains the seg projector again keeps stage III's statistics
    train(_cfg(4, tmp_path, fit_input_stats=4, init_glue=three.adapter, capacity_factor=2.0), samples(),
          model=model4, embedder=FakeEmbedder(), progress=False)
    for key in STATS:
        assert torch.equal(glue_state(model4)[key], after3[key])


def test_stage_i_fits_the_vision_projector_on_the_vision_towers_tokens_and_stage_ii_keeps_it(tmp_path):
    model = tiny_model()
    one = train(_cfg(1, tmp_path, fit_input_stats=100), samples(), model=model, embedder=FakeEmbedder(),
                progress=False)  # 100: every example (each slice as often), so the mean is known
    assert model.vision_projector.standardise.fitted and not model.region_encoder.standardise.fitted
    tokens = torch.cat([model.vision_tower(FakeEmbedder()(s).image_embedding).flatten(0, 1) for s in samples()])
    after1 = glue_state(model)
    assert torch.allclose(after1["vision_projector.standardise.mean"], tokens.mean(0), atol=1e-5)
    model2 = tiny_model()  # stage II trains the projector on: the statistics are stage I's
    train(_cfg(2, tmp_path, fit_input_stats=4, init_glue=one.adapter), samples(), model=model2,
          embedder=FakeEmbedder(), progress=False)
    for key in VISION_STATS:
        assert torch.equal(glue_state(model2)[key], after1[key])


def test_a_projector_an_earlier_stage_trained_unstandardised_is_not_standardised_later(tmp_path):
    """Stage I trained the projector on the raw tokens: standardising its input at stage II would hand its
    weights an input they never saw (the recipes' stage II fits the region encoder's statistics)."""
    one = train(_cfg(1, tmp_path), samples(), model=tiny_model(), embedder=FakeEmbedder(), progress=False)
    model2 = tiny_model()
    train(_cfg(2, tmp_path, fit_input_stats=4, init_glue=one.adapter), samples(), model=model2,
          embedder=FakeEmbedder(), progress=False)
    assert model2.region_encoder.standardise.fitted and not model2.vision_projector.standardise.fitted


def test_without_fit_input_stats_nothing_is_fitted(tmp_path):
    model = tiny_model()
    train(_cfg(3, tmp_path), samples(), model=model, embedder=FakeEmbedder(), progress=False)
    assert not model.seg_projector.standardise.fitted and not model.region_encoder.standardise.fitted


def test_a_glue_from_before_the_standardisation_loads_as_the_identity(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    trained = tiny_model()
    trained.seg_projector.standardise.fit(torch.randn(8, trained.cfg.llm_hidden))
    path = save_glue(trained, tmp_path / "glue.safetensors", trained_parts=("seg_projector",), recipe={})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    old = {k: v for k, v in load_file(str(path)).items() if k not in STATS + VISION_STATS}
    save_file(old, str(tmp_path / "old.safetensors"), metadata=meta)
    target = tiny_model()
    target.region_encoder.standardise.fit(torch.randn(8, target.cfg.prompt_embed_dim))  # stale statistics
    target.vision_projector.standardise.fit(torch.randn(8, target.vision_projector.fc1.in_features))
    load_glue(target, tmp_path / "old.safetensors")
    assert not target.region_encoder.standardise.fitted and not target.seg_projector.standardise.fitted
    assert not target.vision_projector.standardise.fitted
    assert torch.equal(target.seg_projector.fc1.weight, trained.seg_projector.fc1.weight)
    load_glue(target, path)  # and the new file brings them
    assert torch.equal(target.seg_projector.standardise.std, trained.seg_projector.standardise.std)


@pytest.mark.parametrize("value", [1, -2, True, 2.5])
def test_fit_input_stats_must_be_a_number_of_examples(value):
    with pytest.raises(InputError, match="fit_input_stats"):
        TrainConfig(stage=2, data=("x",), out_dir="o", fit_input_stats=value)


@pytest.mark.parametrize("key, value, message", [
    ("seg_projector.standardise.std", 0.0, "zero, negative or non-finite std"),
    ("region_encoder.standardise.std", float("nan"), "zero, negative or non-finite std"),
    ("seg_projector.standardise.mean", float("inf"), "non-finite mean"),
])
def test_a_hand_broken_standardisation_is_refused_and_the_model_is_untouched(tmp_path, key, value, message):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_glue(tiny_model(), tmp_path / "glue.safetensors", trained_parts=("seg_projector",), recipe={})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state[key] = state[key].clone()
    state[key][3] = value  # one feature: a division by it would make every token NaN
    save_file(state, str(path), metadata=meta)
    target = tiny_model()
    before = {k: v.clone() for k, v in glue_state(target).items()}
    with pytest.raises(ModelError, match=message) as err:
        load_glue(target, path)
    assert key in str(err.value) and "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in glue_state(target).items())
    from medplib_runtime.glue.files import trained_parts  # what `medplib info --glue` / `serve --glue` read: no torch

    with pytest.raises(ModelError, match=message):
        trained_parts(path)
