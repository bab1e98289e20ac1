"""MeCoVQA / LLaVA-format JSON → TrainSamples (what the trainer eats).

The records are read and validated by ``data.mecovqa`` (one reader for training, evaluation
and the builder). Each PNG goes through the same intensity path as at inference: a 2D image
sent with ``modality="other"`` is windowed by its own percentiles (``window_for``), so the model
is trained on exactly the pixels ``medplib eval`` and ``ask`` give it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.mecovqa import load_masks, read_dataset, read_png
from ..errors import InputError
from ..imaging.windowing import apply_window, window_for
from ..schemas import Turn
from .examples import TrainSample


def unit_image(png: np.ndarray) -> np.ndarray:
    """An 8-bit slice → float32 [0, 1] exactly as LocalRuntime windows a 2D ``other`` image."""
    x = png.astype(np.float32) / 255.0
    return apply_window(x, window_for(x, "other"))


def samples_from_json(path: str | Path, *, image_folder: str | Path | None = None,
                      question_types: tuple[str, ...] = ()) -> list[TrainSample]:
    """Every record (or those of ``question_types``) as a TrainSample."""
    ds = read_dataset(path, image_folder=image_folder)
    out = []
    for i, rec in enumerate(ds.records):
        if question_types and rec.question_type not in question_types:
            continue
        name = f"{Path(path).name}#{i} ({rec.id})"
        png = read_png(ds.root / rec.image, record=name)
        try:
            image = unit_image(png)
        except InputError as exc:
            raise InputError(f"record {name}: {exc}") from None
        region, masks = load_masks(rec, ds.root, png.shape)
        turns = tuple(Turn(t.plain_question, t.plain_answer) for t in rec.turns)
        out.append(TrainSample(name, image, turns, region=region, masks=masks, modality=rec.modality,
                               region_name=region_name(rec) if region is not None else None,
                               answer_type=rec.answer_type, body_region=body_region(rec)))
    return out


def body_region(rec) -> str | None:
    """The record's ``body_region`` (our builder writes it; real MeCoVQA does not: None)."""
    value = rec.extra.get("body_region")
    return str(value) if isinstance(value, str) and value.strip() else None


BACKGROUND = "background"


def region_name(rec) -> str | None:
    """The structure a record's region marks, where our builder wrote it: ``facts.name``, or an "is
    it the X?" question's ``facts.truth`` (none: a region on no structure → "background"). None for
    records that do not say (real MeCoVQA): region alignment then leaves them out."""
    facts = rec.extra.get("facts")
    if not isinstance(facts, dict):
        return None
    if "truth" in facts:
        return str(facts["truth"]) if facts["truth"] else BACKGROUND
    return str(facts["name"]) if isinstance(facts.get("name"), str) and facts["name"] else None
