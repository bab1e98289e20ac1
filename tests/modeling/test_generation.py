"""Greedy generation: an answer never ends before its first token (HF's ``min_new_tokens=1``)."""

from __future__ import annotations

import torch

from medplib_runtime.modeling.generation import greedy_generate


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@torch.inference_mode()
def test_the_first_token_is_never_a_stop_token():
    llm = _tiny_llama()
    embeds = llm.get_input_embeddings()(torch.tensor([[1, 5, 9, 12]]))
    free = greedy_generate(llm, embeds, max_new_tokens=4, stop_ids=set())
    first = free.token_ids[0]
    # the token greedy decoding would start with is a stop token: the answer still gets a first token
    out = greedy_generate(llm, embeds, max_new_tokens=4, stop_ids={first})
    assert out.token_ids[0] != first and len(out.token_ids) >= 1
    later = [i for i, t in enumerate(out.token_ids) if t == first]
    assert later in ([], [len(out.token_ids) - 1])  # later on, the stop token still ends the answer


@torch.inference_mode()
def test_continuing_from_a_prefill_gives_the_same_answer_and_states():
    """Question-level routing hands its prefill's cache to the answer: nothing may change by it."""
    import pytest

    from medplib_runtime.modeling.generation import prefill

    llm = _tiny_llama()
    embeds = llm.get_input_embeddings()(torch.tensor([[1, 5, 9, 12, 3]]))
    fresh = greedy_generate(llm, embeds, max_new_tokens=6, stop_ids=set())
    read = prefill(llm, embeds)
    continued = greedy_generate(llm, embeds, max_new_tokens=6, stop_ids=set(), prefilled=read)
    assert continued.token_ids == fresh.token_ids and len(fresh.token_ids) == 6
    assert torch.allclose(continued.hidden, fresh.hidden, atol=1e-5)
    assert continued.prefill_s == read.seconds and continued.prefill_tokens == 5
    with pytest.raises(ValueError, match="prefilled prompt has 5 tokens, this one 4"):
        greedy_generate(llm, embeds[:, :4], max_new_tokens=2, stop_ids=set(), prefilled=prefill(llm, embeds))


@torch.inference_mode()
def test_a_prompt_read_on_from_another_prompts_shared_start_gives_the_full_prefills_answer():
    """A chat turn keeps its single-turn routing prefill's cache over the start both prompts share
    (system line, image) and reads only the rest: answer and states as if read whole."""
    import pytest

    from medplib_runtime.modeling.generation import extend_prefill, prefill, shared_prefix

    llm = _tiny_llama()
    embed = llm.get_input_embeddings()
    single_ids = torch.tensor([[1, 5, 9, 12, 3, 7]])  # shares 1, 5, 9 with the chat prompt below
    chat_ids = torch.tensor([[1, 5, 9, 40, 41, 42, 43, 12, 3, 7]])
    single, chat = embed(single_ids), embed(chat_ids)
    assert shared_prefix(single_ids, single, chat_ids, chat) == 3
    other = chat.clone()
    other[0, 1] += 1.0  # same id, another input vector (an image feature behind a placeholder)
    assert shared_prefix(single_ids, single, chat_ids, other) == 1
    fresh = greedy_generate(llm, chat, max_new_tokens=6, stop_ids=set())
    read_on = extend_prefill(llm, prefill(llm, single), chat, shared=3)
    assert read_on.reused == 3 and read_on.tokens == 10
    continued = greedy_generate(llm, chat, max_new_tokens=6, stop_ids=set(), prefilled=read_on)
    assert continued.token_ids == fresh.token_ids and len(fresh.token_ids) == 6
    assert torch.allclose(continued.hidden, fresh.hidden, atol=1e-5)
    assert continued.prefill_reused == 3 and continued.prefill_tokens == 10
    # a prompt that is the other's start plus more: the whole other prompt is kept
    longer = embed(torch.tensor([[1, 5, 9, 12, 3, 7, 8, 2]]))
    whole = greedy_generate(llm, longer, max_new_tokens=4, stop_ids=set(),
                            prefilled=extend_prefill(llm, prefill(llm, single), longer, shared=6))
    assert whole.token_ids == greedy_generate(llm, longer, max_new_tokens=4, stop_ids=set()).token_ids
    for bad in (0, 10, 7):  # nothing shared; nothing left to read; more than the first prompt holds
        with pytest.raises(ValueError, match="shared prefix"):
            extend_prefill(llm, prefill(llm, single), chat, shared=bad)
