"""SmolLM2 (a LLaMA) for answering, without importing transformers.

Why: importing transformers' LLaMA modules takes 5–8 s here (they pull in torch.distributed.tensor,
dynamo, sympy, scipy.optimize, accelerate), most of a cold ``medplib ask``; answering needs ~150
lines of it. This mirrors transformers 5's ``LlamaForCausalLM`` with SDPA attention in eval mode,
op for op and layout for layout (so its outputs are bit-identical: tests/modeling/test_llama_infer.py), with
the same module and parameter names, so the weights, the MoE swap (moe.py), column_major_linears and
the glue apply unchanged. Training keeps transformers' model (padding masks, gradient checkpointing,
FSDP); only ``load_smollm2(light=True)`` (the runtime's Asker) builds this one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError


@dataclass
class LlamaSettings:
    """The config.json fields this model reads (``llm.config`` for the code that asks)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    pad_token_id: int | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> "LlamaSettings":
        raw = json.loads((Path(folder) / "config.json").read_text())
        rope = raw.get("rope_parameters") or {"rope_theta": raw.get("rope_theta", 10000.0), "rope_type": "default"}
        unsupported = {k: raw.get(k) for k in ("attention_bias", "mlp_bias") if raw.get(k)}
        if raw.get("model_type") != "llama" or raw.get("hidden_act", "silu") != "silu" \
                or rope.get("rope_type", "default") != "default" or unsupported:
            raise ModelError(f"{folder}: not a plain LLaMA this runtime can run (delete it to convert again)")
        heads = raw["num_attention_heads"]
        return cls(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                   intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
                   num_attention_heads=heads, num_key_value_heads=raw.get("num_key_value_heads", heads),
                   head_dim=raw.get("head_dim") or raw["hidden_size"] // heads, rms_norm_eps=raw["rms_norm_eps"],
                   rope_theta=float(rope["rope_theta"]), tie_word_embeddings=raw.get("tie_word_embeddings", False),
                   pad_token_id=raw.get("pad_token_id"))


class KVCache:
    """transformers' ``DynamicCache`` as used here: per layer, keys/values concatenated along the sequence."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, k: torch.Tensor, v: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.keys):  # first use: an empty start, as DynamicLayer's (the same cat, the same layout)
            self.keys.append(torch.tensor([], dtype=k.dtype, device=k.device))
            self.values.append(torch.tensor([], dtype=v.dtype, device=v.device))
        self.keys[layer] = torch.cat([self.keys[layer], k], dim=-2)
        self.values[layer] = torch.cat([self.values[layer], v], dim=-2)
        return self.keys[layer], self.values[layer]

    def get_seq_length(self) -> int:
        return self.keys[0].shape[-2] if self.keys else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (a negative count, as ``DynamicCache.crop`` takes)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count: how many positions to remove")
        if tokens_to_remove:
            self.keys = [k[..., :tokens_to_remove, :] for k in self.keys]
            self.values = [v[..., :tokens_to_remove, :] for v in self.values]


@dataclass
class BodyOutput:
    last_hidden_state: torch.Tensor
    cache: KVCache | None


class _Linear(nn.Linear):
    """No random init (``torch.empty`` only): the saved weights replace it (load_llama)."""

    def reset_parameters(self) -> None:
        pass


class _Embedding(nn.Embedding):
    def reset_parameters(self) -> None:  # as _Linear
        pass


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # torch's own op: the same values (tested), 1/3 less time
            return torch.rms_norm(x, (x.shape[-1],), self.weight, self.variance_epsilon)
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: LlamaSettings) -> None:
        super().__init__()
        dim = cfg.head_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype=x.dtype), emb.sin().to(dtype=x.dtype)  # (transformers' × 1.0 scaling: exact)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    b, heads, t, d = x.shape
    return x[:, :, None, :, :].expand(b, heads, n, t, d).reshape(b, heads * n, t, d)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaSettings, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = cfg.head_dim
        self.num_key_value_groups = cfg.num_attention_heads // cfg.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        d, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = _Linear(d, q, bias=False)
        self.k_proj = _Linear(d, kv, bias=False)
        self.v_proj = _Linear(d, kv, bias=False)
        self.o_proj = _Linear(q, d, bias=False)
        self.qkv: nn.Module | None = None  # quantise.py's fused q|k|v (→ the three), used instead when set

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        shape = x.shape[:-1]
        q, k, v = self.qkv(x) if self.qkv is not None else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        q = q.view(*shape, -1, self.head_dim).transpose(1, 2)
        k = k.view(*shape, -1, self.head_dim).transpose(1, 2)
        v = v.view(*shape, -1, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # transformers' sdpa_attention_forward: grouped-query SDPA without a mask, keys repeated with one
        q_len, extra = q.shape[2], {}
        if self.num_key_value_groups > 1:
            if mask is None and k.shape[-1] == v.shape[-1] <= 256:
                extra["enable_gqa"] = True
            else:  # a mask exists only for a prompt read on after a cache (q_len > 1)
                k, v = _repeat_kv(k, self.num_key_value_groups), _repeat_kv(v, self.num_key_value_groups)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scaling,
                                             is_causal=q_len > 1 and mask is None, **extra)
        out = out.reshape(out.shape[0], -1, q_len, v.shape[-1]).transpose(1, 2).contiguous()
        return self.o_proj(out.reshape(*shape, -1).contiguous())


class MLP(nn.Module):
    def __init__(self, cfg: LlamaSettings) -> None:
        super().__init__()
        self.gate_proj = _Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = _Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = _Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.gate_up: nn.Module | None = None  # quantise.py's fused gate|up (→ the two), used instead when set

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = gate_and_up(self, x)
        return self.down_proj(F.silu(gate) * up)


def gate_and_up(mlp: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A LLaMA MLP's ``gate_proj(x), up_proj(x)``: one fused call where quantise.py set one (transformers'
    MLP has no such slot)."""
    fused = getattr(mlp, "gate_up", None)
    return fused(x) if fused is not None else (mlp.gate_proj(x), mlp.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaSettings, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)  # moe.install_moe swaps in the experts
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    """``LlamaModel``: embeddings, decoder layers, final norm. ``forward(inputs_embeds=, cache=)``."""

    def __init__(self, cfg: LlamaSettings) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = _Embedding(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg)

    @staticmethod
    def new_cache() -> KVCache:
        return KVCache()

    def forward(self, input_ids: torch.Tensor | None = None, *, inputs_embeds: torch.Tensor | None = None,
                cache: KVCache | None = None, use_cache: bool = True) -> BodyOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = KVCache()
        past, q_len = (cache.get_seq_length() if cache is not None else 0), x.shape[1]
        position_ids = (torch.arange(q_len, device=x.device) + past).unsqueeze(0)
        # transformers' SDPA mask: none (SDPA's is_causal) unless a prompt is read on after a cache
        mask = None
        if past and q_len > 1:
            kv_idx = torch.arange(past + q_len, device=x.device)[None, None, None, :]
            mask = (kv_idx <= position_ids[0][None, None, :, None]).expand(x.shape[0], -1, q_len, past + q_len)
        cos, sin = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return BodyOutput(self.norm(x), cache)


