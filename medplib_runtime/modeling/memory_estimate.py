"""How much memory a released medplib-7b folder needs, before anything is loaded (no torch at import).

Parameters come from the folder's ``pytorch_model.bin.index.json`` / ``model.safetensors.index.json``
(``metadata.total_size`` over the bytes of config.json's ``torch_dtype``: exact) when it has one, else
from config.json's sizes: LLaMA with an MoE FFN of ``num_experts`` full MLPs on every layer (MedPLIB's
merged experts), CLIP ViT from the CLIP folder's config.json (ViT-L/14-336 if absent), SAM-Med2D ViT-B
with its adapters (MedPLIB hard-codes it) and the glue. Bytes at the chosen precision: fp32 4, bf16 2;
``--load-in 8bit`` / ``4bit`` (bitsandbytes) store the LLM's decoder-layer Linear weights in 1 / 0.5625 bytes
(NF4 plus one fp32 scale per 64) and the rest in bf16. The margin is the KV cache of one ``context``-token
answer at the compute precision, 10 % of the weights for activations, and a fixed overhead (CUDA context
and kernels on a GPU; the interpreter and libraries on the CPU).

Test hook: ``MEDPLIB_FAKE_FREE_BYTES`` (an integer) replaces the free memory ``available_bytes`` reports,
so the refusal can be tested without a small GPU. Nothing else reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..presets import SamMed2DConfig

DTYPES = ("fp32", "bf16")
LOAD_IN = ("8bit", "4bit")
FAKE_FREE_ENV = "MEDPLIB_FAKE_FREE_BYTES"
GB = 1e9
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5625}
OVERHEAD = {"cuda": 1.0 * GB, "cpu": 0.5 * GB}
ACTIVATION_SHARE = 0.10
CONTEXT_TOKENS = 2048
# weights streamed per second while decoding on the CPU, measured: medplib-lite decodes 15.7 tok/s on this
# project's 2-core host (docs/benchmarks.md, run D), each token reading SmolLM2-135M's 0.54 GB of fp32 weights
CPU_WEIGHT_BANDWIDTH = 15.7 * 134.5e6 * 4
# ViT-L/14-336 (clip-vit-large-patch14-336), when the CLIP folder's config.json is not at hand
CLIP_L336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "image_size": 336,
             "patch_size": 14}


@dataclass(frozen=True)
class ParamCount:
    """``llm_linear``: the decoder layers' Linear weights (what 8/4-bit loading quantises); ``other``: the rest."""

    llm_linear: int
    other: int
    source: str  # "index" (the shards' total size) or "config" (computed from the sizes)

    @property
    def total(self) -> int:
        return self.llm_linear + self.other


@dataclass(frozen=True)
class MemoryEstimate:
    params: ParamCount
    mode: str  # fp32 | bf16 | 8bit | 4bit
    weights_bytes: float
    margin_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.margin_bytes


def read_config(folder: Path) -> dict:
    config_file = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise InputError(f"--weights {folder}: not a folder")
    if not config_file.is_file():
        raise InputError(f"--weights {folder}: no config.json (not a MedPLIB checkpoint folder)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--weights {folder}: config.json unreadable: {exc}") from None
    if config.get("model_type") != "medplib_moe_llama":
        raise InputError(f"--weights {folder}: config.json model_type is {config.get('model_type')!r}, "
                         "expected 'medplib_moe_llama' (MedPLIB-7b's layout)")
    return config


def _int(config: dict, key: str, folder: Path) -> int:
    try:
        return int(config[key])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"--weights {folder}: config.json has no usable {key!r}") from None


