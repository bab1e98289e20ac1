"""MedPLIB composition at toy sizes (random weights): the 7b structure, placeholders, <SEG> masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medplib_runtime.predictors.asker import Asker
from medplib_runtime.conversation import REGION_SPAN, build_prompt
from medplib_runtime.errors import InputError, ModelError
from medplib_runtime.modeling.medplib import build_medplib
from medplib_runtime.modeling.moe import MoEFeedForward
from medplib_runtime.predictors.clip_frame import clip_pixels
from medplib_runtime.presets import IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, SYSTEM_PROMPT, tiny_7b_config
from medplib_runtime.schemas import Box, Point, Prompt, Turn
from medplib_runtime.predictors.segmenter import SamSegmenter


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_7b_config()
    model = build_medplib(cfg, pretrained=False)
    segmenter = SamSegmenter(model.sam)
    return cfg, model, segmenter, Asker(model, segmenter)


def test_tiny_7b_has_the_paper_structure(tiny):
    cfg, model, _, _ = tiny
    names = {n for n, _ in model.named_modules()}
    assert type(model.vision_tower).__name__ == "ClipTower"
    assert type(model.sam.image_encoder).__name__ == "SamMed2DImageEncoder"  # SAM-Med2D's ViT with adapters
    moes = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
    assert len(moes) == cfg.llm_layers, "a MoE FFN on every LLM layer"
    assert all(len(m.experts) == 2 for m in moes)
    assert {"vision_projector", "region_encoder", "seg_projector", "sam.mask_decoder"} <= names


def test_tiny_7b_embedding_grid_and_vision_tokens(tiny):
    cfg, model, segmenter, _ = tiny
    image = np.random.default_rng(0).random((70, 50)).astype(np.float32)
    emb = segmenter.embed(image)
    assert emb.image_embedding.shape == (1, cfg.prompt_embed_dim, cfg.pixel_embed_grid, cfg.pixel_embed_grid)
    clip = clip_pixels(image, cfg.vision_image_size)  # the asker's CLIP frame (MedPLIB's demo)
    assert clip.shape == (1, 3, cfg.vision_image_size, cfg.vision_image_size)
    tokens = model.image_tokens(pixel_embedding=emb.image_embedding, clip_pixels=clip)
    assert tokens.shape == (1, cfg.vision_grid ** 2, cfg.llm_hidden)


def test_placeholders_filled_exactly_and_mismatch_raises(tiny):
    cfg, model, _, _ = tiny
    text = build_prompt("what is the lesion ?", system="the", n_image_tokens=cfg.vision_grid ** 2, region=True)
    ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    image_tokens = torch.randn(1, cfg.vision_grid ** 2, cfg.llm_hidden)
    region = torch.randn(1, 1, cfg.llm_hidden)
    embeds = model.embed_inputs(ids, image_tokens=image_tokens, region_tokens=region)
    where = (ids[0] == model.token_ids[IMAGE_PLACEHOLDER]).nonzero()[:, 0]
    assert torch.equal(embeds[0, where], image_tokens[0])
    rpos = (ids[0] == model.token_ids[REGION_PLACEHOLDER]).nonzero()[:, 0]
    assert torch.equal(embeds[0, rpos], region[0])
    other = torch.ones(ids.shape[1], dtype=torch.bool)
    other[where] = False
    other[rpos] = False
    assert torch.equal(embeds[0, other], model.llm.get_input_embeddings()(ids)[0, other])
    with pytest.raises(ModelError, match=r"image placeholders \(16\) and image features \(15\)"):
        model.embed_inputs(ids, image_tokens=image_tokens[:, :15], region_tokens=region)
    with pytest.raises(ModelError, match="no region was given"):
        model.embed_inputs(ids, image_tokens=image_tokens)


@pytest.mark.parametrize("n_seg", [0, 1, 3])
def test_one_mask_per_seg_token_at_full_resolution(tiny, n_seg):
    _, model, segmenter, asker = tiny
    emb = segmenter.embed(np.random.default_rng(1).random((70, 50)).astype(np.float32))
    words = [model.tokenizer.convert_tokens_to_ids(w) for w in ("the", "lesion", "is", "here")]
    stream = list(words)
    for i in range(n_seg):  # <SEG> at different positions
        stream.insert(1 + 2 * i, asker.seg_id)
    hidden = torch.randn(len(stream), model.cfg.llm_hidden)
    masks = asker.masks_for(tuple(stream), hidden, emb, threshold=0.5)
    assert len(masks) == n_seg
    assert all(m.shape == (70, 50) and m.dtype == np.uint8 for m in masks)
    if n_seg == 3:  # each mask comes from its own <SEG> state
        seg_positions = model.seg_positions(stream)  # medplib-7b: the state before each <SEG> (MedPLIB's)
        assert seg_positions == [i - 1 for i, t in enumerate(stream) if t == asker.seg_id]
        tokens = model.seg_tokens(hidden[seg_positions])
        assert not torch.allclose(tokens[0], tokens[1])


def test_region_prompts_become_masks_in_model_space(tiny):
    _, model, segmenter, asker = tiny
    emb = segmenter.embed(np.random.default_rng(2).random((64, 32)).astype(np.float32))
    box = asker.region_mask(Prompt(box=Box(0, 0, 31, 31)), emb)
    assert box.shape == (16, 16)  # 4 × the 4×4 grid
    assert box[:8, :8].mean() > 0.9 and box[:, 8:].max() == 0  # upper-left quarter; padding stays empty
    point = asker.region_mask(Prompt(points=(Point(10, 10),)), emb)
    assert 0 < float(point.sum()) < 16 * 16
    grid = model.region_encoder.sample_positions(box)
    assert grid.shape[0] <= model.region_encoder.max_samples and grid.abs().max() <= 1
    with pytest.raises(InputError, match="region is empty"):
        model.region_encoder.sample_positions(torch.zeros(16, 16))


def test_ask_runs_end_to_end_on_the_tiny_model(tiny):
    cfg, model, segmenter, asker = tiny
    image = np.random.default_rng(3).random((40, 40)).astype(np.float32)
    emb = segmenter.embed(image)
    result = asker.ask(emb, "what is the lesion ?", image=image, region=Prompt(box=Box(5, 5, 20, 20)),
                       max_new_tokens=5)
    assert result.routing is not None and result.routing.expert_names == ("grounding", "vision-language")
    assert len(result.routing.per_token) >= 5
    for row in result.routing.per_token:
        assert sum(row) == pytest.approx(1.0)
    assert "seg_projector" in result.untrained_parts


def test_conversation_template_matches_medplib():
    text = build_prompt("What is it?", system=SYSTEM_PROMPT, n_image_tokens=2)
    assert text == (SYSTEM_PROMPT + " USER: <im_start><image><image><im_end>\nWhat is it? ASSISTANT:")
    hist = build_prompt("And now?", system="SYS", n_image_tokens=1, history=(Turn("Q1", "A1"),))
    assert hist == "SYS USER: <im_start><image><im_end>\nQ1 ASSISTANT: A1</s>USER: And now? ASSISTANT:"
    region = build_prompt("What is <region> here?", system="S", n_image_tokens=1, region=True)
    assert f"What is {REGION_SPAN} here?" in region
    appended = build_prompt("Describe it.", system="S", n_image_tokens=1, region=True)
    assert appended.endswith(f"Describe it. {REGION_SPAN} ASSISTANT:")


def test_tiny_7b_region_token_reads_the_clip_features(tiny):
    """medplib-7b's region token comes from the slice's CLIP features (region_features="clip"), not the SAM embedding."""
    cfg, model, segmenter, asker = tiny
    assert cfg.region_features == "clip"
    rng = np.random.default_rng(4)
    image, other = rng.random((40, 40)).astype(np.float32), rng.random((40, 40)).astype(np.float32)
    emb = segmenter.embed(image)
    region = Prompt(box=Box(0, 0, 39, 39))
    with torch.inference_mode():
        a = asker._features(emb, region, image)
        b = asker._features(emb, region, other)  # same embedding, another slice under CLIP
    assert not torch.equal(a.region, b.region) and not torch.equal(a.image, b.image)
    with pytest.raises(ModelError, match="needs the slice image"):
        asker._features(emb, region, None)


def test_clip_frame_is_medplibs_demo_geometry():
    from medplib_runtime.predictors.clip_frame import ClipFrame, clip_grid_mask, clip_pixels

    assert ClipFrame.of((70, 35), 336) == ClipFrame(336, (336, 168), 0, 84)  # centred padding
    x = clip_pixels(np.ones((70, 35), np.float32) * 0.5, 336)
    assert x.shape == (1, 3, 336, 336) and torch.all(x[..., :, :84] == 0) and torch.all(x[..., :, 252:] == 0)
    rgb = clip_pixels(np.random.default_rng(0).random((20, 20, 3)).astype(np.float32), 336)
    assert rgb.shape == (1, 3, 336, 336) and not torch.equal(rgb[0, 0], rgb[0, 1])
    mask = np.zeros((70, 35), np.uint8)
    mask[:, :18] = 1  # the left half of the slice
    grid = clip_grid_mask(mask, 336, 24)
    assert grid.shape == (24, 24) and grid[:, :6].sum() == 0 and grid[:, 6:12].all() and grid[:, 13:].sum() == 0
