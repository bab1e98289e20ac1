"""How a glue's MoE routes at inference: one frozen config, decided by its recipe (no torch).

The experts are fixed by MedPLIB's stages: stage II trains the vision-language expert, stage III the
grounding expert, stage IV the routers. ``glue.recipe.trained_routing`` reads a ``RoutingConfig`` from
a glue's metadata once; the model is built with it (``modeling/medplib.py``) and the Asker reads it
from there. A choice made per question (``per_question``) is passed down per call, never stored.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUND_EXPERT, VL_EXPERT = 0, 1
# the expert each stage trains (MedPLIB: II the vision-language expert, III the grounding expert);
# stage IV trains the router, which then decides
STAGE_EXPERT: dict[int, int | None] = {1: VL_EXPERT, 2: VL_EXPERT, 3: GROUND_EXPERT, 4: None}


@dataclass(frozen=True)
class RoutingConfig:
    """What the glue's recipe decides about routing (its last stage, ``trained_routing``).

    The default is a model without a trained glue: every MoE layer as built (the router, the preset's
    top-k), per token, reading a chat's earlier turns.
    """

    answer_routing: str = "token"  # "token": per token; "sequence": one expert per question (question_routing.py)
    question_threshold: float = 0.5  # "sequence": p(grounding) above which the grounding expert answers
    forced_expert: int | None = None  # every token to this expert, unless a call picks another; None: the router
    top_k: int | None = None  # the router's top-k; None: the preset's
    question_pool: str = "mean"  # "sequence": the question's positions averaged, or the prompt's "last" one
    route_trailing_region: bool = True  # "sequence": False — routed on the question without a region after it
    # whether an answer reads a chat's earlier turns (MedPLIB's multi-turn template); a glue trained on
    # single questions only reads none (``trained_on_history``)
    reads_history: bool = True

    @property
    def per_question(self) -> bool:
        """One expert writes the whole answer, chosen from the question (the shipped lite glue)."""
        return self.answer_routing == "sequence"


__all__ = ["GROUND_EXPERT", "RoutingConfig", "STAGE_EXPERT", "VL_EXPERT"]
