"""Training configs: bad ones refused with one line, the committed recipes load, chain their stages and write
their own run folders, and options that reshape the data (closed_repeats) do what they say."""

from __future__ import annotations

import re

import pytest

from _tiny_training import FakeEmbedder, samples, tiny_model
from medplib_runtime.errors import InputError
from medplib_runtime.training.config import TrainConfig, load_config
from medplib_runtime.training.trainer import train


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


def test_bad_route_span_frozen_and_device_are_refused():
    with pytest.raises(InputError, match="route_span"):
        TrainConfig(stage=4, data=("x",), out_dir="o", route_span="all")
    with pytest.raises(InputError, match="frozen.*expert_vl"):
        TrainConfig(stage=4, data=("x",), out_dir="o", frozen=("expert_vl",))
    with pytest.raises(InputError, match="device"):
        TrainConfig(stage=1, data=("x",), out_dir="o", device="tpu")


def test_every_committed_training_config_loads_and_writes_its_own_run_folder():
    """configs/training (the shipped recipes) and research/tried_configs (the tried ones docs/training.md tells
    how to rerun): each one loads as a TrainConfig, so a renamed or dropped field cannot leave a recipe that no
    longer runs."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    paths = sorted([*(root / "configs" / "training").rglob("*.json"),
                    *(root / "research" / "tried_configs").rglob("*.json")])
    assert len(paths) >= 8 and any("tried_configs" in p.parts for p in paths)
    out_dirs = [load_config(path).out_dir for path in paths]
    assert len(set(out_dirs)) == len(paths), "two recipes would write (and resume) the same run folder"


@pytest.mark.parametrize("recipe", ["default_glue", "hour_glue"])
def test_a_recipe_folder_chains_its_stages_in_order_from_stage_one(recipe):
    """The recipe scripts run each folder's configs in their order: every run but stage I starts from an adapter
    that an earlier config of the same folder writes, so a renamed run folder cannot start a stage from nothing
    (or from another recipe's run)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "configs" / "training" / recipe
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
