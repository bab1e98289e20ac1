"""Region alignment: the region encoder's projection fitted in closed form onto the name embeddings,
before a stage's first step, touching nothing else; the names read from our builder's records."""

from __future__ import annotations

import pytest
import torch

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.data.mecovqa import Record
from medplib_runtime.errors import InputError
from medplib_runtime.imaging.transforms import mask_to_model
from medplib_runtime.training.config import TrainConfig
from medplib_runtime.training.data_source import region_name
from medplib_runtime.training.region_alignment import name_embedding
from medplib_runtime.training.trainer import train


def _cfg(tmp_path, **kw):
    base = dict(stage=2, data=("synthetic",), out_dir=str(tmp_path), steps=1, grad_accumulation=2, warmup_steps=1,
                lr=1e-2, align_region=1e-6, frozen=("region_encoder",))
    return TrainConfig(**{**base, **kw})


def _region_tokens(model, named):
    out = []
    for sample in named:
        emb = FakeEmbedder()(sample)
        out.append(model.region_token(emb.image_embedding, mask_to_model(sample.region, emb.info, 256)[0, 0])[0, 0])
    return torch.stack(out)


def test_aligned_tokens_are_the_name_embeddings_and_only_the_projection_moves(tmp_path):
    named = samples(4, region_names=("lesion", "tumour"))
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(_cfg(tmp_path), named, model=model, embedder=FakeEmbedder(), progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    region_changed = {k for k in changed if k.startswith("region_encoder.")}
    assert region_changed == {"region_encoder.proj.weight", "region_encoder.proj.bias"}  # not the standardisation
    assert changed - region_changed  # the stage's own step still trained the VL expert
    # 4 regions in 256 features: an almost unpenalised ridge fits each token to its name exactly
    targets = torch.stack([name_embedding(model, s.region_name) for s in named])
    assert torch.allclose(_region_tokens(model, named), targets, atol=1e-3)
    assert not torch.allclose(targets[0], targets[1])  # "lesion" and "tumour" are different rows


def test_a_penalised_fit_still_puts_each_token_nearest_its_own_name(tmp_path):
    named = samples(6, region_names=("lesion", "tumour", "brain"))
    model = tiny_model()
    train(_cfg(tmp_path, align_region=10.0), named, model=model, embedder=FakeEmbedder(), progress=False)
    names = ("brain", "lesion", "tumour")
    table = torch.nn.functional.normalize(torch.stack([name_embedding(model, n) for n in names]), dim=1)
    nearest = (torch.nn.functional.normalize(_region_tokens(model, named), dim=1) @ table.T).argmax(1)
    assert [names[int(i)] for i in nearest] == [s.region_name for s in named]


def test_without_names_or_on_a_stage_without_the_region_encoder_it_is_refused(tmp_path):
    with pytest.raises(InputError, match="align_region needs region records that name at least 2 structures"):
        train(_cfg(tmp_path), samples(4), model=tiny_model(), embedder=FakeEmbedder(), progress=False)
    with pytest.raises(InputError, match="at least 2 structures"):  # one name cannot be told from another
        train(_cfg(tmp_path / "one"), samples(4, region_names=("lesion",)), model=tiny_model(),
              embedder=FakeEmbedder(), progress=False)
    with pytest.raises(InputError, match="stage 3 does not train"):
        TrainConfig(stage=3, data=("x",), out_dir="o", align_region=1.0)
    for bad in (-1.0, True, "1"):
        with pytest.raises(InputError, match="align_region must be"):
            TrainConfig(stage=2, data=("x",), out_dir="o", align_region=bad)


@pytest.mark.parametrize("facts, expected", [
    ({"name": "cyst"}, "cyst"),  # what / where / size / choice
    ({"asked": "nodule", "truth": "cyst"}, "cyst"),  # "is it the nodule?" on the cyst
    ({"asked": "nodule", "truth": None}, "background"),  # a square on no structure
    ({}, None), (None, None),  # records that do not say (real MeCoVQA)
])
def test_region_names_come_from_the_builders_facts(facts, expected):
    extra = {} if facts is None else {"facts": facts}
    assert region_name(Record("r", "images/x.png", (), extra)) == expected


def test_the_training_embedder_embeds_each_distinct_slice_once():
    """One record per question means one array per record for the same PNG: the pixel encoder (the
    slow part) must run once per distinct slice, not once per record."""
    from medplib_runtime.training.trainer import _Embedder

    calls = []

    class CountingSegmenter:
        def embed(self, image):
            calls.append(image.shape)
            return FakeEmbedder()(samples(1)[0])

    embedder = _Embedder.__new__(_Embedder)
    embedder.segmenter, embedder.cache = CountingSegmenter(), {}
    first, copy, other = samples(1)[0], samples(1)[0], samples(2)[1]
    assert first.image is not copy.image  # the same pixels in another array, as two records of one slice
    assert embedder(first) is embedder(copy)
    embedder(other)
    assert len(calls) == 2


def test_ridge_fit_recovers_a_linear_map_and_never_shrinks_the_intercept():
    from medplib_runtime.training.ridge import ridge_fit

    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(50, 4, generator=g), torch.randn(4, 3, generator=g)
    b = torch.tensor([5.0, -2.0, 0.5])
    weight, bias = ridge_fit(x, x @ w + b, 1e-9)
    assert torch.allclose(weight, w, atol=1e-4) and torch.allclose(bias, b, atol=1e-4)
    weight, bias = ridge_fit(x, x @ w + b, 1e9)  # all penalty: no slope, the intercept is y's mean
    assert float(weight.abs().max()) < 1e-5 and torch.allclose(bias, (x @ w + b).mean(0), atol=1e-4)


def test_a_word_without_tokens_names_the_option_that_asked_for_it():
    from types import SimpleNamespace

    model = SimpleNamespace(tokenizer=lambda text, add_special_tokens: {"input_ids": []})
    with pytest.raises(InputError, match=r"^align_image: the word 'chest' has no tokens"):
        name_embedding(model, "chest", option="align_image")


def test_ridge_weights_count_a_row_as_often_as_its_weight_says():
    from medplib_runtime.training.ridge import ridge_fit

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    counts = torch.tensor([1, 3, 1, 2, 1, 1], dtype=torch.float64)
    repeated = ridge_fit(x.repeat_interleave(counts.long(), 0), y.repeat_interleave(counts.long(), 0), 0.5)
    # the weights are rescaled to mean 1, so the penalty weighs against the same total as the 9 repeated rows
    weighted = ridge_fit(x, y, 0.5 * len(x) / float(counts.sum()), counts)
    assert all(torch.allclose(a, b) for a, b in zip(repeated, weighted))
    assert all(torch.allclose(a, b) for a, b in zip(ridge_fit(x, y, 0.5, counts), ridge_fit(x, y, 0.5, 3 * counts)))
    assert all(torch.allclose(a, b) for a, b in zip(ridge_fit(x, y, 0.5), ridge_fit(x, y, 0.5, torch.ones(6))))


@pytest.mark.parametrize("balanced, rare_share", [(False, 1 / 8), (True, 1 / 2)])
def test_a_balanced_fit_gives_a_rare_name_as_much_pull_as_a_common_one(tmp_path, balanced, rare_share):
    """All penalty (no slope): every token is the fit's intercept, the names' embeddings averaged over the
    regions — 7 "lesion" to 1 "tumour" as they come, or one to one when the names are balanced."""
    named = samples(8, region_names=("lesion",) * 7 + ("tumour",))
    model = tiny_model()
    train(_cfg(tmp_path, align_region=1e12, align_region_balanced=balanced), named, model=model,
          embedder=FakeEmbedder(), progress=False)
    lesion, tumour = name_embedding(model, "lesion"), name_embedding(model, "tumour")
    expected = (1 - rare_share) * lesion + rare_share * tumour
    assert torch.allclose(_region_tokens(model, named), expected.expand(8, -1), atol=1e-4)


def test_balancing_needs_the_fit_it_balances():
    with pytest.raises(InputError, match="align_region_balanced must be true or false, and true only with"):
        TrainConfig(stage=2, data=("x",), out_dir="o", align_region_balanced=True)
    with pytest.raises(InputError, match="align_region_balanced must be"):
        TrainConfig(stage=2, data=("x",), out_dir="o", align_region=1.0, align_region_balanced="yes")
