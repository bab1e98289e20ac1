"""Load a released medplib-7b checkpoint folder (MedPLIB's own save layout) into our modules, strictly.

The layout is what MedPLIB's merge script writes: ``config.json`` (model type ``medplib_moe_llama``,
LLaMA sizes, ``mm_*`` fields, a ``moe`` dict), the weights as ``save_pretrained`` shards them
(``model.safetensors`` / ``pytorch_model.bin``, or shards with ``*.index.json``), the tokenizer files
with MedPLIB's added tokens, and the CLIP folder's ``config.json`` (``mm_vision_tower``'s name, inside
the folder or beside it). ``.bin`` files are read with ``torch.load(weights_only=True)``.

Every checkpoint tensor must have one place in our model with the same shape, and every tensor of
ours must come from the checkpoint, except the parts MedPLIB does not have (``OURS_ONLY``, left at
their identity/unused defaults). Any problem is one ``ModelError`` line naming the first one.
Sizes the config does not state are read from tensor shapes (SAM-Med2D's ViT, its windows, heads).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import ModelError
from ..presets import IMAGE_PLACEHOLDER, MEDPLIB_7B, REGION_PLACEHOLDER, SPECIAL_TOKENS, MedPLIBConfig, MoEConfig
from .meta_init import meta_parameters
from .sam_med2d import SamMed2DConfig

# MedPLIB's name prefix → ours (first match wins; MoE names before the generic layer prefix)
NAME_MAP: tuple[tuple[str, str], ...] = (
    (r"^model\.layers\.(\d+)\.mlp\.deepspeed_moe\.gate\.wg\.", r"llm.model.layers.\1.mlp.router."),
    (r"^model\.layers\.(\d+)\.mlp\.deepspeed_moe\.experts\.deepspeed_experts\.(\d+)\.",
     r"llm.model.layers.\1.mlp.experts.\2."),
    (r"^model\.(layers|embed_tokens|norm)\.", r"llm.model.\1."),
    (r"^lm_head\.", "llm.lm_head."),
    (r"^model\.mm_projector\.0\.", "vision_projector.fc1."),
    (r"^model\.mm_projector\.2\.", "vision_projector.fc2."),
    (r"^model\.region_fea_adapter\.", "region_encoder.proj."),
    (r"^model\.text_hidden_fcs\.0\.0\.", "seg_projector.fc1."),
    (r"^model\.text_hidden_fcs\.0\.2\.", "seg_projector.fc2."),
    (r"^model\.vision_tower\.vision_tower\.", "vision_tower.model."),
    (r"^model\.visual_model\.", "sam."),
)
# ours → MedPLIB's name, to name a missing tensor as the checkpoint would hold it
INVERSE_MAP: tuple[tuple[str, str], ...] = (
    (r"^llm\.model\.layers\.(\d+)\.mlp\.router\.", r"model.layers.\1.mlp.deepspeed_moe.gate.wg."),
    (r"^llm\.model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.",
     r"model.layers.\1.mlp.deepspeed_moe.experts.deepspeed_experts.\2."),
    (r"^llm\.model\.", "model."),
    (r"^llm\.lm_head\.", "lm_head."),
    (r"^vision_projector\.fc1\.", "model.mm_projector.0."),
    (r"^vision_projector\.fc2\.", "model.mm_projector.2."),
    (r"^region_encoder\.proj\.", "model.region_fea_adapter."),
    (r"^seg_projector\.fc1\.", "model.text_hidden_fcs.0.0."),
    (r"^seg_projector\.fc2\.", "model.text_hidden_fcs.0.2."),
    (r"^vision_tower\.model\.(vision_model\.)?", "model.vision_tower.vision_tower.vision_model."),
    (r"^sam\.", "model.visual_model."),
)
# buffers older transformers saved that we compute ourselves: checked (check_derived), not loaded
DERIVED = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")
# parts of ours MedPLIB does not have: the lite preset's ground head and our input standardisers
OURS_ONLY = re.compile(r"^ground_head\.|\.standardise\.")
TOKENS_NEEDED = ("<SEG>", "<region>", "</region>", "<im_start>", "<im_end>")


@dataclass(frozen=True)
class CheckpointFolder:
    """What a folder holds: its config and the tensor files (``kind``: ``safetensors`` or ``bin``)."""

    folder: Path
    config: dict
    files: tuple[Path, ...]
    kind: str


@dataclass(frozen=True)
class ReleasedSizes:
    """The model's sizes: ours (``cfg``), CLIP's config dict and SAM-Med2D's encoder."""

    cfg: MedPLIBConfig
    clip: dict
    sam: SamMed2DConfig
    sam_decoder_mlp: int
    rope_theta: float
    rms_norm_eps: float


