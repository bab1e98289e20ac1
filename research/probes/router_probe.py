"""Can a per-layer linear router tell grounding questions from VQA questions?

``python research/probes/router_probe.py [--glue build/glue-runs/stage3/adapter.safetensors] [--n 40] [--n-val 25]``

Reads N grounding and N other questions of build/glue-data/train.json (and N_VAL of each of
val.json) with the vision-language expert forced, keeps every layer's MoE input at the current
question's tokens, fits one linear router per layer (576 → 2, no bias, as the model's) by
full-batch Adam for 100 steps at a few learning rates, and prints the decision accuracy of the mean
p(grounding) over tokens and layers on both splits (threshold 0.5) — the rule question-level
routing uses (medplib_runtime/modeling/question_routing.py).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medplib_runtime.imaging.transforms import mask_to_model  # noqa: E402
from medplib_runtime.modeling.medplib import build_medplib  # noqa: E402
from medplib_runtime.glue.routing import VL_EXPERT  # noqa: E402
from medplib_runtime.modeling.moe import force_expert, moe_layers  # noqa: E402
from medplib_runtime.modeling.question_routing import question_positions  # noqa: E402
from medplib_runtime.presets import get_preset  # noqa: E402
from medplib_runtime.predictors.segmenter import SamSegmenter  # noqa: E402
from medplib_runtime.training.data_source import samples_from_json  # noqa: E402
from medplib_runtime.training.examples import encode  # noqa: E402


def collect(model, segmenter, path: str, n_per_kind: int, seed: int) -> list[tuple[torch.Tensor, int]]:
    """→ [(L×T×D MoE inputs at the question's tokens, 1 for a grounding question)]."""
    exs = [ex for s in samples_from_json(path)
           for ex in encode(s, model.tokenizer, system=model.cfg.system_prompt, n_image_tokens=model.n_image_tokens,
                            seg_id=model.token_ids["<SEG>"], max_tokens=512)]
    ground, other = [e for e in exs if e.masks], [e for e in exs if not e.masks]
    rng = random.Random(seed)
    rng.shuffle(ground)
    rng.shuffle(other)
    inputs: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: inputs.append(a[0].detach())) for m in moe_layers(model.llm)]
    out = []
    try:
        for ex in ground[:n_per_kind] + other[:n_per_kind]:
            inputs.clear()
            emb = segmenter.embed(ex.sample.image)
            answer0 = int((ex.labels[0] != -100).nonzero()[0, 0])
            ids = ex.input_ids[:, :answer0]
            with torch.inference_mode():
                pix = emb.image_embedding
                region = model.region_token(pix, mask_to_model(ex.sample.region, emb.info, 256)[0, 0]) \
                    if ex.region else None
                image_tokens = model.image_tokens(pixel_embedding=pix)
                model.llm.model(inputs_embeds=model.embed_inputs(ids, image_tokens=image_tokens, region_tokens=region))
            at = question_positions(ids[0], turn_start=ex.turn_start, im_end_id=model.token_ids["<im_end>"],
                                    end=answer0)
            states = torch.stack([h.reshape(-1, h.shape[-1]) for h in inputs])  # L×T×D
            out.append((states[:, at].clone(), 1 if ex.masks else 0))
    finally:
        for h in hooks:
            h.remove()
    return out


def fit_and_score(train, held_out, lr: float, steps: int = 100) -> tuple[float, float, float]:
    layers, dim = train[0][0].shape[0], train[0][0].shape[-1]
    w = torch.zeros(layers, dim, 2, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        loss = sum(F.cross_entropy(torch.einsum("ltd,lde->lte", x, w).reshape(-1, 2),
                                   torch.full((x.shape[0] * x.shape[1],), 1 - y)) for x, y in train) / len(train)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def accuracy(data) -> float:
        with torch.no_grad():
            hits = [(torch.softmax(torch.einsum("ltd,lde->lte", x, w), -1)[..., 0].mean() > 0.5) == bool(y)
                    for x, y in data]
        return sum(map(bool, hits)) / len(data)

    return float(loss.detach()), accuracy(train), accuracy(held_out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue", default="build/glue-runs/stage3/adapter.safetensors")
    ap.add_argument("--data", default="build/glue-data")
    ap.add_argument("--n", type=int, default=40, help="questions of each kind from train.json")
    ap.add_argument("--n-val", type=int, default=25, help="questions of each kind from val.json")
    args = ap.parse_args()
    model = build_medplib(get_preset("medplib-lite"), pretrained=True, glue=args.glue)
    force_expert(model.llm, VL_EXPERT)
    segmenter = SamSegmenter(model.sam)
    train = collect(model, segmenter, f"{args.data}/train.json", args.n, 0)
    held_out = collect(model, segmenter, f"{args.data}/val.json", args.n_val, 1)
    print(f"{len(train)} training and {len(held_out)} validation questions (half of each kind)")
    print("| router lr | CE after 100 steps | train accuracy | validation accuracy |\n|---|---|---|---|")
    for lr in (1e-4, 1e-3, 2e-3):
        loss, acc_train, acc_val = fit_and_score(train, held_out, lr)
        print(f"| {lr:g} | {loss:.3f} | {acc_train:.3f} | {acc_val:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
