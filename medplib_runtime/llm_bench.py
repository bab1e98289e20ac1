"""LLM rows of ``medplib bench``: load time, prefill and decode throughput, MoE vs dense.

Dense = the LLM with its plain FFN (one expert's worth of work); MoE = the same model with
the 2-expert top-1 FFN installed on every layer. Both measured in this process, same prompt.
"""

from __future__ import annotations

import statistics
import time

import torch

from .bench import Row, row_ms
from .modeling.generation import greedy_generate

PROMPT_TOKENS = 200  # ≈ system + 64 image tokens + a question
NEW_TOKENS = 32


def _measure(llm, embeds, repeats: int) -> tuple[list[float], list[float]]:
    greedy_generate(llm, embeds, max_new_tokens=4, stop_ids=set())  # warm-up
    prefill, step = [], []
    for _ in range(repeats):
        out = greedy_generate(llm, embeds, max_new_tokens=NEW_TOKENS, stop_ids=set())
        prefill.append(out.prefill_s * 1e3)
        step.append(out.decode_s * 1e3 / len(out.token_ids))
    return prefill, step


def llm_rows(*, repeats: int) -> list[Row]:
    from .modeling.llm import load_smollm2
    from .modeling.moe import install_moe
    from .presets import MEDPLIB_LITE

    t0 = time.perf_counter()
    llm, _ = load_smollm2()
    load_ms = (time.perf_counter() - t0) * 1e3
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (1, PROMPT_TOKENS))
    with torch.inference_mode():
        embeds = llm.get_input_embeddings()(ids)
    dense_prefill, dense_step = _measure(llm, embeds, repeats)
    moes = install_moe(llm, MEDPLIB_LITE.moe)
    llm.eval()
    for moe in moes:
        merge = getattr(moe, "merge_for_inference", None)
        if merge is not None:
            merge()
    moe_prefill, moe_step = _measure(llm, embeds, repeats)
    d_step, m_step = statistics.median(dense_step), statistics.median(moe_step)
    d_pre, m_pre = statistics.median(dense_prefill), statistics.median(moe_prefill)
    tok_s = [1e3 / s for s in moe_step]
    return [
        Row("LLM load (cached HF folder)", "ms", load_ms, float("nan"), 1),
        row_ms(f"LLM prefill {PROMPT_TOKENS} tokens (MoE)", moe_prefill,
               f"{PROMPT_TOKENS / (m_pre / 1e3):.0f} tok/s"),
        Row("LLM decode (MoE, greedy, KV cache)", "tok/s", statistics.median(tok_s),
            sorted(tok_s)[max(0, int(len(tok_s) * 0.1) - 1)], len(tok_s), "p90 column = 10th percentile (slow end)"),
        row_ms("decode step, dense FFN", dense_step),
        row_ms("decode step, MoE top-1", moe_step, f"MoE/dense = {m_step / d_step:.3f}"),
        Row("prefill MoE/dense ratio", "x", m_pre / d_pre, float("nan"), len(moe_prefill)),
    ]
