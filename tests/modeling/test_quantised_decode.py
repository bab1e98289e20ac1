"""Weight-only quantised decoding (modeling/quantise.py): the quantised Linears against fp32 on a tiny
random LLaMA, the same greedy answers on the real model, and the ``--precision`` option's refusals.

Tolerances, and why: an int8 per-channel weight is off by at most scale/2 = max|w_row|/254 per
element; the kernel's bf16 output adds ≈ 2⁻⁹ relative. Relative to the largest output that is below
1 % on random Gaussian weights (measured 0.7–0.8 %): 2 % leaves room. int4 in groups of 32 is off by
range/30 per element, ≈ 8–12 % of the largest output on Gaussian weights; but on weights that *are* 4-bit
in groups of 32 (SmolLM2's: a GGUF Q4_1) it is exact up to the bf16 rounding of its scale and offset,
which the test builds and checks at 1 %.
"""

from __future__ import annotations

import pytest
import torch

from medplib_runtime.modeling.quantise import (DECODE_ROWS, Int4Linear, Int8Linear, quantise_llm, quantised_swaps,
                                               swapped_in)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("rows", [1, 3, DECODE_ROWS + 5])  # decode (the packed kernel) and prefill
def test_int8_linear_is_close_to_fp32(rows):
    torch.manual_seed(0)
    w, x = torch.randn(200, 96) * 0.02, torch.randn(2, rows, 96)
    q = Int8Linear(w)
    y = q(x)
    assert y.shape == (2, rows, 200) and y.dtype == torch.float32
    assert _rel(y, x @ w.t()) < 0.02
    assert _rel(y, x @ q.dequantised().t()) < 0.005  # the kernel multiplies by exactly its own weights


def test_int4_is_exact_on_weights_that_are_4_bit_in_groups():
    torch.manual_seed(0)
    n, k = 40, 64  # 40 rows: padded to 48 for the kernel, and cut back
    codes = torch.randint(0, 16, (n, k // 32, 32)).float()
    codes[..., 0], codes[..., 1] = 0, 15  # Q4_1 maps a block's minimum to 0 and its maximum to 15
    scale = torch.rand(n, k // 32, 1) * 0.01 + 1e-3
    low = -(7.5 + torch.rand(n, k // 32, 1)) * scale  # a block of a roughly centred weight row, as SmolLM2's
    w = (codes * scale + low).reshape(n, k)  # as a Q4_1 block dequantises (its scale and minimum)
    q = Int4Linear(w)
    x = torch.randn(5, k)
    assert q(x).shape == (5, n)
    assert _rel(q(x), x @ w.t()) < 0.01
    assert _rel(q.dequantised(), w) < 0.01


def test_quantise_a_tiny_llama_keeps_its_greedy_tokens_close():
    """On a random LLaMA (llama_infer, tied head, with MoE), int8 logits stay near fp32's, the MoE base and
    attention are swapped, the router and LoRA are not, the embedding stays fp32, and swaps undo."""
    from medplib_runtime.modeling.llama_infer import LlamaLM, LlamaSettings
    from medplib_runtime.modeling.moe import MoEFeedForward, install_moe
    from medplib_runtime.presets import MoEConfig

    torch.manual_seed(1)
    cfg = LlamaSettings(vocab_size=320, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=6, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                        rope_theta=10000.0, tie_word_embeddings=True)
    llm = LlamaLM(cfg)
    for p in llm.parameters():
        torch.nn.init.normal_(p, std=0.05)
    llm.tie_weights()
    install_moe(llm, MoEConfig(combine="unit"))
    llm.eval()
    ids = torch.randint(0, 320, (1, 12))
    with torch.inference_mode():
        ref = llm(ids)
        swaps = quantised_swaps(llm, "int8")
        assert len(swaps) == 2 * 7 + 1
        with swapped_in(swaps):
            got = llm(ids)
            step = llm(ids[:, :1])  # one row: the packed kernel
        assert isinstance(llm.lm_head, torch.nn.Linear)  # swapped back
        assert _rel(got, ref) < 0.05 and _rel(step, llm(ids[:, :1])) < 0.05
    report = quantise_llm(llm, "int8")
    assert report.linears == 15 and report.bytes_after < report.bytes_before / 3
    mlp = llm.model.layers[0].mlp
    assert isinstance(mlp, MoEFeedForward) and isinstance(mlp.base.gate_proj, Int8Linear)
    assert isinstance(mlp.router, torch.nn.Linear) and isinstance(llm.model.embed_tokens, torch.nn.Embedding)
    assert quantise_llm(llm, "int8").linears == 0  # idempotent
    with pytest.raises(ValueError, match="precision must be one of"):
        quantise_llm(llm, "int3")


@pytest.mark.parametrize("argv, message", [
    (["--precision", "int9"], "invalid choice: 'int9'"),
    (["--precision", "int8", "--remote", "http://127.0.0.1:9"], "--precision applies to the local runtime"),
])
def test_precision_option_refusals_are_one_line(capsys, argv, message):
    from medplib_runtime.cli.commands import main

    try:  # argparse refuses by SystemExit(2), the command by returning 2
        code = main(["ask", "sample_data/brain1_image.nrrd", "--slice", "3", *argv, "What is this?"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err


def test_runtime_refuses_bad_precision_in_one_line():
    from medplib_runtime.errors import InputError
    from medplib_runtime.local import LocalRuntime

    with pytest.raises(InputError, match="precision must be one of fp32, int8, int4"):
        LocalRuntime(precision="bf16")


QUESTIONS = ("What is the modality of this image?", "What is shown in this image?", "Which organ is shown?",
             "Is this an MRI image?", "Segment the lesion.", "What is in this region?")


@pytest.mark.weights
def test_quantised_answers_against_fp32_on_real_questions(local_runtime, brain1_paths):
    """The real model (the session's fp32 runtime) with its Linears swapped for the quantised ones, on six
    real questions on brain1's largest lesion slice. Neither precision reaches the 98 % bar (measured:
    int8 86 %, int4 91 % identical on the eval split; docs/benchmarks.md, "Quantised decode"), which is
    why fp32 stays the default; this guards what was measured: most answers identical (≥ 4 of 6), and a
    mask where fp32 gave one overlapping it (Dice ≥ 0.8: int8 measured 0.85 on this slice, mean 0.95)."""
    import numpy as np

    from medplib_runtime.imaging.io import read_volume
    from medplib_runtime.schemas import AskRequest, Box, Prompt, SliceRef

    image, label = (read_volume(p) for p in brain1_paths)
    key = local_runtime.set_image(image.array, spacing=image.spacing)
    lesion = label.array > 0
    z = int(lesion.sum((1, 2)).argmax())
    rows, cols = np.nonzero(lesion[z])
    box = Box(rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3)
    llm = local_runtime.asker().model.llm
    for precision in ("int8", "int4"):
        swaps, same = quantised_swaps(llm, precision), 0
        for q in QUESTIONS:
            req = AskRequest(image_key=key, slice=SliceRef(0, z), question=q, max_new_tokens=32,
                             region=Prompt(box=box) if "region" in q else None)
            fp32 = local_runtime.ask(req)
            with swapped_in(swaps):
                quant = local_runtime.ask(req)
            same += quant.text == fp32.text
            for a, b in zip(fp32.masks, quant.masks):
                a, b = a.astype(bool), b.astype(bool)
                assert 2 * (a & b).sum() / max(a.sum() + b.sum(), 1) >= 0.8, (precision, q)
        assert same >= 4, (precision, same)
