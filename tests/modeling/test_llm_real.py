"""SmolLM2-135M-Instruct from the pip-shipped GGUF (converted once into the user cache)."""

from __future__ import annotations

import pytest
import torch

from medplib_runtime.presets import IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, SPECIAL_TOKENS, MoEConfig

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def smollm2():
    from medplib_runtime.errors import ModelError
    from medplib_runtime.modeling.llm import load_smollm2

    try:
        return load_smollm2()
    except ModelError as err:  # the weights package is an optional install
        pytest.skip(str(err))


def _chat_ids(tokenizer, question: str) -> torch.Tensor:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt")
    return ids if isinstance(ids, torch.Tensor) else ids["input_ids"]


def _answer(model, tokenizer, question: str, n: int = 12) -> str:
    from medplib_runtime.modeling.generation import greedy_generate

    embeds = model.get_input_embeddings()(_chat_ids(tokenizer, question))
    out = greedy_generate(model, embeds, max_new_tokens=n, stop_ids={tokenizer.eos_token_id})
    assert out.hidden.shape == (len(out.token_ids), model.config.hidden_size)
    return tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_converted_model_is_dense_tied_and_answers(smollm2):
    model, tokenizer = smollm2
    emb = model.get_input_embeddings().weight
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # tied
    assert emb.dtype == torch.float32 and emb.shape == (49152, 576)
    # Q4_1 dequantised: a block of 32 weights takes at most 16 distinct values
    block = model.model.layers[0].mlp.up_proj.weight.reshape(-1)[:32]
    assert 2 < block.unique().numel() <= 16
    with torch.inference_mode():
        assert "Paris" in _answer(model, tokenizer, "What is the capital of France?")


def test_special_tokens_resize_and_moe_forced_expert_keeps_answer(smollm2):
    from medplib_runtime.modeling.llm import add_special_tokens
    from medplib_runtime.modeling.moe import force_expert, install_moe

    model, tokenizer = smollm2
    old = model.get_input_embeddings().weight.shape[0]
    tokens = SPECIAL_TOKENS + (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER)
    ids = add_special_tokens(model, tokenizer, tokens)
    assert len(set(ids.values())) == len(tokens) and min(ids.values()) >= old - 1
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tokenizer) >= old + len(tokens) - 1
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # still tied after the resize
    torch.testing.assert_close(emb[ids["<SEG>"]], emb[:old].mean(0))
    assert tokenizer.tokenize("a <SEG> b").count("<SEG>") == 1  # one token, never split
    install_moe(model, MoEConfig())
    force_expert(model, 1)  # zero LoRA, weight 1: exactly the base FFN
    with torch.inference_mode():
        assert "Paris" in _answer(model, tokenizer, "What is the capital of France?")
    force_expert(model, None)


def test_light_model_answers_bit_for_bit_as_transformers(smollm2):
    """The runtime's inference-only twin (llama_infer.py, light_tokenizer.py) on the real weights."""
    from medplib_runtime.conversation import build_prompt
    from medplib_runtime.modeling.generation import greedy_generate
    from medplib_runtime.modeling.llm import add_special_tokens, load_smollm2

    tokens = SPECIAL_TOKENS + (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER)
    (ref, ref_tok), (lite, lite_tok) = load_smollm2(), load_smollm2(light=True)
    assert add_special_tokens(ref, ref_tok, tokens) == add_special_tokens(lite, lite_tok, tokens)
    text = build_prompt("Segment the <SEG> lesion, then name it.", system="You are a helpful assistant.",
                        n_image_tokens=4, region=True)
    ids = ref_tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert torch.equal(ids, lite_tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        embeds = ref.get_input_embeddings()(ids)
        a = greedy_generate(ref, embeds, max_new_tokens=8, stop_ids={ref_tok.eos_token_id})
        b = greedy_generate(lite, embeds, max_new_tokens=8, stop_ids={lite_tok.eos_token_id})
    assert a.token_ids == b.token_ids and torch.equal(a.hidden, b.hidden)
    assert ref_tok.decode(list(a.token_ids)) == lite_tok.decode(list(b.token_ids))
