"""Build the tiny medplib-7b parity fixture WITH MedPLIB's own code (run in the reference venv, see README).

    PYTHONPATH=/tmp/refshim:/tmp/medplib_ref /tmp/refenv/bin/python \
        research/tools/reference_parity/build_fixture.py --out tests/modeling/fixtures/medplib7b_tiny

What it does, in MedPLIB's own terms:
1. a tiny base tokenizer, then MedPLIB's own token additions (train_ds_medplib.py: ADD_OTHERS_TOKENS, 256
   ``<gen_i>``, ``<im_start> <im_end>``);
2. ``MedPLIBForCausalLM(config, test_only=True)`` (its inference build: MoE on every layer listed in
   ``config.moe``) at toy sizes: LLaMA hidden 64 / 2 layers / 4 heads, CLIP ViT hidden 32 / 3 layers, a
   SAM-Med2D ViT (adapters on) hidden 32 / 2 layers, prompt dim 32 — the SAM is built with MedPLIB's
   ``ImageEncoderViT / PromptEncoder / MaskDecoder / TwoWayTransformer / Sam`` exactly as its ``_build_sam``
   does, only smaller (``_build_sam`` hard-codes 256-wide prompts);
3. every tensor re-drawn under a fixed seed at a scale where outputs are not ≈0 (norms ≈1, rel-pos ≠ 0);
4. ``save_pretrained(dir, state_dict=model.state_dict())`` + ``tokenizer.save_pretrained`` as its
   merge_lora_weights_and_save_hf_model_moe.py does (transformers 4.31 writes sharded ``.bin`` + index);
5. fixed inputs through its forward: logits + router choices of a teacher-forced pass over
   prompt (``<image>`` + a region) + an answer with two ``<SEG>``; the ``<SEG>`` masks from
   ``model_forward(inference=True)``; a greedy continuation via its ``generate`` path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

SEED = 1234
CLIP_DIR_NAME = "clip-vit-tiny"  # MedPLIB's build_vision_tower wants "clip" in the name
SAM_IMAGE, SAM_PATCH, SAM_DIM, PROMPT_DIM = 64, 16, 32, 64
CLIP_IMAGE, CLIP_PATCH, CLIP_DIM = 32, 8, 32
ORIGINAL_HW = (40, 40)  # square: MedPLIB's postprocess_masks crop is then a no-op (design.md)
WORDS = ["<unk>", "<s>", "</s>", "USER", ":", "ASSISTANT", "the", "lesion", "is", "a", "what", "?", "segment",
         "region", "in", "brain", "lung", "tumour", "here", "it", ".", "and", "A", "chat", "between", "curious",
         "human", "an", "artificial", "intelligence", "assistant", "The", "gives", "helpful", ",", "detailed",
         "polite", "answers", "to", "'", "s", "questions", "of", "this", "image", "shows"]
QUESTION = "what is in <region></region> ?"
ANSWER = "the lesion is <SEG> and the tumour is <SEG> ."
GREEDY_NEW_TOKENS = 8


def reference_commit(repo: Path) -> str:
    """The commit setup_refenv.sh copied MedPLIB's source from (else the mirror's HEAD)."""
    import model

    pinned = Path(model.__file__).resolve().parent.parent / "MEDPLIB_COMMIT"
    if pinned.is_file():
        return pinned.read_text().strip()
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from utils.utils import ADD_OTHERS_TOKENS, DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation apart
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        model_max_length=512, padding_side="right")
    # MedPLIB's own additions, in its order (train_ds_medplib.py main())
    tokenizer.pad_token = tokenizer.unk_token
    others = list(ADD_OTHERS_TOKENS) + ["<gen_" + str(i) + ">" for i in range(1, 257)]
    for token_name in others:
        tokenizer.add_tokens(token_name, special_tokens=True)
    tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    return tokenizer


def save_tiny_clip(folder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=2 * CLIP_DIM, num_hidden_layers=3,
                              num_attention_heads=1, image_size=CLIP_IMAGE, patch_size=CLIP_PATCH,
                              projection_dim=CLIP_DIM)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE}, crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE}
                       ).save_pretrained(folder)


def tiny_sam_vit_b(sam_checkpoint=None, image_size=SAM_IMAGE, encoder_adapter=True):
    """MedPLIB's ``_build_sam`` (segment_anything_med2d/build_sam.py) with toy sizes."""
    from model.segment_anything_med2d.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                                       TwoWayTransformer)

    grid = image_size // SAM_PATCH
    return Sam(
        image_encoder=ImageEncoderViT(depth=2, embed_dim=SAM_DIM, img_size=image_size, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=1,
                                      patch_size=SAM_PATCH, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
                                      window_size=3, out_chans=PROMPT_DIM, adapter_train=encoder_adapter),
        prompt_encoder=PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=128,
                                                               num_heads=2),
                                 transformer_dim=PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=PROMPT_DIM),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def medplib_config(vocab: int):
    from model.medplib.model.language_model.medplib_moe_llama import MedPLIBMoELlamaConfig

    config = MedPLIBMoELlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        moe_enable=True, moe_mode="dense", moe_layers_idx=[0, 1], ep_size=1, top_k_experts=1, capacity_factor=1.5,
        eval_capacity_factor=2.0, min_capacity=0, use_residual=False, router_aux_loss_coef=0.0)
    config.moe["num_experts"] = [2, 2]  # as initialize_moe_modules stores it
    config.mm_vision_tower = CLIP_DIR_NAME
    config.mm_hidden_size = CLIP_DIM
    config.mm_vision_select_layer = -2
    config.mm_vision_select_feature = "patch"
    config.mm_projector_type = "mlp2x_gelu"
    config.mm_use_im_start_end = True
    config.max_sample_point = 512
    config.out_dim = PROMPT_DIM
    config.train_mask_decoder = True
    return config


