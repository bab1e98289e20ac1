"""MoE FFN and LoRA on tiny random LLaMAs (no weights, fast)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medplib_runtime.modeling.llm import build_random_llama
from medplib_runtime.modeling.lora import LoRALinear
from medplib_runtime.modeling.moe import MoEFeedForward, RoutingRecorder, force_expert, install_moe
from medplib_runtime.presets import EXPERT_NAMES, MoEConfig, tiny_7b_config

D, I = 16, 32


class TinyMLP(nn.Module):
    """LLaMA MLP layout: down(silu(gate(x)) * up(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def make_moe(seed: int = 0, *, trained_lora: bool = True, **cfg) -> MoEFeedForward:
    torch.manual_seed(seed)
    moe = MoEFeedForward(TinyMLP(), MoEConfig(**cfg)).eval()
    if trained_lora:  # non-zero B so experts differ from each other and from the base
        with torch.no_grad():
            for p in moe.parameters():
                if p.requires_grad and p.dim() == 2 and p.shape[1] == moe.cfg.lora_r:
                    p.normal_(0, 0.3)
    return moe


def set_router(moe: MoEFeedForward, choose: torch.Tensor, x: torch.Tensor) -> None:
    """Make the router pick ``choose[t]`` for token t: logits = ±sign(x[:, 0]) on a 1-D feature."""
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[1, 0] = 5.0
        x[:, 0] = torch.where(choose == 1, 1.0, -1.0)


def naive(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Per-token reference: loop over tokens, capacity by arrival order, prob × expert."""
    probs = torch.softmax(moe.router(x), -1)
    w, idx = probs.topk(moe.top_k, -1)
    cap = moe.capacity(x.shape[0])
    used = [0] * moe.cfg.num_experts
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for s in range(moe.top_k):
            e = int(idx[t, s])
            if used[e] < cap:
                used[e] += 1
                out[t] += w[t, s] * moe.expert(x[t:t + 1], e)[0]
    return out


def test_lora_linear_zero_init_merge_and_names():
    torch.manual_seed(0)
    base = nn.Linear(D, I, bias=True)
    lin = LoRALinear(base, r=4, alpha=8)
    x = torch.randn(5, D)
    assert torch.equal(lin(x), base(x))  # B = 0: a fresh adapter is a no-op
    with torch.no_grad():
        lin.lora_B.normal_()
    y = lin(x)
    assert not torch.allclose(y, base(x))
    expected = base(x) + x @ lin.lora_A.t() @ lin.lora_B.t() * (8 / 4)
    torch.testing.assert_close(y, expected)
    assert {n for n, p in lin.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    lin.merge()
    torch.testing.assert_close(lin(x), y, atol=1e-5, rtol=1e-5)


def test_routing_shapes_and_top1_is_argmax():
    moe = make_moe()
    x = torch.randn(2, 7, D)
    moe.trace = []
    y = moe(x)
    assert y.shape == x.shape
    (trace,) = moe.trace
    assert trace.experts.shape == (14, 1) and trace.probs.shape == (14, 2)
    torch.testing.assert_close(trace.probs.sum(-1), torch.ones(14))
    assert torch.equal(trace.experts[:, 0], trace.probs.argmax(-1))


@pytest.mark.parametrize("top_k", [1, 2])
def test_dispatch_equals_per_token_loop(top_k):
    moe = make_moe(top_k=top_k)
    x = torch.randn(23, D)
    for cf in (0.5, 1.0, 2.0):
        moe.capacity_factor = cf
        torch.testing.assert_close(moe(x), naive(moe, x), atol=1e-5, rtol=1e-5)


def test_capacity_drops_exactly_the_overflow():
    moe = make_moe()
    x = torch.randn(8, D)
    choose = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])  # 6 tokens to expert 0, 2 to expert 1
    set_router(moe, choose, x)
    moe.capacity_factor = 1.0  # capacity ceil(1.0·8/2) = 4 → last 2 of expert 0 dropped
    moe.trace = []
    y = moe(x)
    trace = moe.trace[-1]
    assert trace.dropped == 2
    assert trace.kept[:, 0].tolist() == [True] * 4 + [False, False] + [True, True]
    assert torch.all(y[4:6] == 0) and torch.all(y[:4].abs().sum(-1) > 0)
    moe.capacity_factor = 2.0  # capacity 8: nothing dropped
    y2 = moe(x)
    assert moe.trace[-1].dropped == 0
    torch.testing.assert_close(y2[[0, 1, 2, 3, 6, 7]], y[[0, 1, 2, 3, 6, 7]])


def test_balanced_routing_drops_nothing_at_cf1_and_eval_default_is_2():
    moe = make_moe()
    x = torch.randn(10, D)
    set_router(moe, torch.tensor([0, 1] * 5), x)
    moe.capacity_factor = 1.0
    moe.trace = []
    moe(x)
    assert moe.trace[-1].dropped == 0
    moe.capacity_factor = None
    assert moe.capacity(10) == math.ceil(2.0 * 10 / 2)
    moe.train()
    assert moe.capacity(10) == math.ceil(1.5 * 10 / 2)


def test_zero_lora_is_router_prob_times_base():
    moe = make_moe(trained_lora=False)
    x = torch.randn(9, D)
    probs = torch.softmax(moe.router(x), -1)
    expected = probs.max(-1).values.unsqueeze(-1) * moe.base(x)
    torch.testing.assert_close(moe(x), expected, atol=1e-6, rtol=1e-5)


def test_single_expert_fast_path_matches_the_reference():
    moe = make_moe()
    x = torch.randn(6, D)
    set_router(moe, torch.ones(6, dtype=torch.long), x)  # all to expert 1
    torch.testing.assert_close(moe(x), naive(moe, x), atol=1e-5, rtol=1e-5)
    one = x[:1]
    torch.testing.assert_close(moe(one), naive(moe, one), atol=1e-5, rtol=1e-5)


def test_force_expert_and_routing_stats():
    llm = build_random_llama(tiny_7b_config())
    moes = install_moe(llm, MoEConfig())
    assert len(moes) == llm.config.num_hidden_layers
    assert all(isinstance(layer.mlp, MoEFeedForward) for layer in llm.model.layers)
    assert install_moe(llm, MoEConfig()) == moes  # idempotent
    ids = torch.randint(0, llm.config.vocab_size, (1, 11))
    recorder = RoutingRecorder(llm)
    with torch.no_grad(), recorder.record():
        llm(input_ids=ids)
        llm(input_ids=ids[:, :1])
    stats = recorder.stats(["t"] * 12, EXPERT_NAMES)
    assert len(stats.per_token) == 12 and stats.expert_names == EXPERT_NAMES
    for row in stats.per_token:
        assert sum(row) == pytest.approx(1.0)
        assert all(v * len(moes) == pytest.approx(round(v * len(moes))) for v in row)  # fractions of layers
    assert recorder.choices().shape == (len(moes), 12)
    assert all(m.trace is None for m in moes)  # recording stops with the context

    force_expert(llm, 0)
    with torch.no_grad(), recorder.record():
        llm(input_ids=ids)
    assert all(row == (1.0, 0.0) for row in recorder.stats([], EXPERT_NAMES).per_token)
    force_expert(llm, None)
    with pytest.raises(ValueError):
        force_expert(llm, 2)


def test_forced_expert_with_zero_lora_equals_base_model():
    llm = build_random_llama(tiny_7b_config())
    ids = torch.randint(0, llm.config.vocab_size, (1, 9))
    with torch.no_grad():
        before = llm(input_ids=ids).logits
        install_moe(llm, MoEConfig())
        force_expert(llm, 1)
        after = llm(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_moe_trains_lora_and_router_only():
    llm = build_random_llama(tiny_7b_config())
    install_moe(llm, MoEConfig())
    llm.train()
    for name, p in llm.named_parameters():
        p.requires_grad_(".experts." in name or ".router." in name)
    ids = torch.randint(0, llm.config.vocab_size, (2, 6))
    llm(input_ids=ids, labels=ids).loss.backward()
    grads = {n for n, p in llm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("router" in n for n in grads) and any("lora_B" in n for n in grads)
    assert all(".experts." in n or ".router." in n for n in grads)


@pytest.mark.parametrize("top_k", [1, 2])
def test_unit_combine_keeps_full_strength_and_trains_the_router(top_k):
    """medplib-lite's combine: the chosen experts' weights sum to 1 (top-1: exactly the expert's
    output, no halving by an untrained router), yet the router gets a gradient."""
    moe = make_moe(combine="unit", top_k=top_k, capacity_factor_eval=4.0)
    x = torch.randn(12, D)
    probs = torch.softmax(moe.router(x), -1)
    w, idx = probs.topk(top_k, -1)
    w = w / w.sum(-1, keepdim=True)
    expected = torch.stack([sum(w[t, s] * moe.expert(x[t:t + 1], int(idx[t, s]))[0] for s in range(top_k))
                            for t in range(12)])
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)
    if top_k == 1:
        torch.testing.assert_close(moe(x), torch.stack([moe.expert(x[t:t + 1], int(idx[t, 0]))[0]
                                                        for t in range(12)]), atol=1e-5, rtol=1e-5)
    moe.train()
    moe.capacity_factor = 4.0
    moe(x).pow(2).sum().backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_presets_combine():
    from medplib_runtime.presets import MEDPLIB_7B, MEDPLIB_LITE

    assert MEDPLIB_7B.moe.combine == "probability" and MEDPLIB_LITE.moe.combine == "unit"


@pytest.mark.parametrize("choose", [[1], [0], [1, 1, 1, 1], [0, 1, 1, 0, 1]])
@pytest.mark.parametrize("combine", ["probability", "unit"])
def test_the_gpus_sync_free_path_computes_what_the_cpu_shortcut_does(choose, combine):
    """A GPU takes the shared-base path for every top-1 step (no int()/.all() read back per layer); forced here
    on the CPU, it gives the shortcut's output: a decode step (one token) and same-expert or mixed batches."""
    moe = make_moe(3, combine=combine)
    x = torch.randn(len(choose), 16)
    set_router(moe, torch.tensor(choose), x)
    with torch.no_grad():
        shortcut = moe(x)
        moe.sync_free = True
        sync_free = moe(x)
    torch.testing.assert_close(sync_free, shortcut, rtol=1e-5, atol=1e-6)
    if combine == "probability":  # the per-token reference scales by the probability
        torch.testing.assert_close(sync_free, naive(moe, x), rtol=1e-5, atol=1e-6)
