"""A CPU stand-in for ``deepspeed.moe.layer.MoE`` (DeepSpeed v0.13.1, the version MedPLIB pins).

DeepSpeed does not build on this CPU-only host, so ``build_fixture.py`` installs this module as
``deepspeed.moe.layer`` before importing MedPLIB's code. It reproduces, for one process (ep_size 1):

* the parameter names: ``deepspeed_moe.gate.wg.weight`` (Linear d→E, no bias, fp32) and
  ``deepspeed_moe.experts.deepspeed_experts.{e}.*`` (deep copies of the expert module);
* ``top1gating`` from deepspeed/moe/sharded_moe.py at v0.13.1, line for line, minus Tutel and the
  all-reduce of ``drop_tokens=False`` (unused here): softmax in fp32, argmax, capacity
  ``ceil(S / E * capacity_factor)`` floored at ``min_capacity``, random token selection (RTS)
  when an expert is over capacity, ``combine_weights`` = gate probability at the token's slot;
* ``MOELayer.forward``'s dispatch (``sec,sm->ecm``), the experts on their chunks, and the
  combine (``sec,ecm->sm``); the all-to-alls are identities with one rank.
``MoE.forward`` returns ``(output, l_aux, exp_counts)`` as DeepSpeed does. ``last_choices`` (ours,
for the fixture) keeps each forward's top-1 expert per token.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def _capacity(num_tokens: int, num_experts: int, capacity_factor: float, min_capacity: int) -> int:
    capacity = math.ceil((num_tokens / num_experts) * capacity_factor)
    return max(capacity, min_capacity)


def top1gating(logits, capacity_factor, min_capacity, used_token=None, use_rts=True):
    gates = F.softmax(logits, dim=1)
    capacity = _capacity(gates.shape[0], gates.shape[1], capacity_factor, min_capacity)
    indices1_s = torch.argmax(gates, dim=1)
    num_experts = int(gates.shape[1])
    mask1 = F.one_hot(indices1_s, num_classes=num_experts)
    if used_token is not None:
        mask1 = used_token.reshape(used_token.shape[0], -1) * mask1
    exp_counts = torch.sum(mask1, dim=0).detach().to("cpu")
    me = torch.mean(gates, dim=0)
    ce = torch.mean(mask1.float(), dim=0)
    l_aux = torch.sum(me * ce) * num_experts
    if use_rts:
        uniform = torch.distributions.uniform.Uniform(low=torch.tensor(0.0), high=torch.tensor(1.0)).rsample
        mask1_rand = mask1 * uniform(mask1.shape)
    else:
        mask1_rand = mask1
    assert logits.shape[0] >= min_capacity, "No. of tokens (batch-size) should be greater than min_capacity."
    top_idx = torch.topk(mask1_rand, k=capacity, dim=0)[1]
    mask1 = mask1 * torch.zeros_like(mask1).scatter_(0, top_idx, 1)
    locations1 = torch.cumsum(mask1, dim=0) - 1
    locations1_s = torch.sum(locations1 * mask1, dim=1)
    gates = gates * mask1.float()
    locations1_sc = F.one_hot(locations1_s, num_classes=capacity).float()
    combine_weights = gates.unsqueeze(2) * locations1_sc.unsqueeze(1)  # einsum("se,sc->sec")
    dispatch_mask = combine_weights.bool()
    return l_aux, combine_weights, dispatch_mask, exp_counts, indices1_s


class TopKGate(nn.Module):
    def __init__(self, model_dim, num_experts, k=1, capacity_factor=1.0, eval_capacity_factor=1.0,
                 min_capacity=8, noisy_gate_policy=None, drop_tokens=True, use_rts=True):
        super().__init__()
        if k != 1:
            raise ValueError("this shim reproduces DeepSpeed's top-1 gate only (MedPLIB: --top_k_experts 1)")
        self.wg = nn.Linear(model_dim, num_experts, bias=False).float()
        self.k = k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.use_rts = use_rts

    def forward(self, input, used_token=None):
        logits = self.wg(input.float())
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        return top1gating(logits, cf, self.min_capacity, used_token, self.use_rts)


class Experts(nn.Module):
    def __init__(self, expert, num_local_experts=1):
        super().__init__()
        self.deepspeed_experts = nn.ModuleList([copy.deepcopy(expert) for _ in range(num_local_experts)])
        self.num_local_experts = num_local_experts

    def forward(self, inputs):
        chunks = inputs.chunk(self.num_local_experts, dim=1)
        outs = []
        for chunk, expert in zip(chunks, self.deepspeed_experts):
            out = expert(chunk)
            outs.append(out[0] if isinstance(out, tuple) else out)
        return torch.cat(outs, dim=1)


class MOELayer(nn.Module):
    def __init__(self, gate, experts, num_local_experts):
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.num_local_experts = num_local_experts
        self.ep_size = 1

    def forward(self, *input):
        d_model = input[0].shape[-1]
        reshaped = input[0].reshape(-1, d_model)
        self.l_aux, combine_weights, dispatch_mask, self.exp_counts, choice = self.gate(reshaped, input[1])
        self.last_choices.append(choice.detach().clone())
        s, e, c = dispatch_mask.shape
        dispatched = torch.matmul(dispatch_mask.type_as(input[0]).reshape(s, -1).t(), reshaped).reshape(e, c, d_model)
        dispatched = dispatched.reshape(self.ep_size, self.num_local_experts, -1, d_model)
        expert_output = self.experts(dispatched)
        expert_output = expert_output.reshape(self.ep_size * self.num_local_experts, -1, d_model)
        combined = torch.matmul(combine_weights.type_as(input[0]).reshape(s, -1),
                                expert_output.reshape(-1, d_model))  # einsum("sec,ecm->sm")
        return combined.reshape(input[0].shape)


class MoE(nn.Module):
    def __init__(self, hidden_size, expert, num_experts=1, ep_size=1, k=1, capacity_factor=1.0,
                 eval_capacity_factor=1.0, min_capacity=4, use_residual=False, noisy_gate_policy=None,
                 drop_tokens=True, use_rts=True, use_tutel=False, enable_expert_tensor_parallelism=False):
        super().__init__()
        if ep_size != 1 or use_residual:
            raise ValueError("this shim covers ep_size=1 without residual MoE (MedPLIB's settings)")
        self.num_experts = num_experts
        experts = Experts(expert, num_experts)
        gate = TopKGate(hidden_size, num_experts, k, capacity_factor, eval_capacity_factor, min_capacity,
                        noisy_gate_policy, drop_tokens, use_rts)
        self.deepspeed_moe = MOELayer(gate, experts, num_experts)
        self.deepspeed_moe.last_choices = []

    def forward(self, hidden_states, used_token=None):
        output = self.deepspeed_moe(hidden_states, used_token)
        return output, self.deepspeed_moe.l_aux, self.deepspeed_moe.exp_counts