class LlamaLM(nn.Module):
    """``LlamaForCausalLM`` for inference: ``.model`` (the body), ``.lm_head`` tied to the embedding."""

    def __init__(self, cfg: LlamaSettings) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = _Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids=None, *, inputs_embeds=None, cache=None, use_cache: bool = True) -> torch.Tensor:
        """→ logits at every position (the cache, if any, grows)."""
        return self.lm_head(self.model(input_ids, inputs_embeds=inputs_embeds, cache=cache,
                                       use_cache=use_cache).last_hidden_state)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def resize_token_embeddings(self, size: int, mean_resizing: bool = False) -> nn.Embedding:
        """New rows are left uninitialised: the caller fills them (llm.add_special_tokens, then the glue)."""
        if mean_resizing or not self.config.tie_word_embeddings:
            raise NotImplementedError("only tied embeddings without mean resizing are supported here")
        old = self.model.embed_tokens
        weight = torch.empty(size, old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
        keep = min(size, old.num_embeddings)
        weight[:keep] = old.weight[:keep]
        self.model.embed_tokens = _Embedding(size, old.embedding_dim, old.padding_idx, _weight=weight)
        self.config.vocab_size = self.lm_head.out_features = size
        self.tie_weights()
        return self.model.embed_tokens


def load_llama(folder: Path, dtype: torch.dtype = torch.float32) -> LlamaLM:
    """The model in ``folder`` (config.json + model.safetensors), given the saved tensors.

    Built on the CPU with uninitialised weights (``_Linear``; ``torch.empty`` touches no memory), not on
    the meta device: meta factories (``arange`` for the rotary frequencies) import torch._dynamo + sympy."""
    cfg = LlamaSettings.from_folder(folder)
    model = LlamaLM(cfg)
    load_weights_strictly(model, folder, dtype=dtype, tied=cfg.tie_word_embeddings)
    return model.eval()


def load_weights_strictly(model: nn.Module, folder: Path, *, dtype: torch.dtype, tied: bool) -> None:
    """The folder's ``model.safetensors`` into ``model`` (assigned, not copied); any key missing (but a tied
    LM head) or unexpected is a one-line error. Shared by this model and transformers' (training)."""
    from safetensors.torch import load_file

    state = {k: v.to(dtype) for k, v in load_file(Path(folder) / "model.safetensors").items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if set(missing) - ({"lm_head.weight"} if tied else set()) or unexpected:
        raise ModelError(f"cached LLM at {folder} does not match its config (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}): delete the folder to convert again")
    model.tie_weights()


__all__ = ["KVCache", "LlamaLM", "LlamaSettings", "gate_and_up", "load_llama", "load_weights_strictly"]
