"""MeCoVQA / LLaVA-format JSON → TrainSamples (what the trainer eats).

Record: ``{"image": "x.png", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}], "modality": ...}``. A human turn may carry
``<region>masks/r.png</region>`` (the region prompt); a gpt turn ``<SEG>`` … ``<mask>masks/m.png</mask>``
(the ground truth of each ``<SEG>``, in order; the ``<mask>`` part is not part of the answer text).
Paths are relative to ``image_folder`` (default: the JSON file's folder). Errors name the record.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..schemas import Turn
from .examples import TrainSample
from .json_files import read_json

_REGION = re.compile(r"<region>(.*?)</region>")
_MASK = re.compile(r"\s*<mask>(.*?)</mask>")


def _png(path: Path, what: str, key: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (OSError, ValueError) as exc:
        raise InputError(f"record {key}: cannot read {what} {path}: {exc}") from None


def samples_from_json(path: str | Path, *, image_folder: str | Path | None = None) -> list[TrainSample]:
    path = Path(path)
    records = read_json(path, "dataset", expect=list)
    root = Path(image_folder) if image_folder else path.parent
    return [_sample(rec, root, f"{path.name}#{i}") for i, rec in enumerate(records)]


def _sample(rec: dict, root: Path, where: str) -> TrainSample:
    key = f"{where} ({rec.get('id', rec.get('image', '?'))})" if isinstance(rec, dict) else where
    if not isinstance(rec, dict) or "image" not in rec or not isinstance(rec.get("conversations"), list):
        raise InputError(f"record {key}: needs 'image' and a 'conversations' list")
    image = _png(root / rec["image"], "image", key).astype(np.float32) / 255.0
    convs = rec["conversations"]
    if len(convs) < 2 or len(convs) % 2:
        raise InputError(f"record {key}: conversations must alternate human/gpt turns")
    turns, masks, region = [], [], None
    for q, a in zip(convs[0::2], convs[1::2]):
        if q.get("from") != "human" or a.get("from") != "gpt":
            raise InputError(f"record {key}: conversations must alternate human/gpt turns")
        question = str(q.get("value", "")).replace("<image>\n", "").replace("<image>", "").strip()
        for rel in _REGION.findall(question):
            r = _png(root / rel, "region mask", key) > 0
            if r.shape != image.shape:
                raise InputError(f"record {key}: region mask {rel} is {r.shape}, the image {image.shape}")
            if region is not None and not np.array_equal(region, r):
                raise InputError(f"record {key}: more than one region mask in one record")
            region = r
        question = _REGION.sub("<region>", question)
        answer = str(a.get("value", ""))
        for rel in _MASK.findall(answer):
            m = _png(root / rel, "mask", key) > 0
            if m.shape != image.shape:
                raise InputError(f"record {key}: mask {rel} is {m.shape}, the image {image.shape}")
            masks.append(m)
        turns.append(Turn(question, _MASK.sub("", answer).strip()))
    return TrainSample(key, image, tuple(turns), region=region, masks=tuple(masks),
                       modality=str(rec.get("modality", "other")))
