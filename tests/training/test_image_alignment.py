"""Image alignment: the vision projector's output layer moved in closed form so each slice's image tokens carry its
modality and body-region words, before a stage's first step, touching nothing else; the words from the records."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.data.mecovqa import Record
from medplib_runtime.errors import InputError
from medplib_runtime.training.config import TrainConfig
from medplib_runtime.training.data_source import body_region
from medplib_runtime.training.image_alignment import align_vision_projector, slice_words
from medplib_runtime.training.region_alignment import name_embedding
from medplib_runtime.training.trainer import train

# the tiny tokenizer knows few words ("CT", "MRI", "chest" are all its unknown token): body regions it can tell apart
KINDS = (("CT", "lesion"), ("MR", "brain"), ("CT", "tumour"))


def _slices(n=6, kinds=KINDS):
    return [dataclasses.replace(s, modality=kinds[i % len(kinds)][0], body_region=kinds[i % len(kinds)][1])
            for i, s in enumerate(samples(n))]


class KindEmbedder(FakeEmbedder):
    """FakeEmbedder's noise plus a per-kind constant: a slice-level signal, as the real encoder's features carry
    the modality (docs/training.md); pure noise per token would give a linear fit nothing to read."""

    def __call__(self, sample):
        emb = super().__call__(sample)
        g = torch.Generator().manual_seed(KINDS.index((sample.modality, sample.body_region)))
        return dataclasses.replace(emb, image_embedding=emb.image_embedding + torch.randn(1, 256, 1, 1, generator=g))


def _cfg(tmp_path, **kw):
    base = dict(stage=2, data=("synthetic",), out_dir=str(tmp_path), steps=1, grad_accumulation=2, warmup_steps=1,
                lr=1e-2, align_image=1.0, frozen=("vision_projector",))
    return TrainConfig(**{**base, **kw})


def _mean_tokens(model, slices, embedder=FakeEmbedder()):
    with torch.no_grad():
        return torch.stack([model.image_tokens(pixel_embedding=embedder(s).image_embedding)[0].mean(0)
                            for s in slices])


def test_only_the_output_layer_changes_and_the_common_part_stays(tmp_path):
    slices = _slices()
    model = tiny_model()
    before_tokens = _mean_tokens(model, slices)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(_cfg(tmp_path), slices, model=model, embedder=FakeEmbedder(), progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    vision_changed = {k for k in changed if k.startswith("vision_projector.")}
    assert vision_changed == {"vision_projector.fc2.weight", "vision_projector.fc2.bias"}
    assert changed - vision_changed  # the stage's own step still trained the VL expert
    moved = _mean_tokens(model, slices) - before_tokens
    assert float(moved.norm(dim=1).min()) > 0
    assert float(moved.mean(0).norm()) < 1e-3 * float(moved.norm(dim=1).mean())  # the offsets' mean is 0


def test_each_slices_tokens_move_towards_its_own_words():
    slices = _slices()
    model = tiny_model()
    before = _mean_tokens(model, slices, KindEmbedder())
    module = SimpleNamespace(model=model, vision_features=lambda ex, emb: model.vision_tower(
        emb.image_embedding).flatten(0, 1))  # what TrainModule hands the fit
    report = align_vision_projector(module, [SimpleNamespace(sample=s) for s in slices], KindEmbedder(), scale=1.0)
    moved = _mean_tokens(model, slices, KindEmbedder()) - before
    words = [" ".join(slice_words(s)) for s in slices]
    kinds = sorted(set(words))
    assert report.word_sets == tuple(kinds) and report.slices == 6 and report.nearest_words_accuracy == 1.0
    table = torch.stack([torch.stack([name_embedding(model, w) for w in k.split()]).mean(0) for k in kinds])
    targets = table - table[[kinds.index(w) for w in words]].mean(0)
    nearest = (F.normalize(moved, dim=1) @ F.normalize(targets, dim=1).T).argmax(1)
    assert [kinds[int(i)] for i in nearest] == words


def test_the_scale_sets_how_far_the_tokens_move(tmp_path):
    slices = _slices()
    moves = []
    for scale in (0.5, 2.0):
        model = tiny_model()
        before = _mean_tokens(model, slices)
        train(_cfg(tmp_path / str(scale), align_image=scale), slices, model=model, embedder=FakeEmbedder(),
              progress=False)
        moves.append(float((_mean_tokens(model, slices) - before).norm(dim=1).mean()))
    assert moves[1] == pytest.approx(4 * moves[0], rel=1e-3)  # linear in the scale


def test_one_kind_of_slice_or_a_stage_without_the_projector_is_refused(tmp_path):
    with pytest.raises(InputError, match="align_image needs slices of at least 2 kinds"):
        train(_cfg(tmp_path), _slices(kinds=(("CT", "chest"),)), model=tiny_model(), embedder=FakeEmbedder(),
              progress=False)
    with pytest.raises(InputError, match="at least 2 kinds"):  # records that say neither (modality "other")
        train(_cfg(tmp_path / "none"), samples(4), model=tiny_model(), embedder=FakeEmbedder(), progress=False)
    with pytest.raises(InputError, match="stage 3 does not train"):
        TrainConfig(stage=3, data=("x",), out_dir="o", align_image=1.0)
    for bad in (-1.0, True, "1"):
        with pytest.raises(InputError, match="align_image must be"):
            TrainConfig(stage=1, data=("x",), out_dir="o", align_image=bad)


def test_the_words_are_the_answers_modality_word_and_the_records_body_region():
    ct, mr, other = _slices(3, kinds=(("CT", "chest"), ("MR", None), ("other", None)))
    assert slice_words(ct) == ("CT", "chest")
    assert slice_words(mr) == ("MRI",)  # as the builder's answers say it
    assert slice_words(other) == ()
    assert body_region(Record("r", "images/x.png", (), {"body_region": "brain"})) == "brain"
    assert body_region(Record("r", "images/x.png", (), {})) is None  # real MeCoVQA does not say