@torch.no_grad()
def redraw_weights(model: torch.nn.Module, seed: int) -> None:
    """Every tensor away from its trivial init: matrices ~N(0, 1/fan_in), norms ≈1, biases/rel-pos ≠ 0."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.dim() >= 2 and "embed" not in name and "pos_embed" not in name and "rel_pos" not in name:
            fan_in = p[0].numel()
            p.copy_(noise / fan_in ** 0.5)
        elif p.dim() == 1 and name.endswith("weight"):  # norm scales
            p.copy_(1.0 + 0.1 * noise)
        else:  # biases, embeddings, positional tables
            p.copy_(0.2 * noise)


def build_model(tokenizer, workdir: Path):
    import model.MedPLIB as medplib_module
    from model.MedPLIB import MedPLIBForCausalLM

    medplib_module.build_sam_vit_b = tiny_sam_vit_b  # the only size change; classes are MedPLIB's
    torch.manual_seed(SEED)
    config = medplib_config(vocab=len(WORDS))
    seg_idx = tokenizer("<SEG>", add_special_tokens=False).input_ids[0]
    model = MedPLIBForCausalLM(config, test_only=True, seg_token_idx=seg_idx, vision_pretrained=None,
                               ce_loss_weight=1.0, dice_loss_weight=0.5, bce_loss_weight=2.0, iou_loss_weight=0.0,
                               focal_loss_weight=0.0)
    model.resize_token_embeddings(len(tokenizer))  # as the merge script does after adding tokens
    redraw_weights(model, SEED)
    model.config.eos_token_id, model.config.bos_token_id = tokenizer.eos_token_id, tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.float().eval(), seg_idx


def prompt_text() -> str:
    from model.medplib import conversation as conversation_lib
    from utils.utils import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN

    conv = conversation_lib.conv_templates["llava_v1"].copy()
    conv.messages = []
    question = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n" + QUESTION
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], "")
    return conv.get_prompt()


def reference_ids(text: str, tokenizer) -> list[int]:
    """tokenizer_image_token + the region placeholder as model_worker.py inserts it."""
    from model.medplib.mm_utils import tokenizer_image_token
    from utils.utils import IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX

    ids = tokenizer_image_token(text, tokenizer, IMAGE_TOKEN_INDEX, return_tensors=None)
    first = tokenizer("<region>", add_special_tokens=False).input_ids[0]
    second = tokenizer("</region>", add_special_tokens=False).input_ids[0]
    i = 0
    while i < len(ids) - 1:
        if ids[i] == first and ids[i + 1] == second:
            ids.insert(i + 1, REGION_TOKEN_INDEX)
            i += 1
        i += 1
    return ids


def fixed_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED + 1)
    grid = CLIP_IMAGE // CLIP_PATCH
    region = torch.zeros(2 * grid, 2 * grid)  # finer than the feature grid: bilinear sampling is exercised
    region[2:5, 3:7] = 1.0
    return {"sam_pixels": torch.randn(1, 3, SAM_IMAGE, SAM_IMAGE, generator=gen),
            "clip_pixels": torch.randn(1, 3, CLIP_IMAGE, CLIP_IMAGE, generator=gen),
            "region_mask": region}


def choices_since(model, start: list[int]) -> torch.Tensor:
    """Per layer, the top-1 expert of every token routed since ``start`` (the shim's record)."""
    rows = []
    for layer, s in zip(model.model.layers, start):
        rows.append(torch.cat(layer.mlp.deepspeed_moe.last_choices[s:]))
    return torch.stack(rows)


def choice_marks(model) -> list[int]:
    return [len(layer.mlp.deepspeed_moe.last_choices) for layer in model.model.layers]


@torch.no_grad()
def run_reference(model, tokenizer, seg_idx: int, inputs: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    from model.medplib.model.language_model.medplib_moe_llama import MedPLIBMoELlamaForCausalLM

    prompt = prompt_text()
    prompt_ids = reference_ids(prompt, tokenizer)
    answer_ids = tokenizer(ANSWER, add_special_tokens=False).input_ids
    full = torch.tensor([prompt_ids + answer_ids])
    region = [[inputs["region_mask"]]]
    valid_region = [[True]]
    # 1. teacher-forced logits + routing (the causal-LM forward MedPLIB's model_forward calls)
    marks = choice_marks(model)
    out = MedPLIBMoELlamaForCausalLM.forward(model, input_ids=full, images=inputs["clip_pixels"],
                                             region_masks=region, valid_region_masks_bool=valid_region,
                                             output_hidden_states=True, return_dict=True, use_cache=False)
    router = choices_since(model, marks)
    # 2. <SEG> masks: model_forward(inference=True), low-res logits captured at the decoder
    # (inference=True unsqueezes the hidden states for LISA's batch layout and then fails to index them,
    # so the training path runs, with dummy ground truth; the masks are taken where they are made)
    low_res: list[torch.Tensor] = []
    full_res: list[torch.Tensor] = []
    hook = model.model.visual_model.mask_decoder.register_forward_hook(lambda m, a, o: low_res.append(o[0].clone()))
    postprocess = model.postprocess_masks
    model.postprocess_masks = lambda *a, **k: full_res.append(postprocess(*a, **k)) or full_res[-1]
    n_seg = int((full == seg_idx).sum())
    labels = torch.full_like(full, -100)  # its model_forward always computes the text loss
    labels[0, len(prompt_ids):] = full[0, len(prompt_ids):]
    model.model_forward(images=inputs["sam_pixels"], images_clip=inputs["clip_pixels"], input_ids=full,
                        region_masks=region, labels=labels, attention_mask=torch.ones_like(full), offset=None,
                        masks_list=[torch.zeros(ORIGINAL_HW)] * n_seg, label_list=[torch.zeros(ORIGINAL_HW)] * n_seg,
                        resize_list=[(SAM_IMAGE, SAM_IMAGE)] * n_seg, inference=False,
                        valid_mask_bool=[[True] * n_seg], valid_region_masks_bool=valid_region)
    hook.remove()
    del model.postprocess_masks
    # 3. greedy continuation of the prompt (evaluate()'s generate call)
    marks = choice_marks(model)
    prompt_t = torch.tensor([prompt_ids])
    gen = model.generate(images=inputs["clip_pixels"], input_ids=prompt_t, region_masks=region,
                         valid_region_masks_bool=valid_region, max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                         num_beams=1, use_cache=True, attention_mask=torch.ones_like(prompt_t),
                         return_dict_in_generate=True, output_hidden_states=True)
    greedy_router = choices_since(model, marks)
    tensors = {**inputs, "logits": out.logits[0].float().contiguous(), "router_choices": router.contiguous(),
               "seg_low_res_logits": torch.cat(low_res)[:, 0].contiguous(),
               "seg_masks_logits": torch.cat(full_res)[:, 0].contiguous(),
               "greedy_router_choices": greedy_router.contiguous(),
               "last_hidden": out.hidden_states[-1][0].contiguous()}
    meta = {"prompt": prompt, "answer": ANSWER, "prompt_ids": prompt_ids, "answer_ids": answer_ids,
            "seg_token_id": seg_idx, "image_token_index": -200, "region_token_index": -300,
            "n_image_tokens": (CLIP_IMAGE // CLIP_PATCH) ** 2,
            "greedy_new_ids": gen.sequences[0, len(prompt_ids):].tolist(),
            "original_hw": list(ORIGINAL_HW), "mask_threshold": 0.0,
            "seg_hidden": "the last-layer state one position BEFORE each <SEG> (MedPLIB's build_seg_token_mask)"}
    return tensors, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference-repo", type=Path, default=Path("/work/.mirror/ShawnHuang497+MedPLIB/repo"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medplib_parity_work"))
    args = parser.parse_args()
    torch.Tensor.cuda = lambda self, *a, **k: self  # MedPLIB calls .cuda() unconditionally; this host has no GPU
    out = args.out.resolve()
    ckpt = out / "checkpoint"
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    torch.manual_seed(SEED)
    save_tiny_clip(args.workdir / CLIP_DIR_NAME)
    os.chdir(args.workdir)  # config.mm_vision_tower is the relative CLIP folder name, as in MedPLIB's runs
    tokenizer = build_tokenizer()
    model, seg_idx = build_model(tokenizer, args.workdir)
    tensors, meta = run_reference(model, tokenizer, seg_idx, fixed_inputs())
    shutil.rmtree(ckpt, ignore_errors=True)
    model.save_pretrained(ckpt, state_dict=dict(model.state_dict()), max_shard_size="1MB")
    tokenizer.save_pretrained(ckpt)
    (ckpt / CLIP_DIR_NAME).mkdir()
    shutil.copy(args.workdir / CLIP_DIR_NAME / "config.json", ckpt / CLIP_DIR_NAME / "config.json")
    from safetensors.torch import save_file
    import transformers

    save_file(tensors, out / "reference_outputs.safetensors")
    meta.update(medplib_commit=reference_commit(args.reference_repo), transformers=transformers.__version__,
                torch=torch.__version__, seed=SEED, deepspeed="shim of v0.13.1 moe (deepspeed_moe_shim.py)",
                python=sys.version.split()[0])
    (out / "reference_outputs.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "prompt"}, indent=None)[:2000])


if __name__ == "__main__":
    main()
