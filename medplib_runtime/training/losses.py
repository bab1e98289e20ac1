"""The losses of MedPLIB's training: next-token cross-entropy on the answer, and for ``<SEG>``
masks sigmoid BCE + Dice (LISA's ``dice_loss``: 1 − (2·|p∩t| + 1)/(|p| + |t| + 1) per mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .examples import IGNORE


def text_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head) -> torch.Tensor:
    """``1×T×D`` last-layer states, ``1×T`` labels → mean CE over supervised next tokens. The LM head
    (49k wide: the costliest matmul of a step, forward and backward) runs only at the positions that
    predict a supervised token, a tenth of a prompt with 64 image tokens; the loss is the same."""
    targets = labels[:, 1:].reshape(-1)
    at = (targets != IGNORE).nonzero()[:, 0]
    states = hidden[:, :-1].reshape(-1, hidden.shape[-1])[at]
    return F.cross_entropy(lm_head(states).float(), targets[at])


def mask_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``N×1×L×L`` logits and 0/1 targets → (BCE mean, Dice loss mean over the N masks)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    p = torch.sigmoid(logits).flatten(1)
    t = targets.flatten(1)
    dice = 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)
    return bce, dice.mean()


def routing_loss(layer_logits: list[torch.Tensor], target: int) -> torch.Tensor:
    """Mean over layers and tokens of the router's CE towards expert ``target`` (each ``N×E`` logits)."""
    logits = torch.cat(layer_logits).float()
    return F.cross_entropy(logits, torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device))
