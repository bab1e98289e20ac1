"""Ridge regression with an unpenalised intercept: the closed-form fits of the region and image alignments."""

from __future__ import annotations

import torch


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` N×C, ``y`` N×D → ``(weight C×D, bias D)`` minimising
    ``‖x·weight + bias − y‖² + ridge·‖weight‖²`` (both centred, so the bias is not shrunk)."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.T @ (y - y_mean))
    return weight, y_mean - x_mean @ weight


__all__ = ["ridge_fit"]
