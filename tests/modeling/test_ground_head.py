"""The lite preset's ground head: <SEG> query × pixel embedding → heat map → box → frozen decoder.

Hand-made heat maps give known boxes; on a tiny model, stage III teaches the head *where* an object
is from pixel features alone; the glue file carries the head, and an older file without it still
loads (masks then take MedPLIB's token path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from _tiny_training import TINY_LITE, samples, tiny_model
from medplib_runtime.predictors.asker import Asker
from medplib_runtime.glue.files import glue_status
from medplib_runtime.imaging.transforms import mask_to_model, resize_info
from medplib_runtime.modeling.glue_weights import load_glue, save_glue
from medplib_runtime.modeling.ground_head import GroundHead, box_from_heat, label_4connected
from medplib_runtime.predictors.segmenter import Embedding, SamSegmenter
from medplib_runtime.training.config import TrainConfig
from medplib_runtime.training.examples import encode
from medplib_runtime.training.trainer import train


def test_box_around_the_strongest_blob_in_model_pixels():
    heat = torch.full((16, 16), -6.0)
    heat[4:7, 8:12] = 5.0  # strong: 12 cells
    heat[12:14, 1:3] = 1.0  # over the threshold too (p 0.73), but weaker in sum
    box = box_from_heat(heat, model_size=64, valid_hw=(64, 64))  # 4 model pixels per cell
    assert box.tolist() == [32.0, 16.0, 47.0, 27.0]


def test_box_when_no_cell_is_over_the_threshold_and_never_in_the_padding():
    heat = torch.full((16, 16), -6.0)
    heat[10, 14], heat[10, 15], heat[11, 14] = -1.0, -1.2, -1.5  # peak p 0.27; neighbours over half of it
    box = box_from_heat(heat, model_size=64, valid_hw=(64, 58))
    assert box.tolist() == [56.0, 40.0, 57.0, 47.0]  # x1 63 clipped to the resized width - 1


def test_blob_labels_and_sums_are_scipys():
    """box_from_heat labels blobs without scipy (a cold ask's import time): the same labels, numbering and
    summed probabilities as scipy.ndimage.label / ndimage.sum, so the same blob wins."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(300):
        on = rng.random(tuple(rng.integers(1, 24, 2))) < rng.uniform(0.05, 0.8)
        prob = rng.random(on.shape).astype(np.float32)
        ours, n = label_4connected(on)
        theirs, m = ndimage.label(on)
        assert n == m and np.array_equal(ours, theirs)
        if n:
            assert np.array_equal(np.bincount(ours.ravel(), weights=prob.ravel())[1:n + 1],
                                  np.asarray(ndimage.sum(prob, theirs, index=np.arange(1, n + 1))))


def test_heat_shapes_and_gradients():
    head = GroundHead(8)
    queries = torch.randn(3, 1, 8, requires_grad=True)
    heat = head(queries, torch.randn(1, 8, 5, 5))
    assert heat.shape == (3, 1, 5, 5)
    heat.sum().backward()
    assert queries.grad is not None and head.key[0].weight.grad is not None


class _ObjectEmbedder:
    """Pixel features that show where the object is (a fixed feature vector over its cells, noise
    elsewhere): the head must find it from the features, the LLM never sees a coordinate."""

    def __init__(self) -> None:
        self.sign = torch.randn(256, generator=torch.Generator().manual_seed(7))

    def __call__(self, sample):
        info = resize_info(sample.image.shape, 256)
        where = mask_to_model(sample.masks[0], info, 64)[0, 0] > 0.5
        g = torch.Generator().manual_seed(int(sample.key[1:]))
        emb = 0.3 * torch.randn(1, 256, 64, 64, generator=g)
        emb[0, :, where] += self.sign[:, None]
        return Embedding(emb, info)


def _heat(model, sample, embedding) -> torch.Tensor:
    ex = encode(sample, model.tokenizer, system=model.cfg.system_prompt, n_image_tokens=model.n_image_tokens,
                seg_id=model.token_ids["<SEG>"], max_tokens=512)[1]  # the "segment" turn
    pixel = embedding.image_embedding
    embeds = model.embed_inputs(ex.input_ids, image_tokens=model.image_tokens(pixel_embedding=pixel))
    hidden = model.llm.model(inputs_embeds=embeds).last_hidden_state
    seg_at = ((ex.input_ids[0] == model.token_ids["<SEG>"]) & (ex.labels[0] != -100)).nonzero()[:, 0]
    return model.ground_head(model.seg_tokens(hidden[0, seg_at]), pixel)[0, 0]


def test_stage3_teaches_the_head_where_the_object_is(tmp_path):
    model, data, embedder = tiny_model(), samples(), _ObjectEmbedder()
    cfg = TrainConfig(stage=3, data=("synthetic",), out_dir=str(tmp_path), steps=12, grad_accumulation=4,
                      warmup_steps=1, lr=1e-2)
    report = train(cfg, data, model=model, embedder=embedder, progress=False)
    assert report.losses[-1] < report.losses[0]
    model.eval()
    with torch.no_grad():
        for sample in data:
            emb = embedder(sample)
            box = box_from_heat(_heat(model, sample, emb), model_size=256, valid_hw=emb.info.resized)
            rows, cols = np.nonzero(mask_to_model(sample.masks[0], emb.info, 256)[0, 0].numpy() > 0.5)
            truth = np.array([cols.min(), rows.min(), cols.max(), rows.max()], np.float32)
            assert _box_iou(box, truth) > 0.7, (box, truth)
    loaded = tiny_model()
    load_glue(loaded, report.adapter)
    assert loaded.ground_head_trained and loaded.grounds_by_box


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return float(ix * iy / (area(a) + area(b) - ix * iy))


def test_masks_take_the_box_path_once_the_head_is_trained_and_the_token_path_before(tmp_path):
    model = tiny_model()
    segmenter = SamSegmenter(model.sam)
    emb = segmenter.embed(np.random.default_rng(4).random((60, 80)).astype(np.float32))
    stream = (model.token_ids["<SEG>"],)
    hidden = torch.randn(1, TINY_LITE.llm_hidden)
    token_path = Asker(model, segmenter).masks_for(stream, hidden, emb, threshold=0.5)

    path = save_glue(model, tmp_path / "glue.safetensors", trained_parts=("seg_projector", "ground_head"),
                     recipe={"stages": []})
    load_glue(model, path)
    asker = Asker(model, segmenter)
    box_path = asker.masks_for(stream, hidden, emb, threshold=0.5)
    with torch.inference_mode():
        heat = model.ground_head(model.seg_tokens(hidden), emb.image_embedding)[0, 0]
        box = box_from_heat(heat, model_size=256, valid_hw=emb.info.resized)
        logits, _ = segmenter.decode_boxes(emb, box[None])
    assert np.array_equal(box_path[0], segmenter.to_mask(logits, emb, 0.5))
    assert box_path[0].shape == token_path[0].shape == (60, 80)

    old = {k: v for k, v in load_file(str(path)).items() if not k.startswith("ground_head.")}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["trained_parts"] = '["seg_projector"]'
    save_file(old, str(tmp_path / "old.safetensors"), metadata=meta)  # a glue file from before the head
    fresh = tiny_model()
    load_glue(fresh, tmp_path / "old.safetensors")
    assert not fresh.grounds_by_box
    source, ok = glue_status(TINY_LITE, tmp_path / "old.safetensors")["ground_head"]
    assert ok and "token path" in source  # the head is not used, so it is not reported as untrained
    again = Asker(fresh, SamSegmenter(fresh.sam)).masks_for(stream, hidden, emb, threshold=0.5)
    assert np.array_equal(again[0], token_path[0])


def test_medplib_7b_keeps_the_token_path():
    from medplib_runtime.presets import MEDPLIB_7B

    assert MEDPLIB_7B.grounding == "token"
    cfg = TrainConfig(stage=3, data=("x",), out_dir="x", preset="medplib-7b")
    assert "ground_head" not in cfg.trains
    assert "ground_head" in TrainConfig(stage=3, data=("x",), out_dir="x").trains


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_stage3_trains_on_the_real_pixel_encoders_embeddings(tmp_path):
    """The encoder runs under inference_mode; the head's key convolution must still learn from its output."""
    model = tiny_model()
    cfg = TrainConfig(stage=3, data=("synthetic",), out_dir=str(tmp_path), steps=1, grad_accumulation=2,
                      warmup_steps=1, lr=1e-2)
    before = model.ground_head.key[0].weight.detach().clone()
    train(cfg, samples(1), model=model, progress=False)  # no embedder given: the frozen TinyViT embeds
    assert not torch.equal(before, model.ground_head.key[0].weight)