def _fail(folder: Path, message: str) -> ModelError:
    return ModelError(f"checkpoint {folder}: {message}")


def read_folder(folder: Path) -> CheckpointFolder:
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(folder, "not a folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise _fail(folder, "no config.json (expected MedPLIB's save_pretrained layout)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(folder, f"config.json unreadable: {exc}") from None
    for kind, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                                ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / index).is_file():
            return CheckpointFolder(folder, config, _shards(folder, index), kind)
        if (folder / single).is_file():
            return CheckpointFolder(folder, config, (folder / single,), kind)
    raise _fail(folder, "no weights (model.safetensors, pytorch_model.bin, or their *.index.json)")


def _shards(folder: Path, index: str) -> tuple[Path, ...]:
    try:
        weight_map = json.loads((folder / index).read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(folder, f"{index} unreadable: {exc}") from None
    files = tuple(folder / name for name in sorted(set(weight_map.values())))
    for f in files:
        if not f.is_file():
            raise _fail(folder, f"{index} names {f.name}, which is missing")
    return files


def read_tensors(ckpt: CheckpointFolder) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in ckpt.files:
        try:
            if ckpt.kind == "safetensors":
                from safetensors.torch import load_file

                part = load_file(f)
            else:  # never unpickle arbitrary objects from a downloaded file
                part = _load_bin(f)
        except Exception as exc:  # noqa: BLE001 - any reader failure is one line for the user
            raise _fail(ckpt.folder, f"cannot read {f.name}: {str(exc).splitlines()[0]}") from None
        tensors.update(part)
    return tensors


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` shard, memory-mapped when torch's zip format allows (pages are read when used, and stay
    file-backed: no second copy of 23 GB in RAM); ``weights_only``: never unpickle arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (pre-zip) format


def _need(ckpt: CheckpointFolder, key: str):
    if key not in ckpt.config:
        raise _fail(ckpt.folder, f"config.json has no {key!r}")
    return ckpt.config[key]


def _check_mm(ckpt: CheckpointFolder) -> None:
    """The multimodal settings our modules implement (others would load and compute something else)."""
    wanted = {"mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_use_im_start_end": True}
    for key, value in wanted.items():
        got = ckpt.config.get(key, value)
        if got != value:
            raise _fail(ckpt.folder, f"config.json {key}={got!r}; medplib-7b implements {value!r}")


def _moe_config(ckpt: CheckpointFolder, layers: int) -> MoEConfig:
    moe = _need(ckpt, "moe")
    if not moe.get("moe_enable", True) or sorted(moe.get("moe_layers_idx") or []) != list(range(layers)):
        raise _fail(ckpt.folder, "config.json moe: medplib-7b has an MoE FFN on every layer")
    experts = set(moe.get("num_experts") or [])
    if len(experts) != 1 or moe.get("top_k_experts") != 1 or moe.get("use_residual"):
        raise _fail(ckpt.folder, f"config.json moe: expected top-1 over one expert count, got {moe}")
    return MoEConfig(num_experts=experts.pop(), top_k=1, capacity_factor_train=float(moe["capacity_factor"]),
                     capacity_factor_eval=float(moe["eval_capacity_factor"]), combine="probability")


def _clip_config(ckpt: CheckpointFolder, tensors: dict[str, torch.Tensor]) -> dict:
    """The CLIP folder's config.json (``mm_vision_tower``'s name, in the folder or beside it), else shapes."""
    name = Path(str(ckpt.config.get("mm_vision_tower", ""))).name
    for place in (ckpt.folder / name, ckpt.folder.parent / name):
        if name and (place / "config.json").is_file():
            data = json.loads((place / "config.json").read_text())
            return data.get("vision_config", data)
    prefix = "model.vision_tower.vision_tower.vision_model."
    patch = _tensor(ckpt, tensors, prefix + "embeddings.patch_embedding.weight")
    positions = _tensor(ckpt, tensors, prefix + "embeddings.position_embedding.weight").shape[0]
    hidden, p = patch.shape[0], patch.shape[-1]
    layers = len({k.split(".")[6] for k in tensors if k.startswith(prefix + "encoder.layers.")})
    return {"hidden_size": hidden, "patch_size": p, "image_size": int(round((positions - 1) ** 0.5)) * p,
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
            "intermediate_size": _tensor(ckpt, tensors, prefix + "encoder.layers.0.mlp.fc1.weight").shape[0]}


def _tensor(ckpt: CheckpointFolder, tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise _fail(ckpt.folder, f"tensor {name!r} is missing")
    return tensors[name]


def _sam_config(ckpt: CheckpointFolder, tensors: dict[str, torch.Tensor]) -> SamMed2DConfig:
    """SAM-Med2D's ViT sizes from its tensors: MedPLIB hard-codes them, its config.json does not say."""
    prefix = "model.visual_model.image_encoder."
    patch = _tensor(ckpt, tensors, prefix + "patch_embed.proj.weight")
    grid = _tensor(ckpt, tensors, prefix + "pos_embed").shape[1]
    dim, p = patch.shape[0], patch.shape[-1]
    depth = len({k.split(".")[4] for k in tensors if k.startswith(prefix + "blocks.")})
    rel = [_tensor(ckpt, tensors, f"{prefix}blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    sizes = [(r.shape[0] + 1) // 2 for r in rel]  # 2·size − 1 rows: the window, or the whole grid
    windows = {s for s in sizes if s != grid}
    if len(windows) > 1:
        raise _fail(ckpt.folder, f"SAM encoder blocks have several window sizes {sorted(windows)}")
    out_chans = _tensor(ckpt, tensors, prefix + "neck.0.weight").shape[0]
    return SamMed2DConfig(image_size=grid * p, patch_size=p, embed_dim=dim, depth=depth,
                          num_heads=dim // rel[0].shape[1], out_chans=out_chans,
                          window_size=windows.pop() if windows else grid,
                          global_attn_indexes=tuple(i for i, s in enumerate(sizes) if s == grid))


def released_sizes(ckpt: CheckpointFolder, tensors: dict[str, torch.Tensor]) -> ReleasedSizes:
    if ckpt.config.get("model_type") != "medplib_moe_llama":
        raise _fail(ckpt.folder, f"model_type is {ckpt.config.get('model_type')!r}, expected 'medplib_moe_llama'")
    _check_mm(ckpt)
    layers = int(_need(ckpt, "num_hidden_layers"))
    clip = _clip_config(ckpt, tensors)
    sam = _sam_config(ckpt, tensors)
    heads = int(_need(ckpt, "num_attention_heads"))
    cfg = replace(
        MEDPLIB_7B, vision_image_size=int(clip["image_size"]), vision_feature_dim=int(_need(ckpt, "mm_hidden_size")),
        vision_grid=int(clip["image_size"]) // int(clip["patch_size"]), pixel_image_size=sam.image_size,
        pixel_embed_grid=sam.grid, prompt_embed_dim=sam.out_chans, llm_hidden=int(_need(ckpt, "hidden_size")),
        llm_layers=layers, llm_heads=heads, llm_kv_heads=int(ckpt.config.get("num_key_value_heads") or heads),
        llm_intermediate=int(_need(ckpt, "intermediate_size")), llm_vocab=int(_need(ckpt, "vocab_size")),
        region_max_samples=int(ckpt.config.get("max_sample_point", 512)), moe=_moe_config(ckpt, layers))
    mlp = _tensor(ckpt, tensors, "model.visual_model.mask_decoder.transformer.layers.0.mlp.lin1.weight").shape[0]
    return ReleasedSizes(cfg, clip, sam, mlp, float(ckpt.config.get("rope_theta", 10000.0)),
                         float(ckpt.config.get("rms_norm_eps", 1e-6)))


def our_name(name: str, ours: dict) -> str | None:
    for pattern, target in NAME_MAP:
        if re.match(pattern, name):
            mapped = re.sub(pattern, target, name, count=1)
            # transformers 5's CLIPVisionModel has no ``vision_model.`` level (4.x, which MedPLIB used, has)
            flat = mapped.replace("vision_tower.model.vision_model.", "vision_tower.model.", 1)
            return mapped if mapped in ours or flat not in ours else flat
    return None


def medplib_name(ours: str) -> str:
    for pattern, target in INVERSE_MAP:
        if re.match(pattern, ours):
            return re.sub(pattern, target, ours, count=1)
    return ours


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def match_tensors(folder: Path, tensors: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict:
    """Checkpoint tensors → ``{our name: tensor}``, strict: raise on the first unplaced, misshapen or missing one."""
    mapped: dict[str, torch.Tensor] = {}
    for name in sorted(tensors):
        if DERIVED.search(name):
            continue
        target = our_name(name, ours)
        if target is None or target not in ours or OURS_ONLY.search(target):
            raise _fail(folder, f"unexpected tensor {name!r}: it has no place in medplib-7b")
        if tensors[name].shape != ours[target].shape:
            raise _fail(folder, f"tensor {name!r} has shape {_shape(tensors[name])} but medplib-7b expects "
                                f"{_shape(ours[target])}")
        mapped[target] = tensors[name]
    for target in sorted(ours):
        if target not in mapped and not OURS_ONLY.search(target):
            raise _fail(folder, f"tensor {medplib_name(target)!r} is missing (medplib-7b's {target})")
    return mapped


def check_derived(folder: Path, tensors: dict[str, torch.Tensor], sizes: ReleasedSizes) -> None:
    """Saved buffers we compute ourselves must be what we compute: RoPE frequencies (else the checkpoint
    used another RoPE) and position ids (0, 1, 2, …)."""
    head_dim = sizes.cfg.llm_hidden // sizes.cfg.llm_heads
    ours = 1.0 / sizes.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    for name, t in tensors.items():
        # compared at the saved precision: a bf16 release (model.to(bf16) before saving) stores them in bf16
        if name.endswith("rotary_emb.inv_freq") and not torch.allclose(t.float(), ours.to(t.dtype).float(),
                                                                         rtol=1e-5, atol=0):
            raise _fail(folder, f"tensor {name!r} is not RoPE with theta {sizes.rope_theta:g}")
        if name.endswith("position_ids") and not torch.equal(t.reshape(-1), torch.arange(t.numel())):
            raise _fail(folder, f"tensor {name!r} is not 0, 1, 2, …")


def build_structure(sizes: ReleasedSizes, tokenizer, compose):
    """Our medplib-7b at ``sizes`` with untrained weights (the checkpoint's come next); ``compose`` is
    ``MedPLIB`` (passed in by medplib.build_medplib: this module does not import it, no cycle)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM

    from .dense_moe import install_dense_moe
    from .litemedsam import SamParts, build_sam_decoder
    from .sam_med2d import SamMed2DImageEncoder
    from .vision_tower import ClipTower

    from .meta_init import parameters_on_meta

    cfg = sizes.cfg
    llama = LlamaConfig(vocab_size=cfg.llm_vocab, hidden_size=cfg.llm_hidden, intermediate_size=cfg.llm_intermediate,
                        num_hidden_layers=cfg.llm_layers, num_attention_heads=cfg.llm_heads,
                        num_key_value_heads=cfg.llm_kv_heads, rms_norm_eps=sizes.rms_norm_eps,
                        rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta},
                        max_position_embeddings=4096, tie_word_embeddings=False)
    llama._attn_implementation = "sdpa"
    with parameters_on_meta():  # the big parts: every parameter comes from the checkpoint (assigned, not copied)
        llm = LlamaForCausalLM(llama).eval()
        install_dense_moe(llm, cfg.moe)
        prompt, decoder = build_sam_decoder(embed_dim=cfg.prompt_embed_dim, grid=cfg.pixel_embed_grid,
                                            image_size=cfg.pixel_image_size, mlp_dim=sizes.sam_decoder_mlp,
                                            heads=max(1, cfg.prompt_embed_dim // 32))  # SAM: 8 heads of 32 at 256
        sam = SamParts(SamMed2DImageEncoder(sizes.sam), prompt, decoder, image_size=cfg.pixel_image_size).eval()
        tower = ClipTower(cfg, CLIPVisionConfig(**{k: v for k, v in sizes.clip.items() if k != "model_type"}))
    return compose(cfg, sam=sam, llm=llm, tokenizer=tokenizer, vision_tower=tower)


def read_tokenizer(folder: Path, vocab: int):
    import warnings

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:
        # AutoTokenizer reads config.json too, and transformers 5 warns about MedPLIB's 4.31-era fields
        hf_logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise _fail(folder, f"tokenizer unreadable: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    vocab_of_tokenizer = tokenizer.get_vocab()
    for token in TOKENS_NEEDED:
        if token not in vocab_of_tokenizer:
            raise _fail(folder, f"tokenizer lacks MedPLIB's added token {token!r}")
    if len(tokenizer) != vocab:
        raise _fail(folder, f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}")
    return tokenizer


@torch.no_grad()
def load_released_checkpoint(folder: Path, *, compose):
    """A released medplib-7b folder → our model (``compose``: the ``MedPLIB`` class) in eval mode on the CPU,
    in the checkpoint's dtype (our own small glue parts in fp32), weights loaded strictly. Callers use
    ``build_medplib(cfg, pretrained=True, weights=folder)``."""
    from .llm import add_special_tokens

    folder = Path(folder)
    ckpt = read_folder(folder)
    tensors = read_tensors(ckpt)
    sizes = released_sizes(ckpt, tensors)
    check_derived(folder, tensors, sizes)
    tokenizer = read_tokenizer(folder, sizes.cfg.llm_vocab)
    model = build_structure(sizes, tokenizer, compose)
    mapped = match_tensors(folder, tensors, model.state_dict())
    # assigned, not copied: the big parts were built on the meta device, so the checkpoint's tensors (memory-mapped
    # for .bin) become the parameters, in the checkpoint's dtype; the caller casts (predictors/released.py)
    model.load_state_dict(mapped, strict=False, assign=True)
    left = meta_parameters(model)
    if left:
        raise _fail(folder, f"{len(left)} parameter(s) of medplib-7b got no tensor, first {left[0]!r}")
    # our two input-only placeholders get rows after MedPLIB's vocabulary (masked_scatter fills them)
    model.token_ids = add_special_tokens(model.llm, tokenizer, SPECIAL_TOKENS + (IMAGE_PLACEHOLDER, REGION_PLACEHOLDER))
    model.weights_folder = folder
    return model.eval()
