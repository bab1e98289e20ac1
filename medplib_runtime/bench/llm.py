"""LLM rows of ``medplib bench``: ask latency, prefill and decode throughput, MoE vs dense.

Uses the runtime's own model (no second copy). Dense = the same layers with one expert
forced (base MLP + one LoRA, no router): the single-expert step the routed MoE (the glue's top-k) is compared to.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from ..modeling.generation import greedy_generate
from ..modeling.moe import force_expert, moe_layers
from .table import Row, row_ms, skipped

PROMPT_TOKENS = 200  # ≈ system + 64 image tokens + a question
NEW_TOKENS = 32


def _interleaved(llm, embeds, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """MoE and dense runs alternate, so drift on a shared machine hits both alike."""
    runs: dict[str, tuple[list[float], list[float]]] = {"moe": ([], []), "dense": ([], [])}
    for i in range(repeats * 2 + 2):
        kind = "moe" if i % 2 == 0 else "dense"
        force_expert(llm, None if kind == "moe" else 1)
        out = greedy_generate(llm, embeds, max_new_tokens=NEW_TOKENS, stop_ids=set())
        if i >= 2:  # the first pair warms up
            runs[kind][0].append(out.prefill_s * 1e3)
            runs[kind][1].append(out.decode_s * 1e3 / len(out.token_ids))
    return runs


def _top_k(llm) -> int:
    return moe_layers(llm)[0].top_k


def llm_rows(runtime, key: str, slice_ref, *, repeats: int) -> list[Row]:
    from ..devices import compute_precision
    from ..schemas import AskRequest, Turn

    t0 = time.perf_counter()
    # the answering LLM's modules, reported apart from the model build (no transformers: llama_infer.py)
    import tokenizers  # noqa: F401

    from ..modeling import light_tokenizer, llama_infer  # noqa: F401

    import_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    asker = runtime.asker()
    load_ms = (time.perf_counter() - t0) * 1e3
    req = AskRequest(image_key=key, slice=slice_ref, question="What is shown in this image?", max_new_tokens=16)
    runtime.ask(req)  # warm-up (first touch of the weights is slow)
    asks = [runtime.ask(req).timings_ms["total"] for _ in range(max(3, repeats // 2))]
    # reading the prompt (one new token): alone, and as a chat turn after one earlier turn — as this glue
    # answers it (a glue trained on single questions does not read the earlier turns), and read: routed
    # on its own question first, then read on from that prefill's shared start (system line, image), or,
    # for the ratio, the chat prompt read whole after the routing prefill
    first = replace(req, max_new_tokens=1)
    chat = replace(first, history=(Turn("Is this an MRI image?", "yes"),))
    first_asks, chat_asks, read_on_asks, whole_asks = [], [], [], []
    shipped = asker.routing  # a frozen RoutingConfig: the variants below are copies, the shipped one is put back
    try:
        for _ in range(max(3, repeats // 2)):  # interleaved: a slow moment of the host hits all four
            first_asks.append(runtime.ask(first).timings_ms["total"])
            chat_asks.append(runtime.ask(chat).timings_ms["total"])
            if not shipped.per_question:
                continue  # per-token routing (medplib-7b): no routing prefill, the two variants are the row above
            asker.routing = replace(shipped, reads_history=True)
            read_on_asks.append(runtime.ask(chat).timings_ms["total"])
            asker.reuse_routing_prefix = False
            whole_asks.append(runtime.ask(chat).timings_ms["total"])
            asker.reuse_routing_prefix, asker.routing = True, shipped
    finally:
        asker.reuse_routing_prefix, asker.routing = True, shipped

    llm = asker.model.llm
    with torch.inference_mode():
        embeds = llm.get_input_embeddings()(_prompt_ids(llm).to(asker.device))
    layers = moe_layers(llm)
    glue_routing = [m.forced_expert for m in layers]  # restored after: the runtime answers on with it
    choose_ms: list[float] = []
    try:
        with compute_precision(asker.device):  # as ask runs it
            runs = _interleaved(llm, embeds, repeats)
            if asker.routing.per_question:
                choose_ms = _question_routing_ms(llm, embeds, repeats)
    finally:
        for m, forced in zip(layers, glue_routing):
            m.forced_expert = forced
    (moe_prefill, moe_step), (dense_prefill, dense_step) = runs["moe"], runs["dense"]
    d_step, m_step = statistics.median(dense_step), statistics.median(moe_step)
    d_pre, m_pre = statistics.median(dense_prefill), statistics.median(moe_prefill)
    tok_s = sorted(1e3 / s for s in moe_step)
    return _load_rows(runtime.released is not None, import_ms, load_ms) + [
        row_ms("ask, 16 new tokens (cached slice)", asks),
        row_ms("ask, 1 new token (the prompt read)", first_asks),
        row_ms("the same after one earlier turn", chat_asks,
               f"{statistics.median(chat_asks) / statistics.median(first_asks):.2f} x alone (earlier turns "
               f"{'read' if shipped.reads_history else 'not read: a single-question glue'})"),
        *_read_on_rows(first_asks, read_on_asks, whole_asks),
        row_ms(f"LLM prefill {PROMPT_TOKENS} tokens (MoE)", moe_prefill, f"{PROMPT_TOKENS / (m_pre / 1e3):.0f} tok/s"),
        Row("LLM decode (MoE, greedy, KV cache)", "tok/s", statistics.median(tok_s), tok_s[0], len(tok_s),
            "p90 column = slowest run"),
        row_ms("decode step, dense (1 expert forced)", dense_step),
        row_ms(f"decode step, MoE top-{_top_k(llm)} routed", moe_step, f"MoE/dense = {m_step / d_step:.3f}"),
        Row("prefill MoE/dense ratio", "x", m_pre / d_pre, float("nan"), len(moe_prefill)),
    ] + ([row_ms(f"question routing: 2nd prefill {PROMPT_TOKENS} tokens", choose_ms,
                 "grounding questions only (VQA answers continue the routing prefill's cache); "
                 "one expert per question: the decode step is the dense one")]
         if choose_ms else [])


def _prompt_ids(llm) -> torch.Tensor:
    """``PROMPT_TOKENS`` random ids inside the vocabulary (the test checkpoint's has a few hundred)."""
    vocab = llm.get_input_embeddings().num_embeddings
    torch.manual_seed(0)
    return torch.randint(min(100, vocab // 3), min(40000, vocab), (1, PROMPT_TOKENS))


def _load_rows(released: bool, import_ms: float, load_ms: float) -> list[Row]:
    if released:  # nothing left to time: the checkpoint's one load (the table's first row) built the LLM
        why = "medplib-7b's LLM is built in the checkpoint load (first row)"
        return [skipped("import the LLM modules", why), skipped("MedPLIB LLM + glue load", why)]
    return [Row("import the LLM modules (cold; transformers not needed)", "ms", import_ms, float("nan"), 1),
            Row("MedPLIB LLM + glue load (cached folder)", "ms", load_ms, float("nan"), 1)]


def _read_on_rows(first_asks: list[float], read_on_asks: list[float], whole_asks: list[float]) -> list[Row]:
    if not read_on_asks:
        why = "per-token routing: no routing prefill to read on from"
        return [skipped("  ... earlier turn read (routing prefill reused)", why),
                skipped("  ... earlier turn read, prompt read whole", why)]
    return [row_ms("  ... earlier turn read (routing prefill reused)", read_on_asks,
                   f"{statistics.median(read_on_asks) / statistics.median(first_asks):.2f} x alone"),
            row_ms("  ... earlier turn read, prompt read whole", whole_asks,
                   f"{statistics.median(whole_asks) / statistics.median(read_on_asks):.2f} x reusing the routing "
                   "prefill")]


def _question_routing_ms(llm, embeds, repeats: int) -> list[float]:
    from ..modeling.generation import prefill
    from ..modeling.question_routing import choose_expert

    positions = torch.arange(embeds.shape[1] - 20, embeds.shape[1], device=embeds.device)  # a question's worth
    read = lambda: prefill(llm, embeds)  # noqa: E731 — the routing prefill, as the asker runs it
    choose_expert(llm, read, positions)  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        choose_expert(llm, read, positions)  # the routing prefill; ends in a .item(): timed to completion on a GPU too
        out.append((time.perf_counter() - t) * 1e3)
    return out


def precision_rows(runtime, key: str, slice_ref, *, repeats: int) -> list[Row]:
    """Decode speed and ``ask`` latency per LLM precision (fp32, int8, int4), interleaved on the runtime's own
    model: each quantised set of Linears is swapped in around its runs (modeling/quantise.swapped_in), so
    the ratios come from one process on one host. Run it after the peak-RSS row: the quantised copies
    (≈ 0.2 GB) sit beside the fp32 weights while it runs."""
    from ..devices import compute_precision
    from ..modeling.quantise import quantised_bytes, quantised_swaps, swapped_in
    from ..schemas import AskRequest

    asker = runtime.asker()
    if asker.device.type != "cpu" or runtime.precision != "fp32":
        return []  # the kernels are CPU-only; a runtime already quantised has no fp32 weights to compare
    llm = asker.model.llm
    swaps = {p: quantised_swaps(llm, p) for p in ("fp32", "int8", "int4")}
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (1, PROMPT_TOKENS))
    with torch.inference_mode():
        embeds = llm.get_input_embeddings()(ids)
    req = AskRequest(image_key=key, slice=slice_ref, question="What is shown in this image?", max_new_tokens=16)
    step: dict[str, list[float]] = {p: [] for p in swaps}
    prefill: dict[str, list[float]] = {p: [] for p in swaps}
    asks: dict[str, list[float]] = {p: [] for p in swaps}
    answers: dict[str, str] = {}
    for i in range(repeats * 2 + 1):  # interleaved: a slow moment of the host hits every precision
        for p, swap in swaps.items():
            with swapped_in(swap), compute_precision(asker.device):
                out = greedy_generate(llm, embeds, max_new_tokens=NEW_TOKENS, stop_ids=set())
                result = runtime.ask(req)
            if i:  # the first round warms up
                step[p].append(out.decode_s * 1e3 / len(out.token_ids))
                prefill[p].append(out.prefill_s * 1e3)
                asks[p].append(result.timings_ms["total"])
            answers[p] = result.text
    fp32_step = statistics.median(step["fp32"])
    rows = []
    for p, swap in swaps.items():
        tok_s = sorted(1e3 / s for s in step[p])
        mb = quantised_bytes(swap) / 2**20
        note = "p90 column = slowest run" if p == "fp32" else \
            f"{mb:.0f} MB of quantised Linears; same answer as fp32: {answers[p] == answers['fp32']}"
        rows.append(Row(f"LLM decode, {p} weights", "tok/s", statistics.median(tok_s), tok_s[0], len(tok_s), note))
    for p in ("int8", "int4"):
        rows.append(Row(f"decode speed-up vs fp32, {p}", "x", fp32_step / statistics.median(step[p]),
                        float("nan"), len(step[p]), "ratio of median decode steps, same run"))
    for p in swaps:
        rows.append(row_ms(f"ask, 16 new tokens, {p}", asks[p]))
        rows.append(row_ms(f"LLM prefill {PROMPT_TOKENS} tokens, {p}", prefill[p]))
    return rows
