"""A tiny MedPLIB (lite structure, random weights, word-level tokenizer) and synthetic samples,
for training tests that must run in seconds. Not a stand-in for the real model's quality."""

from __future__ import annotations

import numpy as np
import torch

from medplib_runtime.presets import MEDPLIB_LITE
from medplib_runtime.schemas import Turn
from medplib_runtime.training.examples import TrainSample

TINY_LITE = MEDPLIB_LITE.with_overrides(preset="medplib-lite-tiny", llm_hidden=64, llm_layers=2, llm_heads=4,
                                        llm_kv_heads=4, llm_intermediate=128, llm_vocab=512)


def tiny_model(glue=None):
    """The tiny lite model, random weights; ``glue``: built with that glue file (its weights and routing)."""
    from medplib_runtime.modeling.medplib import build_medplib

    torch.manual_seed(0)  # the random SAM and LLM are the same in every call
    return build_medplib(TINY_LITE, pretrained=False, glue=glue)


def samples(n: int = 4, region_names: tuple[str, ...] = ()) -> list[TrainSample]:
    """``region_names``: the structure each sample's region marks, cycled (region alignment needs them)."""
    out = []
    for i in range(n):
        image = np.zeros((48, 64), np.float32)
        image[10 + i:30 + i, 12:40] = 1.0
        mask = image > 0.5
        region = np.zeros_like(mask)
        region[12:20, 14:30] = True
        out.append(TrainSample(f"s{i}", image, (
            Turn("what is in the <region> ?", "a lesion"),
            Turn("segment the lesion", "it is here <SEG>"),
        ), region=region, masks=(mask,), region_name=region_names[i % len(region_names)] if region_names else None))
    return out


class FakeEmbedder:
    """A deterministic cheap stand-in for the frozen pixel encoder (it has no trainable part)."""

    def __call__(self, sample):
        from medplib_runtime.imaging.transforms import resize_info
        from medplib_runtime.predictors.segmenter import Embedding

        g = torch.Generator().manual_seed(int(sample.key[1:]))
        return Embedding(torch.randn(1, 256, 64, 64, generator=g), resize_info(sample.image.shape, 256))
