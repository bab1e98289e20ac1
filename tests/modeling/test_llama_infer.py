"""The inference-only LLaMA (llama_infer.py) and tokenizer (light_tokenizer.py) against transformers':
bit-identical outputs on a small random model (prefill, a prompt read on after a cache, decoding), the
same token ids and text, and a load that imports neither transformers nor torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medplib_runtime.modeling.generation import extend_prefill, greedy_generate, prefill
from medplib_runtime.modeling.llm import add_special_tokens, column_major_linears
from medplib_runtime.presets import IMAGE_PLACEHOLDER, REGION_PLACEHOLDER, SPECIAL_TOKENS

TOKENS = SPECIAL_TOKENS + (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random transformers LLaMA (grouped-query attention, as SmolLM2) and a word-level tokenizer,
    saved as the runtime's cache folder is."""
    from medplib_runtime.modeling.medplib import _tiny_tokenizer

    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    tokenizer = _tiny_tokenizer()
    torch.manual_seed(3)  # tied like SmolLM2's, and as many rows as words: adding the tokens resizes it
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=512)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _pair(folder):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from medplib_runtime.modeling.light_tokenizer import LightTokenizer
    from medplib_runtime.modeling.llama_infer import load_llama

    ref = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    lite = load_llama(folder)
    ref_tok, lite_tok = AutoTokenizer.from_pretrained(folder), LightTokenizer(folder)
    for model, tok in ((ref, ref_tok), (lite, lite_tok)):  # as build_medplib prepares the runtime's LLM
        column_major_linears(model)
        add_special_tokens(model, tok, TOKENS)
        column_major_linears(model)
    return (ref, ref_tok), (lite, lite_tok)


def test_same_weights_layout_and_token_ids(saved):
    (ref, ref_tok), (lite, lite_tok) = _pair(saved)
    ours = dict(lite.named_parameters(remove_duplicate=False))
    for name, p in ref.named_parameters(remove_duplicate=False):
        assert torch.equal(p, ours[name]) and p.stride() == ours[name].stride(), name
    assert lite.lm_head.weight is lite.get_input_embeddings().weight  # tied, as transformers ties them
    assert len(lite_tok) == len(ref_tok) and lite_tok.eos_token_id == ref_tok.eos_token_id
    for text in ("what is the lesion <SEG> here ?", "USER : <im_start><image><image><im_end>\nsegment it",
                 "the <region> is a tumour </s>", "unknown words here"):
        a = ref_tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        b = lite_tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        assert torch.equal(a, b), text
        assert ref_tok.decode(a[0].tolist(), skip_special_tokens=False) == lite_tok.decode(a[0].tolist())
    assert [lite_tok.convert_tokens_to_ids(t) for t in TOKENS] == [ref_tok.convert_tokens_to_ids(t) for t in TOKENS]


@torch.inference_mode()
def test_prefill_read_on_and_decode_are_bit_identical(saved):
    (ref, _), (lite, _) = _pair(saved)
    torch.manual_seed(0)
    vocab = ref.config.vocab_size
    ids = torch.randint(0, vocab, (1, 40))
    embeds = ref.get_input_embeddings()(ids)
    a, b = prefill(ref, embeds), prefill(lite, embeds)
    assert torch.equal(a.last_hidden, b.last_hidden)
    # a chat prompt read on from the first 25 positions of that cache (SDPA with an explicit mask)
    longer = torch.cat([embeds[:, :25], ref.get_input_embeddings()(torch.randint(0, vocab, (1, 30)))], 1)
    a, b = extend_prefill(ref, a, longer, shared=25), extend_prefill(lite, b, longer, shared=25)
    assert torch.equal(a.last_hidden, b.last_hidden)
    out_a = greedy_generate(ref, longer, max_new_tokens=12, stop_ids=set(), prefilled=a)
    out_b = greedy_generate(lite, longer, max_new_tokens=12, stop_ids=set(), prefilled=b)
    assert out_a.token_ids == out_b.token_ids and torch.equal(out_a.hidden, out_b.hidden)


def test_light_load_imports_neither_transformers_nor_dynamo(saved):
    code = (
        "import sys\n"
        "from medplib_runtime.modeling.llama_infer import load_llama\n"
        "from medplib_runtime.modeling.light_tokenizer import LightTokenizer\n"
        "from medplib_runtime.modeling.generation import greedy_generate\n"
        f"m, t = load_llama({str(saved)!r}), LightTokenizer({str(saved)!r})\n"
        "ids = t('the lesion is', return_tensors='pt', add_special_tokens=False)['input_ids']\n"
        "greedy_generate(m, m.get_input_embeddings()(ids), max_new_tokens=3, stop_ids=set())\n"
        "heavy = [n for n in ('transformers', 'torch._dynamo', 'sympy', 'scipy') if n in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "heavy: []", out.stdout
