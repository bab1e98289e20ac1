"""A cut-off run resumes bit for bit, in a moved folder too, with the new token rows trained either way;
a checkpoint of another config is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.errors import InputError
from medplib_runtime.modeling.glue_weights import glue_state, load_glue, read_glue_metadata
from medplib_runtime.training.config import TrainConfig
from medplib_runtime.training.trainer import train


class _Interrupt(Exception):
    pass


# a resumed run must not align its region encoder or its image tokens again
@pytest.mark.parametrize("extra", [{}, {"align_region": 1.0}, {"align_region": 1.0, "align_region_balanced": True},
                                   {"align_image": 1.0}])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, extra):
    cfg = dict(stage=2, data=("synthetic",), steps=4, grad_accumulation=2, warmup_steps=1, lr=1e-2, save_every=2, **extra)
    named = [dataclasses.replace(s, modality="CT", body_region=("lesion", "brain")[i % 2])  # words the tiny tokenizer
             for i, s in enumerate(samples(region_names=("lesion", "tumour")))]  # tells apart (align_image)
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


def test_a_checkpoint_from_before_an_option_resumes_while_it_is_off_and_not_once_it_is_on():
    """Options added later (fit_input_stats, align_region, align_region_balanced) are left out of a run's
    fingerprint while off, so a checkpoint written before they existed resumes; switched on, it is another run."""
    import json

    from medplib_runtime.training.trainer import OFF_WHEN_FALSY, _fingerprint, _same_run

    cfg = TrainConfig(stage=2, data=("x",), out_dir="o", align_region=1.0)
    older = {k: v for k, v in json.loads(_fingerprint(cfg)).items() if k != "align_region_balanced"}
    assert "align_region_balanced" in OFF_WHEN_FALSY and _same_run(json.dumps(older), cfg)
    assert not _same_run(json.dumps(older), dataclasses.replace(cfg, align_region_balanced=True))
