"""Greedy decoding with a KV cache, keeping the last-layer hidden state of every token.

Our own short loop (rather than ``generate``) because MedPLIB needs the hidden state at each
``<SEG>`` *as an input position*: the state computed when ``<SEG>`` is fed back in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Prefill:
    """A prompt already run through the LLM body: its KV cache and last state, for a
    ``greedy_generate`` that continues from it instead of running the prompt again."""

    cache: object  # DynamicCache or llama_infer.KVCache: the prompt's keys and values (single use: decoding grows it)
    last_hidden: torch.Tensor  # 1×D: the last-layer state at the prompt's last position
    tokens: int
    seconds: float
    reused: int = 0  # leading positions whose keys and values came from an earlier prefill (``extend_prefill``)


@dataclass(frozen=True)
class GenerationOutput:
    token_ids: tuple[int, ...]
    hidden: torch.Tensor  # len(token_ids)×D: last-layer state where token i was the input
    prefill_tokens: int
    prefill_reused: int  # of them, read by an earlier prefill whose cache was continued (not run again)
    prefill_s: float
    decode_s: float


def cache_kwargs(body, cache) -> dict:
    """The keywords that run ``body`` on with ``cache`` (and grow it)."""
    return {_cache_keyword(body): cache, "use_cache": True}


def _cache_keyword(body) -> str:
    """Newer transformers (5.24 here) name the KV cache argument ``cache``; ``past_key_values`` warns there."""
    import inspect

    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def new_cache(body):
    """The body's own cache (llama_infer's, no transformers import), else transformers' DynamicCache."""
    if hasattr(body, "new_cache"):
        return body.new_cache()
    from transformers import DynamicCache

    return DynamicCache()


@torch.inference_mode()
def prefill(llm, inputs_embeds: torch.Tensor) -> Prefill:
    """Run the prompt ``1×T×D`` through the LLM body once, keeping its KV cache."""
    body = llm.model
    cache = new_cache(body)
    t0 = time.perf_counter()
    out = body(inputs_embeds=inputs_embeds, **{_cache_keyword(body): cache, "use_cache": True})
    last = out.last_hidden_state[:, -1]
    if inputs_embeds.device.type == "cuda":  # GPU work is asynchronous: the prefill's time is its own
        torch.cuda.synchronize(inputs_embeds.device)
    return Prefill(cache, last, inputs_embeds.shape[1], time.perf_counter() - t0)


@torch.inference_mode()
def extend_prefill(llm, start: Prefill, inputs_embeds: torch.Tensor, *, shared: int) -> Prefill:
    """The prompt ``inputs_embeds`` ``1×T×D`` whose first ``shared`` positions equal those ``start`` read
    (same inputs, same weights and routing): ``start``'s cache is cut back to them and only the rest is
    run. Causal attention makes the result the full prefill's (a chat turn shares the system line and
    the image with its single-turn routing prompt). ``start`` is used up."""
    if not 0 < shared < inputs_embeds.shape[1] or shared > start.tokens:
        raise ValueError(f"shared prefix {shared} must be in 1..{min(start.tokens, inputs_embeds.shape[1] - 1)}")
    body = llm.model
    cache = start.cache
    if start.tokens > shared:  # a negative count: "remove that many" in every transformers that has crop
        cache.crop(shared - start.tokens)
    t0 = time.perf_counter()
    out = body(inputs_embeds=inputs_embeds[:, shared:], **{_cache_keyword(body): cache, "use_cache": True})
    last = out.last_hidden_state[:, -1]
    if inputs_embeds.device.type == "cuda":
        torch.cuda.synchronize(inputs_embeds.device)
    return Prefill(cache, last, inputs_embeds.shape[1], time.perf_counter() - t0, reused=shared)


def shared_prefix(ids_a: torch.Tensor, embeds_a: torch.Tensor, ids_b: torch.Tensor, embeds_b: torch.Tensor) -> int:
    """How many leading positions two prompts (``1×T`` ids, ``1×T×D`` inputs) have in common: equal ids
    and equal input vectors (an image or region feature stands behind a placeholder id)."""
    n = min(ids_a.shape[1], ids_b.shape[1])
    differ = (ids_a[0, :n] != ids_b[0, :n]).nonzero()
    n = int(differ[0, 0]) if len(differ) else n
    differ = (embeds_a[0, :n] != embeds_b[0, :n]).any(-1).nonzero()
    return int(differ[0, 0]) if len(differ) else n


@torch.inference_mode()
def greedy_generate(llm, inputs_embeds: torch.Tensor, *, max_new_tokens: int, stop_ids: set[int],
                    on_token: Callable[[int], None] | None = None,
                    suppress_ids: tuple[int, ...] = (), prefilled: Prefill | None = None) -> GenerationOutput:
    """``inputs_embeds`` ``1×T×D`` → greedy continuation, stopping at any of ``stop_ids``.

    ``suppress_ids`` are never emitted (input-only placeholders such as ``<image>``); a stop token
    is not allowed as the first token (HF's ``min_new_tokens=1``): an empty answer tells a user nothing.
    ``prefilled``: the same prompt already run by ``prefill`` with the same weights and routing
    (question-level routing reads the question with the expert that then often answers it);
    decoding continues from its cache, and its time is reported as this answer's prefill.
    """
    body, head = llm.model, llm.lm_head
    device = inputs_embeds.device
    if prefilled is not None and prefilled.tokens != inputs_embeds.shape[1]:
        raise ValueError(f"prefilled prompt has {prefilled.tokens} tokens, this one {inputs_embeds.shape[1]}")
    start = prefilled or prefill(llm, inputs_embeds)
    kv = {_cache_keyword(body): start.cache, "use_cache": True}  # one cache for the whole answer
    logits = head(start.last_hidden)
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
    return GenerationOutput(tuple(tokens), h, inputs_embeds.shape[1], start.reused, start.seconds, t2 - t1)
