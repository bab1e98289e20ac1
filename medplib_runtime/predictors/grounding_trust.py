"""Never a confident wrong mask: how sure a grounding answer is, and when it says it did not find it (ours).

On held-out volumes the shipped glue answered "Sure, it is <SEG>." with a mask on the wrong structure
(Dice 0.00 on a brain MR it never saw) and no hint of doubt. Every grounded mask is now scored from
what the model itself has (docs/grounding.md):

* the ground head's heat map: its peak logit (its strength), and the chosen blob's share of all the probability
  over the head's threshold (one clear place vs a diffuse or split map);
* LiteMedSAM's predicted IoU for the box the heat map gave;
* agreement: IoU of the heat blob and the decoded mask on the heat map's grid (the decoder outlined
  what the heat map pointed at, not a neighbour);
* size: a mask of a few pixels or of a large share of the slice is not a lesion.

An answer whose confidence is under ``ABSTAIN_BELOW`` (calibrated on volumes other than the held-out
ones; table in docs/grounding.md) returns no mask and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..modeling.ground_head import HeatScores

# Calibrated on brain1, lung2, breast1 and unseen phantoms (docs/grounding.md "Calibration"); never on brain2/lung1.
ABSTAIN_BELOW = 0.6
FULL_LOGIT = 20.0  # a heat logit this high counts as a full-strength peak (calibration: lesions 25-38)
MAX_AREA_SHARE = 0.15  # of the slice: larger "lesions" were wrong structures (a whole lobe, the body)
MIN_AREA_SHARE = 2e-4  # ≈ 13 pixels of a 256² slice


@dataclass(frozen=True)
class GroundingEvidence:
    """The signals behind one grounded mask."""

    heat: HeatScores | None  # None: the token path (no heat map); confidence then rests on the decoder alone
    decoder_iou: float  # LiteMedSAM's own predicted IoU for its mask
    agreement: float  # IoU of the heat blob and the decoded mask on the heat grid
    area_share: float  # the mask's share of the slice's pixels


@dataclass(frozen=True)
class Grounded:
    mask: np.ndarray  # (y, x) uint8, full resolution
    evidence: GroundingEvidence
    confidence: float  # in [0, 1]


def grid_agreement(blob: np.ndarray, mask_on_grid: np.ndarray) -> float:
    """IoU of two ``g×g`` bool grids (0 when both are empty)."""
    union = np.logical_or(blob, mask_on_grid).sum()
    return float(np.logical_and(blob, mask_on_grid).sum() / union) if union else 0.0


def size_plausibility(area_share: float) -> float:
    """1 for a lesion-sized mask; falls to 0 for an empty speck or a mask over a large part of the slice."""
    if area_share <= 0:
        return 0.0
    low = min(1.0, area_share / MIN_AREA_SHARE)
    high = 1.0 if area_share <= MAX_AREA_SHARE else max(0.0, 1.0 - (area_share - MAX_AREA_SHARE) / MAX_AREA_SHARE)
    return low * high


def heat_strength(heat: HeatScores) -> float:
    """The heat map's peak as a score in [0, 1]: its logit over FULL_LOGIT (sigmoid saturates long before: every
    calibration answer had a peak probability of 1.00, with logits from 8 on an empty slice to 38)."""
    return min(max(heat.logit_peak / FULL_LOGIT, 0.0), 1.0)


def confidence(e: GroundingEvidence) -> float:
    """The geometric mean of the heat map's strength, the blob's share, the decoder's IoU and the agreement, times
    the size plausibility: any one signal near 0 pulls it down (a weak map, two candidate places, a box the decoder
    doubts, a mask off the heat map, an implausible size)."""
    parts = [e.decoder_iou]
    if e.heat is not None:
        parts += [heat_strength(e.heat), e.heat.blob_share, e.agreement]
    parts = [min(max(p, 1e-6), 1.0) for p in parts]
    mean = math.exp(sum(math.log(p) for p in parts) / len(parts))
    return float(mean * size_plausibility(e.area_share))


@dataclass(frozen=True)
class Verdict:
    abstained: bool
    confidence: float | None  # the least confident mask's; None: no mask was asked for


def judge(found: tuple[Grounded, ...], *, below: float = ABSTAIN_BELOW) -> Verdict:
    """Abstain when any mask of the answer is under ``below``: the answer's [mask N] refer to all of them."""
    if not found:
        return Verdict(False, None)
    least = min(g.confidence for g in found)
    return Verdict(least < below, least)


def abstention_text(structure: str | None, score: float) -> str:
    what = f"the {structure}" if structure else "the structure"
    return (f"I could not find {what} with confidence on this slice (confidence {score:.2f}). "
            "Draw a box around it and press Segment, or try another slice.")


__all__ = ["ABSTAIN_BELOW", "Grounded", "GroundingEvidence", "Verdict", "abstention_text", "confidence",
           "grid_agreement", "heat_strength", "judge", "size_plausibility"]