def llm_params(config: dict, folder: Path = Path(".")) -> tuple[int, int]:
    """(decoder-layer Linear weights, everything else of the LLM: embeddings, LM head, norms, routers)."""
    h, layers = _int(config, "hidden_size", folder), _int(config, "num_hidden_layers", folder)
    ffn, vocab = _int(config, "intermediate_size", folder), _int(config, "vocab_size", folder)
    heads = _int(config, "num_attention_heads", folder)
    kv = int(config.get("num_key_value_heads") or heads) * (h // heads)
    experts = max((config.get("moe") or {}).get("num_experts") or [1])
    linear = layers * (2 * h * h + 2 * h * kv + experts * 3 * h * ffn)
    other = 2 * vocab * h + layers * (2 * h + experts * h) + h
    return linear, other


def clip_params(clip: dict) -> int:
    """transformers' CLIPVisionModel (pre/post LayerNorm, quick-GELU MLP) at ``clip``'s sizes."""
    d, inter, layers = clip["hidden_size"], clip["intermediate_size"], clip["num_hidden_layers"]
    positions = (clip["image_size"] // clip["patch_size"]) ** 2 + 1
    embeddings = 3 * clip["patch_size"] ** 2 * d + d + positions * d
    layer = 4 * (d * d + d) + 2 * d * inter + inter + d + 4 * d
    return embeddings + layers * layer + 4 * d


def sam_params(s: SamMed2DConfig = SamMed2DConfig(), decoder_mlp: int = 2048) -> int:
    """SAM-Med2D's encoder with adapters + SAM's prompt encoder and two-way mask decoder."""
    d, c, g = s.embed_dim, s.out_chans, len(s.global_attn_indexes)
    head = d // s.num_heads
    adapter = 2 * d + 2 * d * (d // 4) + 25 * d * d  # norm, channel MLP, 3×3 conv + 4×4 deconv
    block = 4 * d + 3 * d * d + 3 * d + d * d + d + 2 * d * 4 * d + 5 * d + adapter
    rel = 2 * head * (g * (2 * s.grid - 1) + (s.depth - g) * (2 * s.window_size - 1))
    encoder = 3 * s.patch_size ** 2 * d + d + s.grid ** 2 * d + s.depth * block + rel + d * c + c * c * 9 + 4 * c
    prompt = 23 * c + 332  # point/no-mask embeddings, the mask downscaler (its Gaussian PE is a buffer)
    return encoder + prompt + _decoder_params(c, decoder_mlp)


def _decoder_params(c: int, mlp: int) -> int:
    def attn(dim, inner):
        return 3 * (dim * inner + inner) + inner * dim + dim

    layer = attn(c, c) + 2 * c + attn(c, c // 2) + 2 * c + (c * mlp + mlp + mlp * c + c) + 2 * c \
        + 2 * c + attn(c, c // 2)
    transformer = 2 * layer + attn(c, c // 2) + 2 * c
    tokens = c + 4 * c
    upscale = (c * (c // 4) * 4 + c // 4) + 2 * (c // 4) + ((c // 4) * (c // 8) * 4 + c // 8)
    hypernet = 4 * (c * c + c + c * c + c + c * (c // 8) + c // 8)
    iou = c * c + c + c * c + c + c * 4 + 4
    return transformer + tokens + upscale + hypernet + iou


def glue_params(config: dict, folder: Path = Path(".")) -> int:
    h, mm = _int(config, "hidden_size", folder), _int(config, "mm_hidden_size", folder)
    out = int(config.get("out_dim") or 256)
    return (mm * h + h + h * h + h) + (mm * h + h) + (h * h + h + h * out + out)


def clip_config(folder: Path, config: dict) -> dict:
    name = Path(str(config.get("mm_vision_tower", ""))).name
    for place in (folder / name, folder.parent / name):
        if name and (place / "config.json").is_file():
            data = json.loads((place / "config.json").read_text())
            return {**CLIP_L336, **data.get("vision_config", data)}
    return CLIP_L336


def index_total(folder: Path, config: dict) -> int | None:
    """Parameters from the shards' index (``metadata.total_size`` bytes at config.json's ``torch_dtype``)."""
    size = DTYPE_BYTES.get(str(config.get("torch_dtype")))
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file() and size:
            try:
                return int(json.loads((folder / index).read_text())["metadata"]["total_size"]) // size
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def count_parameters(folder: Path) -> ParamCount:
    folder = Path(folder)
    config = read_config(folder)
    linear, llm_other = llm_params(config, folder)
    total = index_total(folder, config)
    if total is not None and total > linear:
        return ParamCount(linear, total - linear, "index")
    rest = llm_other + clip_params(clip_config(folder, config)) + sam_params() + glue_params(config, folder)
    return ParamCount(linear, rest, "config")


def estimate(folder: Path, *, dtype: str, load_in: str | None = None, device: str = "cuda",
             context: int = CONTEXT_TOKENS) -> MemoryEstimate:
    """Bytes to hold the weights in ``dtype`` (or ``load_in``) and answer one ``context``-token question."""
    folder = Path(folder)
    config = read_config(folder)
    params = count_parameters(folder)
    if load_in is not None:
        weights = params.llm_linear * QUANT_BYTES[load_in] + params.other * 2
        compute = 2
    else:
        compute = 4 if dtype == "fp32" else 2
        weights = params.total * compute
    h, heads = _int(config, "hidden_size", folder), _int(config, "num_attention_heads", folder)
    kv = int(config.get("num_key_value_heads") or heads) * (h // heads)
    kv_cache = 2 * _int(config, "num_hidden_layers", folder) * kv * context * compute
    margin = kv_cache + ACTIVATION_SHARE * weights + OVERHEAD["cuda" if device.startswith("cuda") else "cpu"]
    return MemoryEstimate(params, load_in or dtype, weights, margin)


def available_bytes(device: str) -> int:
    """Free memory where the model would live: the GPU's (``torch.cuda.mem_get_info``), else the host's
    available memory (/proc/meminfo MemAvailable, psutil elsewhere). ``MEDPLIB_FAKE_FREE_BYTES`` overrides."""
    fake = os.environ.get(FAKE_FREE_ENV)
    if fake:
        return int(fake)
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(folder: Path, *, preset: str, device: str, dtype: str, load_in: str | None) -> MemoryEstimate:
    """The estimate, or one InputError line when it does not fit in what ``device`` has free."""
    need = estimate(folder, dtype=dtype, load_in=load_in, device=device)
    free = available_bytes(device)
    if need.total_bytes <= free:
        return need
    where = "are free" if device.startswith("cuda") else "are available"
    raise InputError(f"{preset} needs ≈ {need.total_bytes / GB:.1f} GB in {need.mode} on {device} but "
                     f"{free / GB:.1f} GB {where}: {_suggestion(folder, device, need, free)}")


def _suggestion(folder: Path, device: str, need: MemoryEstimate, free: int) -> str:
    if not device.startswith("cuda"):
        return "free memory, or serve it from a GPU machine (medplib serve --device cuda) and use --remote"
    order = [m for m in LOAD_IN if QUANT_BYTES[m] < {"fp32": 4, "bf16": 2, "8bit": 1}.get(need.mode, 0)]
    for mode in order:
        smaller = estimate(folder, dtype="bf16", load_in=mode, device=device)
        if smaller.total_bytes <= free:
            return f"try --load-in {mode} (≈ {smaller.total_bytes / GB:.1f} GB) or a larger card"
    return "a larger card"


def bytes_per_token(folder: Path, dtype: str) -> float:
    """Weights one decoded token reads: every layer's attention and its one chosen expert (top-1), the LM head."""
    config = read_config(Path(folder))
    h, layers = _int(config, "hidden_size", folder), _int(config, "num_hidden_layers", folder)
    heads = _int(config, "num_attention_heads", folder)
    kv = int(config.get("num_key_value_heads") or heads) * (h // heads)
    active = layers * (2 * h * h + 2 * h * kv + 3 * h * _int(config, "intermediate_size", folder)) \
        + _int(config, "vocab_size", folder) * h
    return active * (4 if dtype == "fp32" else 2)


def cpu_tokens_per_s(folder: Path, dtype: str = "fp32") -> float:
    """Expected CPU decode speed: memory-bound, weights read per token over CPU_WEIGHT_BANDWIDTH."""
    return CPU_WEIGHT_BANDWIDTH / bytes_per_token(folder, dtype)


def describe(need: MemoryEstimate) -> str:
    """One line for the log: what was estimated, from what."""
    n = need.params.total
    count = f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.3g} M"
    return (f"{count} parameters (from the {need.params.source}) → ≈ {_gb(need.weights_bytes)} of weights in "
            f"{need.mode} + {_gb(need.margin_bytes)} margin (KV cache of {CONTEXT_TOKENS} tokens, activations, runtime)")


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.3g} MB"


__all__ = ["CPU_WEIGHT_BANDWIDTH", "DTYPES", "FAKE_FREE_ENV", "LOAD_IN", "MemoryEstimate", "ParamCount", "available_bytes", "check_fits",
           "bytes_per_token", "count_parameters", "cpu_tokens_per_s", "describe", "estimate"]
