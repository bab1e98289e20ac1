"""Greedy decoding with a KV cache, keeping the last-layer hidden state of every token.

Our own short loop (rather than ``generate``) because MedPLIB needs the hidden state at each
``<SEG>`` *as an input position*: the state computed when ``<SEG>`` is fed back in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class GenerationOutput:
    token_ids: tuple[int, ...]
    hidden: torch.Tensor  # len(token_ids)×D: last-layer state where token i was the input
    prefill_tokens: int
    prefill_s: float
    decode_s: float


def _cache_keyword(body) -> str:
    """Newer transformers (5.24 here) name the KV cache argument ``cache``; ``past_key_values`` warns there."""
    import inspect

    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


@torch.inference_mode()
def greedy_generate(llm, inputs_embeds: torch.Tensor, *, max_new_tokens: int, stop_ids: set[int],
                    on_token: Callable[[int], None] | None = None,
                    suppress_ids: tuple[int, ...] = ()) -> GenerationOutput:
    """``inputs_embeds`` ``1×T×D`` → greedy continuation, stopping at any of ``stop_ids``.

    ``suppress_ids`` are never emitted (input-only placeholders such as ``<image>``); a stop token
    is not allowed as the first token (HF's ``min_new_tokens=1``): an empty answer tells a user nothing.
    """
    import time

    from transformers import DynamicCache

    body, head = llm.model, llm.lm_head
    device = inputs_embeds.device
    kv = {_cache_keyword(body): DynamicCache(), "use_cache": True}  # one cache for the whole answer
    t0 = time.perf_counter()
    out = body(inputs_embeds=inputs_embeds, **kv)
    logits = head(out.last_hidden_state[:, -1])
    if device.type == "cuda":  # GPU work is asynchronous: the prefill's time is its own, not the first step's
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    tokens: list[int] = []
    hidden: list[torch.Tensor] = []
    embed = llm.get_input_embeddings()
    suppress = torch.tensor(suppress_ids, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        if len(suppress_ids):
            logits[..., suppress] = float("-inf")
        if step == 0 and stop_ids:  # an answer has at least one token (HF's min_new_tokens=1)
            logits[..., torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)] = float("-inf")
        token = int(logits.argmax(-1))
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        # feed it back: its output state is "the hidden state at this token" (needed for <SEG>)
        last = token in stop_ids or step == max_new_tokens - 1
        out = body(inputs_embeds=embed(torch.tensor([[token]], device=device)), **kv)
        hidden.append(out.last_hidden_state[0, -1])
        if last:
            break
        logits = head(out.last_hidden_state[:, -1])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    h = torch.stack(hidden) if hidden else torch.empty(0, llm.config.hidden_size, device=device)
    return GenerationOutput(tuple(tokens), h, inputs_embeds.shape[1], t1 - t0, t2 - t1)
