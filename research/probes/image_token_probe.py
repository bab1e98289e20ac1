"""Do a glue's image tokens tell one slice from another, and could they tell the modality?

``python research/probes/image_token_probe.py [--glue FILE] [--data build/glue-data] [--per-case 3]``

1. For up to ``--per-case`` training slices of each case, the projected image tokens (what the LLM reads in
   place of ``<image>``): their median norm, the norm of their mean over every slice (the part common to all
   images) and how far each case's mean is from it. A glue whose tokens are mostly the common part gives the
   LLM little to read (docs/training.md, "Image tokens that hardly vary").
2. A linear probe of the modality (CT / MR) on the vision tower's pooled tokens (the projector's input; mean
   and std over the slice's tokens), fitted on train.json's slices and scored per held-out case: whether the
   input carries the modality at all, whatever the glue.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medplib_runtime.data.mecovqa import read_dataset  # noqa: E402
from medplib_runtime.modeling.medplib import build_medplib  # noqa: E402
from medplib_runtime.presets import get_preset  # noqa: E402
from medplib_runtime.predictors.segmenter import SamSegmenter  # noqa: E402
from medplib_runtime.training.data_source import samples_from_json  # noqa: E402
from region_probe import fit_probe  # noqa: E402


@torch.inference_mode()
def slices(model, segmenter, path: Path) -> list[tuple[torch.Tensor, torch.Tensor, str, str]]:
    """→ (vision tower tokens N×C, projected tokens N×D, modality, case) per distinct slice."""
    out, seen = [], set()
    for rec, sample in zip(read_dataset(path).records, samples_from_json(path)):
        case = str(rec.extra.get("case"))
        if rec.image in seen:
            continue
        seen.add(rec.image)
        pixel = segmenter.embed(sample.image).image_embedding
        out.append((model.vision_tower(pixel)[0], model.image_tokens(pixel_embedding=pixel)[0], rec.modality, case))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue", help="adapter.safetensors (default: the shipped glue)")
    ap.add_argument("--data", default="build/glue-data")
    ap.add_argument("--per-case", type=int, default=3)
    args = ap.parse_args()
    model = build_medplib(get_preset("medplib-lite"), pretrained=True, glue=args.glue)  # None: the shipped glue
    segmenter = SamSegmenter(model.sam)
    every = slices(model, segmenter, Path(args.data) / "train.json")
    train = []
    for case in sorted({t[3] for t in every}):
        train += [t for t in every if t[3] == case][: args.per_case]
    tokens = torch.stack([t[1] for t in train])  # slices × N × D
    common = tokens.mean((0, 1))
    print(f"image tokens: median norm {float(tokens.norm(dim=-1).median()):.3f}, common part {float(common.norm()):.3f}; "
          f"a case's mean minus the common part:")
    for case in sorted({t[3] for t in train}):
        mean = torch.stack([t[1] for t in train if t[3] == case]).mean((0, 1))
        print(f"  {case}: {float((mean - common).norm()):.3f}")

    def pooled(rows):
        return torch.stack([torch.cat([t[0].mean(0), t[0].std(0)]) for t in rows])

    held = slices(model, segmenter, Path(args.data) / "test.json")
    x, xt = pooled(every), pooled(held)
    y = torch.tensor([int(t[2] == "MR") for t in every])
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    w = fit_probe((x - mean) / std, y, 2, 1e-2)
    said = (torch.cat([(xt - mean) / std, torch.ones(len(xt), 1)], 1) @ w).argmax(1).tolist()
    print("modality probe on the projector's input (L2 0.01), held-out slices right:")
    for case in sorted({t[3] for t in held}):
        at = [i for i, t in enumerate(held) if t[3] == case]
        print(f"  {case}: {sum(('MR' if said[i] else 'CT') == held[i][2] for i in at)}/{len(at)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
