"""Training examples: one supervised answer each, in exactly the prompt the model sees at inference.

A conversation of N turns gives N examples; example i's prompt is ``build_prompt(q_i,
history=turns[:i])`` (the same function ``ask`` uses), its target the answer's tokens and the
end-of-sequence token. Tokens of the prompt are not supervised (label -100).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ..conversation import build_prompt, history_text, question_for_routing
from ..errors import InputError
from ..schemas import Turn

IGNORE = -100


@dataclass(frozen=True)
class TrainSample:
    """One image with a conversation. ``image`` ``(h, w)`` float32 in [0, 1] (windowed slice);
    ``region`` ``(h, w)`` bool for questions that say ``<region>``; ``masks`` one ``(h, w)`` mask per
    ``<SEG>`` in the answers, in order; ``key`` names the record in error messages; ``region_name``
    the structure the region marks where the record says it (our builder's facts; region_alignment.py)."""

    key: str
    image: np.ndarray
    turns: tuple[Turn, ...]
    region: np.ndarray | None = None
    masks: tuple[np.ndarray, ...] = ()
    modality: str = "other"
    region_name: str | None = None
    answer_type: str = "open"  # the record's: "closed" (one of a few answers) or "open"
    body_region: str | None = None  # where the record says it (our builder); image_alignment.py


def pixel_key(image: np.ndarray) -> tuple:
    """A slice's identity by its pixels, not its array: a MeCoVQA file holds one record per question, so each
    slice's PNG is read into a new array once per record (979 records of 68 slices in glue-vqa)."""
    image = np.ascontiguousarray(image)
    return image.shape, image.dtype.str, hashlib.blake2b(image.tobytes(), digest_size=16).digest()


@dataclass(frozen=True)
class Example:
    sample: TrainSample
    input_ids: torch.Tensor  # 1×T
    labels: torch.Tensor  # 1×T, IGNORE outside the answer
    region: bool
    masks: tuple[np.ndarray, ...]  # one per <SEG> in this answer
    turn_start: int = 0  # where this turn's ``USER:`` begins (after the system line and earlier turns)
    route: "Example | None" = None  # what question-level routers read, where it differs (a trailing region left out)


def encode(sample: TrainSample, tokenizer, *, system: str, n_image_tokens: int, seg_id: int,
           max_tokens: int, route_trailing_region: bool = True) -> list[Example]:
    """Every turn of ``sample`` as one Example; InputError (naming the record) when it cannot be.
    ``route_trailing_region`` False: a turn whose region comes after its question also gets the
    prompt without it as ``route`` (``question_for_routing``; the Asker routes the same way)."""
    out: list[Example] = []
    masks = list(sample.masks)
    eos = tokenizer.eos_token_id
    for i, turn in enumerate(sample.turns):
        region = "<region>" in turn.question
        if region and sample.region is None:
            raise InputError(f"record {sample.key}: question {i} asks about <region> but the record has no region")
        prompt = build_prompt(turn.question, system=system, n_image_tokens=n_image_tokens,
                              history=sample.turns[:i], region=region)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(" " + turn.answer.strip(), add_special_tokens=False)["input_ids"] + [eos]
        if len(p_ids) + len(a_ids) > max_tokens:
            raise InputError(f"record {sample.key}: turn {i} is {len(p_ids) + len(a_ids)} tokens, over {max_tokens}")
        n_seg = a_ids.count(seg_id)
        if n_seg > len(masks):
            raise InputError(f"record {sample.key}: answer {i} has {n_seg} <SEG> but only {len(masks)} masks are left")
        turn_masks, masks = tuple(masks[:n_seg]), masks[n_seg:]
        ids = torch.tensor([p_ids + a_ids])
        labels = torch.tensor([[IGNORE] * len(p_ids) + a_ids])
        before = history_text(system=system, n_image_tokens=n_image_tokens, history=sample.turns[:i])
        turn_start = len(tokenizer(before, add_special_tokens=False)["input_ids"])
        route = None
        routed_question, routed_region = question_for_routing(turn.question, region)
        if not route_trailing_region and routed_question != turn.question:
            r_ids = tokenizer(build_prompt(routed_question, system=system, n_image_tokens=n_image_tokens,
                                           history=sample.turns[:i], region=routed_region),
                              add_special_tokens=False)["input_ids"]
            route = Example(sample, torch.tensor([r_ids + a_ids]), torch.tensor([[IGNORE] * len(r_ids) + a_ids]),
                            routed_region, turn_masks, turn_start)
        out.append(Example(sample, ids, labels, region, turn_masks, turn_start, route))
    if masks:
        raise InputError(f"record {sample.key}: {len(masks)} masks but no <SEG> left to use them")
    return out
