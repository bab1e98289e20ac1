"""The added tokens' rows (``<SEG>``, ``<region>``, the image placeholders …) trained as a small
delta, not through the whole embedding.

The embedding is tied to the LM head (SmolLM2), so a trainable embedding weight gets a dense
49k × 576 gradient from both uses every micro-batch, which a hook then zeroes outside the new
rows (params.keep_only_new_rows): 3.0 s of a 9.0 s stage-II step on 2 cores, for 13 rows
(scripts/bench_train_step.py). Here the
weight stays frozen and an ``n_new × D`` parameter is added where those rows are read — to the
embedding's output at the new tokens' positions and, tied, to the LM head's logits of the new
tokens. The values the model computes are the same as with the rows themselves.

``fold`` writes the delta into the rows (and zeroes it) before every checkpoint and at the end,
so a saved glue, a resumed run and an uninterrupted one hold the same numbers (Adam's moments
are the delta's gradient's, unchanged by the fold). Used on one process and under DDP; FSDP2
shards the embedding, and keeps the row hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.glue_weights import first_new_row

ATTR = "new_rows_delta"  # where the module sits on the model while a stage trains (DDP then sees it)
NAME = "llm.embed_tokens.new_rows"  # its parameter's name in the stage's list: no weight decay, as the rows


class NewRowsDelta(nn.Module):
    def __init__(self, weight: torch.Tensor, start: int) -> None:
        super().__init__()
        self.start = start
        self.delta = nn.Parameter(torch.zeros(weight.shape[0] - start, weight.shape[1], dtype=weight.dtype,
                                              device=weight.device))
        self.handles: list = []

    def embedding_hook(self, module, args, output: torch.Tensor) -> torch.Tensor:
        ids = args[0]
        new = (ids >= self.start).unsqueeze(-1).to(output.dtype)
        # every call reads the delta (times 0 where no new token is), so DDP always sees its gradient
        return output + F.embedding((ids - self.start).clamp(min=0), self.delta).to(output.dtype) * new

    def head_hook(self, module, args, output: torch.Tensor) -> torch.Tensor:
        extra = F.linear(args[0], self.delta.to(args[0].dtype))
        return torch.cat([output[..., : self.start], output[..., self.start:] + extra.to(output.dtype)], dim=-1)


def attach(model) -> nn.Parameter:
    """Give ``model`` a zero delta for its new rows and hooks that add it; → the parameter to train."""
    detach(model)
    llm = model.llm
    weight = llm.get_input_embeddings().weight
    rows = NewRowsDelta(weight, first_new_row(model))
    rows.handles.append(llm.get_input_embeddings().register_forward_hook(rows.embedding_hook))
    if llm.get_output_embeddings() is not None and llm.get_output_embeddings().weight is weight:  # tied
        rows.handles.append(llm.get_output_embeddings().register_forward_hook(rows.head_hook))
    setattr(model, ATTR, rows)
    return rows.delta


@torch.no_grad()
def fold(model) -> None:
    """Write the delta into the embedding's new rows and zero it (no-op without one)."""
    rows = getattr(model, ATTR, None)
    if rows is None:
        return
    weight = model.llm.get_input_embeddings().weight
    weight[rows.start:] += rows.delta.to(weight.dtype)
    rows.delta.zero_()


def detach(model) -> None:
    """Fold, remove the hooks and the module: the model is as without this, with its rows trained."""
    rows = getattr(model, ATTR, None)
    if rows is None:
        return
    fold(model)
    for handle in rows.handles:
        handle.remove()
    delattr(model, ATTR)


def moments_for(optimizer: torch.optim.Optimizer, saved: dict) -> dict:
    """A checkpoint's Adam state for this run's parameters when the rows trained the other way: a run
    with the whole embedding (FSDP2, or any run before 2026-12-06) holds its moments where a delta's
    belong — their last rows are the new tokens' — and a delta's moments are, for a whole embedding,
    its last rows with zeros above (the old rows' gradient is always zero, and they get no weight
    decay, so their moments stay exactly 0). So a checkpoint resumes in either mode. Others: as saved."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def fitted(v, p):
        if p is None or not torch.is_tensor(v) or v.ndim != 2 or len(p.shape) != 2 or v.shape[1] != p.shape[1]:
            return v
        if v.shape[0] > p.shape[0]:
            return v[-p.shape[0]:]
        if v.shape[0] < p.shape[0]:
            return torch.cat([v.new_zeros(p.shape[0] - v.shape[0], v.shape[1]), v])
        return v

    state = {i: {k: fitted(v, params[int(i)] if int(i) < len(params) else None) for k, v in entry.items()}
             for i, entry in saved["state"].items()}
    return {**saved, "state": state}


__all__ = ["NAME", "attach", "detach", "fold", "moments_for"]
