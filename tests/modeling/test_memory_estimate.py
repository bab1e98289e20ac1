"""medplib-7b's memory estimate (modeling/memory_estimate.py): exact parameter counts on the tiny checkpoint,
the real model's sizes from a synthetic config.json, and the one-line refusal when it cannot fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medplib_runtime.errors import InputError
from medplib_runtime.modeling import memory_estimate as me

TINY = Path(__file__).parent / "fixtures" / "medplib7b_tiny" / "checkpoint"
# MedPLIB-7b-2e's sizes: LLaVA-1.5's LLaMA-7B, 32000 + MedPLIB's 267 added tokens, 2 experts on every layer
REAL_7B = {"model_type": "medplib_moe_llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32267, "mm_hidden_size": 1024,
           "out_dim": 256, "torch_dtype": "bfloat16", "mm_vision_tower": "clip-vit-large-patch14-336",
           "moe": {"moe_enable": True, "num_experts": [2] * 32, "top_k_experts": 1}}


@pytest.fixture
def real_7b(tmp_path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(REAL_7B))
    return tmp_path


def _tiny_tensors():
    import torch

    out = {}
    for f in sorted(TINY.glob("pytorch_model-*.bin")):
        out.update(torch.load(f, map_location="cpu", weights_only=True))
    return out


def test_tiny_checkpoint_count_is_exact():
    tensors = _tiny_tensors()
    count = me.count_parameters(TINY)
    assert count.source == "index" and count.total == sum(t.numel() for t in tensors.values())


def test_config_formulas_match_the_tiny_checkpoint_part_by_part():
    tensors = _tiny_tensors()
    config = me.read_config(TINY)

    def n(*prefixes, skip="inv_freq"):
        return sum(t.numel() for k, t in tensors.items() if k.startswith(prefixes) and skip not in k)

    assert sum(me.llm_params(config)) == n("model.layers", "model.embed_tokens", "model.norm", "lm_head")
    assert me.clip_params(me.clip_config(TINY, config)) == n("model.vision_tower", skip="position_ids")
    assert me.glue_params(config) == n("model.mm_projector", "model.region_fea_adapter", "model.text_hidden_fcs")
    linear = sum(t.numel() for k, t in tensors.items() if k.startswith("model.layers") and t.ndim == 2
                 and "gate.wg" not in k)
    assert me.llm_params(config)[0] == linear


def test_sam_formula_matches_our_modules():
    from medplib_runtime.modeling.litemedsam import build_sam_decoder
    from medplib_runtime.modeling.sam_med2d import SamMed2DConfig, SamMed2DImageEncoder

    def n(m):
        return sum(p.numel() for p in m.parameters())

    cfg = SamMed2DConfig(image_size=64, embed_dim=32, depth=2, num_heads=2, out_chans=64, window_size=3,
                         global_attn_indexes=(1,))
    prompt, decoder = build_sam_decoder(embed_dim=64, grid=4, image_size=64, mlp_dim=128, heads=2)
    assert me.sam_params(cfg, decoder_mlp=128) == n(SamMed2DImageEncoder(cfg)) + n(prompt) + n(decoder)
    # ViT-B with adapters, counted once from SamMed2DImageEncoder(SamMed2DConfig()) (267,177,216) + SAM's
    # prompt encoder (6,220) and decoder (4,058,340) at 256 channels
    assert me.sam_params() == 267_177_216 + 6_220 + 4_058_340


def test_real_7b_estimate(real_7b):
    count = me.count_parameters(real_7b)
    assert count.source == "config"
    assert 11.6e9 < count.total < 11.8e9  # two full expert MLPs per layer: 10.8 B in the decoder layers' Linears
    gb = {mode: me.estimate(real_7b, dtype="bf16" if mode in me.LOAD_IN else mode,
                            load_in=mode if mode in me.LOAD_IN else None).total_bytes / me.GB
          for mode in ("fp32", "bf16", "8bit", "4bit")}
    assert 54 < gb["fp32"] < 55.5 and 27 < gb["bf16"] < 28.5 and 15 < gb["8bit"] < 16.5 and 10 < gb["4bit"] < 11.5
    # one token reads the attention and one expert of every layer and the LM head: ≈ 26.4 GB in fp32
    assert 26 < me.bytes_per_token(real_7b, "fp32") / 1e9 < 27
    assert me.cpu_tokens_per_s(real_7b, "fp32") < 0.5


def test_refusal_is_one_line_with_the_smaller_option(real_7b, monkeypatch):
    monkeypatch.setenv(me.FAKE_FREE_ENV, str(int(24e9)))
    with pytest.raises(InputError) as err:
        me.check_fits(real_7b, preset="medplib-7b", device="cuda:0", dtype="bf16", load_in=None)
    text = str(err.value)
    assert "\n" not in text and text.startswith("medplib-7b needs ≈ 27.")
    assert "in bf16 on cuda:0 but 24.0 GB are free: try --load-in 8bit (≈ 15." in text
    assert me.check_fits(real_7b, preset="medplib-7b", device="cuda:0", dtype="bf16", load_in="8bit").mode == "8bit"
    monkeypatch.setenv(me.FAKE_FREE_ENV, str(int(12e9)))
    with pytest.raises(InputError, match=r"try --load-in 4bit \(≈ 10\.\d GB\)"):
        me.check_fits(real_7b, preset="medplib-7b", device="cuda:0", dtype="bf16", load_in="8bit")
    monkeypatch.setenv(me.FAKE_FREE_ENV, str(int(4e9)))
    with pytest.raises(InputError, match="or a larger card$|: a larger card$"):
        me.check_fits(real_7b, preset="medplib-7b", device="cuda:0", dtype="bf16", load_in=None)


def test_cpu_available_memory_is_read():
    assert me.available_bytes("cpu") > 0


@pytest.mark.parametrize("content, says", [(None, "no config.json"), ("{", "config.json unreadable"),
                                           ('{"model_type": "llama"}', "expected 'medplib_moe_llama'")])
def test_not_a_checkpoint_is_one_line(tmp_path, content, says):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(InputError, match=says):
        me.count_parameters(tmp_path)


def test_imports_without_torch():
    import subprocess
    import sys

    code = "import sys, medplib_runtime.modeling.memory_estimate; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_full_size_structure_costs_no_weight_memory_and_matches_the_estimate(real_7b):
    """The released model's 11.7 B parameters are built on the meta device (the checkpoint's tensors are assigned
    in, memory-mapped): building our structure at the real sizes allocates no weights, and its parameter count is
    the estimator's, so the memory check speaks of the model that will be loaded."""
    import os
    from dataclasses import replace

    from medplib_runtime.modeling.medplib import MedPLIB
    from medplib_runtime.modeling.meta_init import meta_parameters
    from medplib_runtime.modeling.released_checkpoint import ReleasedSizes, build_structure
    from medplib_runtime.modeling.sam_med2d import SamMed2DConfig
    from medplib_runtime.presets import MEDPLIB_7B

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    cfg = replace(MEDPLIB_7B, llm_vocab=REAL_7B["vocab_size"])
    clip = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
            "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu"}
    sam = SamMed2DConfig(image_size=cfg.pixel_image_size, out_chans=cfg.prompt_embed_dim)
    before = rss()
    model = build_structure(ReleasedSizes(cfg, clip, sam, 2048, 10000.0, 1e-5), None, MedPLIB)
    grown = rss() - before
    ours = sum(p.numel() for p in model.parameters())
    on_meta = sum(p.numel() for p in model.parameters() if p.is_meta)
    assert abs(ours - me.count_parameters(real_7b).total) / ours < 0.001, (ours, me.count_parameters(real_7b))
    assert on_meta / ours > 0.99 and meta_parameters(model)  # only the glue the composer builds (≈ 43 M) is real
    assert grown < 1.5e9, f"building the structure allocated {grown / 1e9:.1f} GB"
