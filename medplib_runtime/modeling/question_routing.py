"""Question-level routing (ours, ``medplib-lite``): one expert answers the whole question.

MedPLIB's router picks an expert per token, and learns to over a whole epoch of MeCoVQA. Ours had
50 steps: trained per token it learnt the class prior (98 % of every question's tokens to the
vision-language expert, docs/training.md) and, blending the experts under top-2, lost stage III's
grounding (the `<SEG>` went missing or pointed at the other structure) and leaked `<SEG>` into VQA
answers. So a lite glue trained with ``routing: "sequence"`` routes per question instead:

* the question is read once by the vision-language expert (stage II's model, every token forced);
* at each of the current turn's question tokens, every layer's router gives p(grounding); their
  mean over tokens and layers above the glue's threshold hands the whole answer to the grounding
  expert (stage III's model, forced), else to the vision-language expert;
* stage IV then trains exactly these routers on exactly these states (class-balanced CE,
  ``training/forward.py``), and sets the threshold where the last quarter of its training
  questions are told apart best (``best_threshold``): the mean p of both kinds sits above 0.5 —
  a question's generic tokens ("the", "?") get p near the middle for both — so 0.5 would
  send every question to the grounding expert (measured: 0.54–0.59 for VQA, 0.61–0.66 for
  grounding questions after 20 steps).

The routing prefill is the vision-language expert's prefill of the prompt: when that expert is
chosen, the answer continues from its KV cache (``QuestionRoute.prefilled``); only a question
handed to the grounding expert pays a second prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .generation import Prefill
from ..glue.routing import GROUND_EXPERT, VL_EXPERT
from .moe import expert_forced, tap_router_logits


@dataclass(frozen=True)
class QuestionRoute:
    expert: int  # the expert that writes the whole answer
    p_ground: float  # mean p(grounding) over the question's tokens and every layer
    prefilled: Prefill | None  # the prompt's KV cache when ``expert`` is the one that read it, else None


def question_positions(input_ids: torch.Tensor, *, turn_start: int, im_end_id: int, end: int) -> torch.Tensor:
    """The current turn's positions in ``input_ids`` (1-D) from its ``USER:`` (never the image,
    which comes before the first question) up to ``end`` (exclusive)."""
    image_end = (input_ids[:end] == im_end_id).nonzero()[:, 0]
    start = max(turn_start, int(image_end[-1]) + 1 if len(image_end) else 0)
    return torch.arange(min(start, end), end, device=input_ids.device)


def ground_probability(taps: list[list[torch.Tensor]], positions: torch.Tensor) -> float:
    """Mean over layers and ``positions`` of the router's p(grounding expert); 0.0 with no positions."""
    if not len(positions) or not taps or not taps[0]:
        return 0.0
    logits = torch.stack([tap[0][positions].detach() for tap in taps]).float()  # L×N×E
    return float(torch.softmax(logits, dim=-1)[..., GROUND_EXPERT].mean())


@torch.inference_mode()
def choose_expert(llm, read: Callable[[], Prefill], positions: torch.Tensor, *,
                  threshold: float = 0.5) -> QuestionRoute:
    """The expert that answers a prompt, from ``read()``: its prefill (``MedPLIB.prefill``, or
    ``generation.prefill``) run here by the vision-language expert. The answer is then written inside
    ``expert_forced(llm, route.expert)``; the layers' own setting is left as it was."""
    with expert_forced(llm, VL_EXPERT), tap_router_logits(llm) as taps:  # the states the routers were trained on
        prefilled = read()
    p = ground_probability(taps, positions)
    if p > threshold:
        return QuestionRoute(GROUND_EXPERT, p, None)  # its cache holds the other expert's states
    return QuestionRoute(VL_EXPERT, p, prefilled)


def best_threshold(scores: list[tuple[float, bool]]) -> float:
    """The p that best separates grounding questions (True) from the rest: the midpoint between
    neighbouring scores with the highest balanced accuracy (0.5 without both kinds)."""
    n_pos = sum(1 for _, g in scores if g)
    n_neg = len(scores) - n_pos
    if not n_pos or not n_neg:
        return 0.5
    ordered = sorted(scores)
    best, best_t = -1.0, 0.5
    below_neg = below_pos = 0  # questions at or below the candidate threshold
    for i, (p, g) in enumerate(ordered):
        below_pos += g
        below_neg += not g
        if i + 1 < len(ordered) and ordered[i + 1][0] == p:
            continue  # a threshold between equal scores does not exist
        balanced = (below_neg / n_neg + (n_pos - below_pos) / n_pos) / 2
        nxt = ordered[i + 1][0] if i + 1 < len(ordered) else p + 1e-3
        if balanced > best:
            best, best_t = balanced, (p + nxt) / 2
    return best_t


__all__ = ["QuestionRoute", "best_threshold", "choose_expert", "ground_probability", "question_positions"]
