"""Ridge regression with an unpenalised intercept: the closed-form fits of the region and image alignments."""

from __future__ import annotations

import torch


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float,
              weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` N×C, ``y`` N×D → ``(weight C×D, bias D)`` minimising
    ``Σᵢ wᵢ‖xᵢ·weight + bias − yᵢ‖² + ridge·‖weight‖²`` (both centred, so the bias is not shrunk).
    ``weights`` (N, > 0; None: all 1) are rescaled to mean 1, so the penalty means the same with or
    without them; a whole-number weight k is the row given k times."""
    w = torch.ones(len(x), dtype=x.dtype) if weights is None else weights.to(x.dtype) * len(x) / weights.sum()
    x_mean, y_mean = (w[:, None] * x).sum(0) / w.sum(), (w[:, None] * y).sum(0) / w.sum()
    xc = x - x_mean
    gram = xc.T @ (w[:, None] * xc) + ridge * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.T @ (w[:, None] * (y - y_mean)))
    return weight, y_mean - x_mean @ weight


__all__ = ["ridge_fit"]
